"""`python -m device_bench layout`: where the XNNPACK delegate moves whole maps between layouts.

    python -m device_bench layout --s 15 --centre short --size 256x256
    python -m device_bench layout --s 0 --top 30 --out runs/layout_s0.json

XNNPACK runs convolutions, pooling and resizing channels last (NHWC); ExecuTorch's graph is
NCHW. When a delegate is built, XNNPACK's own preprocessing tags every tensor with the layout
its producer leaves it in and inserts a conversion, a transpose of the whole map at run time,
wherever a consumer needs the other one: a reshape (`view_copy`), `linear`, squeeze or
unsqueeze after a convolution, operands of one op in different layouts, and every delegate
output, which leaves in NCHW for the portable kernel or the next delegate call that reads it.
`profile-pte` shows what those transposes cost (Transpose (ND, X32) in its delegate table) but
not where they are, because a .pte keeps no module names. This command builds the bucket
program exactly as `export/to_executorch.py` does (export, graph rewrites, the XNNPACK
partitioner), runs XNNPACK's preprocessing passes on each partition, and lists every inserted
conversion with the op and model module producing the map and the ops and modules reading the
converted map, grouped and ranked by elements moved; the graph's own permutes are listed by
module beside them. It times nothing, so it needs no quiet machine; it uses XNNPACK's
preprocessing pass manager, a private API of the pinned executorch.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from dealthdr.bench.breakdown import add_model_flags
from dealthdr.cliargs import parse_size
from dealthdr.fileio import atomic_write_bytes
from dealthdr.sensitivity import parse_s_texts
from dealthdr.sysinfo import machine_record

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("layout", help="XNNPACK's inserted NCHW/NHWC conversions, by module",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p)
    p.add_argument("--size", type=parse_size, default=(256, 256),
                   help="input size HxW of the program (default 256x256)")
    p.add_argument("--s", type=parse_s_texts, default=["15"], dest="s_values",
                   help="the one s-bucket to build (default 15)")
    p.add_argument("--centre", choices=("short", "long"), default="short",
                   help="which centre's method (default short)")
    p.add_argument("--top", type=int, default=20,
                   help="groups of conversions logged (default 20; the JSON has all)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON output (default runs/layout_s<S>_<centre>_<H>x<W>.json, outside "
                        "the source tree)")
    p.set_defaults(run=run, config=LayoutConfig)


@dataclass(frozen=True)
class LayoutConfig:
    """`device_bench layout`'s settings, one field per flag (`--help` explains each)."""
    checkpoint: str
    variant: str | None
    size: tuple[int, int]
    s_values: list[str]
    centre: str
    buckets: Path | None
    top: int
    out: Path | None


def _module(node) -> str:
    """The innermost model module a node was traced in ('' for graph inputs and outputs)."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _op(node) -> str:
    """'convolution', 'add', ... for an ATen or edge op; 'placeholder' etc. otherwise."""
    if node.op != "call_function":
        return node.op
    name = node.target.name() if hasattr(node.target, "name") else str(node.target)
    return name.split("::")[-1].split(".")[0]


def _elements(node) -> int:
    val = node.meta.get("val")
    return math.prod(val.shape) if hasattr(val, "shape") else 0


def conversions(program) -> dict:
    """Inserted layout conversions and explicit permutes of an ATen program lowered to XNNPACK.
    Returns {"conversions": [...], "permutes": [...], "partitions": n}; each entry a group with
    its count and elements, largest first."""
    import torch
    from executorch.backends.xnnpack._passes import XNNPACKPassManager
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    edge = to_edge_transform_and_lower({"forward": program}, partitioner=[XnnpackPartitioner()],
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False))
    groups, partitions = defaultdict(lambda: [0, 0]), 0
    for name, lowered in edge.exported_program("forward").graph_module.named_children():
        if not name.startswith("lowered_module"):
            continue
        partitions += 1
        # the partition as XNNPACK's preprocess sees it, after the pass that tags layouts
        graph = XNNPACKPassManager(lowered.original_module).transform().graph
        for node in graph.nodes:
            fmt = node.kwargs.get("memory_format") if node.op == "call_function" else None
            if fmt is None or "_to_copy" not in str(node.target):
                continue
            # one conversion serves every reader of the converted map
            src = node.args[0]
            readers = tuple(sorted({(_op(u), _module(u)) for u in node.users}))
            key = ("to NHWC" if fmt == torch.channels_last else "to NCHW", _op(src),
                   _module(src), readers)
            groups[key][0] += 1
            groups[key][1] += _elements(node)
    permutes = defaultdict(lambda: [0, 0])
    for node in program.graph.nodes:
        if node.op == "call_function" and "permute" in str(node.target):
            permutes[_module(node)][0] += 1
            permutes[_module(node)][1] += _elements(node)
    convs = [{"direction": k[0], "producer_op": k[1], "producer_module": k[2],
              "readers": [{"op": op, "module": m} for op, m in k[3]], "count": c, "elements": e}
             for k, (c, e) in groups.items()]
    perms = [{"module": m, "count": c, "elements": e} for m, (c, e) in permutes.items()]
    return {"partitions": partitions,
            "conversions": sorted(convs, key=lambda r: -r["elements"]),
            "permutes": sorted(perms, key=lambda r: -r["elements"])}


def run(cfg: LayoutConfig) -> int:
    from dealthdr.bench.breakdown import model_and_buckets
    from dealthdr.calib.buckets import read_buckets, run_calibration
    from dealthdr.checkpoint import checkpoint_label
    from dealthdr.export.buckets import export_program
    from dealthdr.export.rewrites import apply_rewrites

    if len(cfg.s_values) != 1:
        raise ValueError(f"--s takes one bucket, got {','.join(cfg.s_values)}")
    if cfg.top < 1:
        raise ValueError("--top must be >= 1")
    s = cfg.s_values[0]
    calibration = (read_buckets(cfg.buckets) if cfg.buckets is not None else
                   run_calibration(cfg.checkpoint, cfg.variant, [float(s)], cfg.size, clips=2,
                                   quantile=0.95))
    model, buckets = model_and_buckets(cfg.checkpoint, cfg.variant, calibration, [s],
                                       cfg.size, (cfg.centre,))
    bucket = buckets[0]
    found = conversions(apply_rewrites(export_program(model, bucket, cfg.size)))
    total = sum(r["elements"] for r in found["conversions"])
    h, w = cfg.size
    rec = {"format": "dealthdr-layout/1", "checkpoint": checkpoint_label(cfg.checkpoint),
           "variant": model.cfg.name, "s": bucket.s_key, "centre": cfg.centre,
           "bucket_k": list(bucket.budget), "size": f"{h}x{w}",
           "inserted_conversions": sum(r["count"] for r in found["conversions"]),
           "inserted_elements": total,
           "explicit_permutes": sum(r["count"] for r in found["permutes"]),
           "explicit_permute_elements": sum(r["elements"] for r in found["permutes"]),
           **found, "machine": machine_record()}
    out = cfg.out or Path("runs") / f"layout_s{bucket.s_key}_{cfg.centre}_{h}x{w}.json"
    atomic_write_bytes(out, (json.dumps(rec, indent=2) + "\n").encode())
    log.info("%d partitions; %d inserted conversions moving %.1f M elements; %d permutes in the "
             "graph moving %.1f M", rec["partitions"], rec["inserted_conversions"], total / 1e6,
             rec["explicit_permutes"], rec["explicit_permute_elements"] / 1e6)
    for r in found["conversions"][:cfg.top]:
        readers = ", ".join(f"{x['op']} ({x['module'] or 'output'})" for x in r["readers"])
        log.info("  %7.2f M %3d x %-7s %s (%s) -> %s", r["elements"] / 1e6, r["count"],
                 r["direction"], r["producer_op"], r["producer_module"] or "input", readers)
    log.info("wrote %s", out)
    return 0
