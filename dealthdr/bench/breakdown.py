"""`python -m device_bench breakdown`: where eager time goes, per component (the paper's Table G).

    python -m device_bench breakdown --size 256x256 --s 0,15,100 --threads 2

Each top-level component of the network is timed with forward hooks around its call (torch
eager on CPU runs synchronously, so wall time between the pre- and post-hook is the
component's), summed over one forward and taken as the median over `--repeat` forwards after
`--warmup`; FGMA's attention (`FGMA.attend`) is timed inside FGMA's own time, so FGMA splits
into warp + mask + selection and attention, as Table G splits it. Time no component claims
(input preparation, padding, the exposure merge's glue) is "other". FLOPs per component come
from the profiler (`dealthdr.profile.count_flops`). The bucket graphs of the export are used:
K from the calibration quantile of the shipped checkpoint's buckets.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from dealthdr.bench.tables import ATTENTION, FGMA_REST, table_g
from dealthdr.calib.buckets import read_buckets, run_calibration
from dealthdr.checkpoint import checkpoint_label, load_checkpoint
from dealthdr.cliargs import allocator_note, parse_sizes, reuse_freed_memory
from dealthdr.export.buckets import BucketGraph, example_inputs, make_buckets
from dealthdr.fileio import atomic_write_bytes
from dealthdr.model import VARIANTS
from dealthdr.profile import COMPONENTS, count_flops
from dealthdr.sensitivity import parse_s_texts
from dealthdr.sysinfo import machine_record

log = logging.getLogger(__name__)

# Display rows -> (module attribute names of DeAltHDR): the profiler's components, with the
# merge shown on its own.
ROWS = {**COMPONENTS, "merge": ("merge",)}


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """--checkpoint, --variant and --buckets: which network and bucket calibration a command
    that builds bucket graphs itself (`breakdown`, `layout`) uses."""
    p.add_argument("--checkpoint", default="default",
                   help="weights ('default': the shipped checkpoint of --variant)")
    p.add_argument("--variant", choices=sorted(VARIANTS), default=None,
                   help="with --checkpoint default: whose shipped weights (default tiny); with "
                        "a path: the variant it must be")
    p.add_argument("--buckets", type=Path, default=None,
                   help="bucket calibration JSON (calib/buckets.py); default: calibrate now "
                        "on synthetic windows of the training panoramas, as the exporters do")


def add_parser(sub) -> None:
    p = sub.add_parser("breakdown", help="per-component eager latency (Table G)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p)
    p.add_argument("--size", type=parse_sizes, default=[(256, 256)],
                   help="input size HxW (default 256x256)")
    p.add_argument("--s", type=parse_s_texts, default=["0", "15", "100"], dest="s_values",
                   help="s-buckets, comma-separated (default 0,15,100)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed forwards (default 1)")
    p.add_argument("--repeat", type=int, default=5, help="timed forwards (default 5)")
    p.add_argument("--out", type=Path, default=Path("runs/breakdown.json"),
                   help="JSON output (default runs/breakdown.json)")
    p.set_defaults(run=run, config=BreakdownConfig)


class _Timer:
    """Wall time per row of one forward, from hooks on the rows' modules."""

    def __init__(self, model) -> None:
        from torch import nn

        self.ms = defaultdict(float)
        self._start, self._handles, self._patched = {}, [], []
        for row, names in ROWS.items():
            for name in names:
                mod = getattr(model, name, None)
                if mod is None:
                    continue
                for m in (list(mod) if isinstance(mod, nn.ModuleList) else [mod]):
                    self._handles.append(m.register_forward_pre_hook(self._pre(id(m))))
                    self._handles.append(m.register_forward_hook(self._post(id(m), row)))
        for f in model.fgma:  # an instance attribute shadows the method for this run only
            self._patched.append(f)
            f.attend = self._wrap(f.attend)

    def _pre(self, key):
        def hook(*_):
            self._start[key] = time.perf_counter()
        return hook

    def _post(self, key, row):
        def hook(*_):
            self.ms[row] += (time.perf_counter() - self._start.pop(key)) * 1e3
        return hook

    def _wrap(self, fn):
        def timed(*a, **kw):
            t = time.perf_counter()
            out = fn(*a, **kw)
            self.ms[ATTENTION] += (time.perf_counter() - t) * 1e3
            return out
        return timed

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        for f in self._patched:
            del f.attend


def measure(model, bucket, size, warmup: int = 1, repeat: int = 5) -> dict:
    """{s, centre, bucket_k, size, total_ms, rows: {row: {ms, share, gflops}}} for one bucket."""
    import torch

    frames, exposures = example_inputs(bucket, size, model.cfg.num_frames)
    budget = None if bucket.s == 0 else bucket.budget
    with torch.no_grad():
        total_flops, comps, _ = count_flops(model, frames, exposures, bucket.s, budget)
    graph = BucketGraph(model, bucket).eval()
    runs, totals = [], []
    with torch.inference_mode():
        for i in range(warmup + repeat):
            timer = _Timer(model)
            t = time.perf_counter()
            graph(frames, exposures)
            total = (time.perf_counter() - t) * 1e3
            timer.close()
            if i >= warmup:
                runs.append(dict(timer.ms))
                totals.append(total)
    total_ms = statistics.median(totals)
    med = {row: statistics.median(r.get(row, 0.0) for r in runs)
           for row in [*ROWS, ATTENTION]}
    rows = {row: med[row] for row in ROWS}      # FGMA here includes its attention
    rows["other (inputs, padding, glue)"] = max(0.0, total_ms - sum(rows.values()))
    rows[ATTENTION] = med[ATTENTION]
    rows[FGMA_REST] = med["FGMA"] - med[ATTENTION]
    flops = {"encoders": "encoders", "flow (SpyNet)": "flow (SpyNet)", "FGMA": "FGMA",
             "router": "router", "middle": "middle", "decoder": "decoder"}
    out = {row: {"ms": ms, "share": ms / total_ms,
                 "gflops": comps[flops[row]] / 1e9 if row in flops and flops[row] in comps
                 else None} for row, ms in rows.items()}
    return {"s": bucket.s_key, "centre": bucket.centre, "bucket_k": list(bucket.budget),
            "size": f"{size[0]}x{size[1]}", "total_ms": total_ms,
            "total_gflops": total_flops / 1e9, "threads": torch.get_num_threads(), "rows": out}


def model_and_buckets(checkpoint: str, variant: str | None, calibration: dict, s_values,
                      size, centres):
    """The checkpoint's network in eval mode and its bucket graphs' buckets for these s and
    centres (what `breakdown` times and `layout` lowers)."""
    model, _ = load_checkpoint(checkpoint, variant)
    return model.eval(), make_buckets(calibration, [float(s) for s in s_values], size, centres,
                                      model.cfg.attn_tile)


def measure_for_jobs(jobs: list, threads: int) -> dict:
    """Breakdown of the eager jobs' buckets (short centre) at the first size, for `run --plot`;
    one variant's (the first job's): Table G is a table of one network."""
    import torch

    eager = [j for j in jobs if j.runtime == "torch" and j.centre == "short"]
    if not eager:
        return {"buckets": [], "note": "no eager jobs: no breakdown"}
    reuse_freed_memory()  # eager timed as `dealthdr reconstruct` runs it, as in `run`'s workers
    eager = [j for j in eager if j.variant == eager[0].variant]
    size = eager[0].size
    cal = {"buckets": [{"s": j.s, "ratio": j.ratio_budget} for j in eager if j.size == size]}
    s_values = list(dict.fromkeys(j.s for j in eager if j.size == size))
    torch.set_num_threads(threads)
    model, buckets = model_and_buckets(eager[0].checkpoint, eager[0].variant, cal, s_values,
                                       size, ("short",))
    return _doc([measure(model, b, size) for b in buckets], eager[0].checkpoint)


def _doc(results: list[dict], checkpoint: str) -> dict:
    return {"format": "dealthdr-breakdown/1", "checkpoint": checkpoint_label(checkpoint),
            "buckets": results, "machine": machine_record(), "allocator": allocator_note()}


def write(path: Path, doc: dict) -> None:
    atomic_write_bytes(Path(path), (json.dumps(doc, indent=2) + "\n").encode())


@dataclass(frozen=True)
class BreakdownConfig:
    """`device_bench breakdown`'s settings, one field per flag (`--help` explains each)."""
    checkpoint: str
    variant: str | None
    size: list[tuple[int, int]]
    s_values: list[str]
    buckets: Path | None
    threads: int
    warmup: int
    repeat: int
    out: Path


def run(cfg: BreakdownConfig) -> int:
    import torch

    if cfg.repeat < 1 or cfg.warmup < 0 or cfg.threads < 1:
        raise ValueError("--repeat and --threads must be >= 1, --warmup >= 0")
    reuse_freed_memory()  # eager timed as `dealthdr reconstruct` runs it, as in `run`'s workers
    if cfg.buckets is not None:
        calibration = read_buckets(cfg.buckets)
    else:
        calibration = run_calibration(cfg.checkpoint, cfg.variant,
                                      [float(s) for s in cfg.s_values], cfg.size[0], clips=2,
                                      quantile=0.95)
    torch.set_num_threads(cfg.threads)
    size = cfg.size[0]
    model, buckets = model_and_buckets(cfg.checkpoint, cfg.variant, calibration,
                                       cfg.s_values, size, ("short",))
    results = [measure(model, b, size, cfg.warmup, cfg.repeat) for b in buckets]
    write(cfg.out, _doc(results, cfg.checkpoint))
    print(table_g(_doc(results, cfg.checkpoint)))
    return 0
