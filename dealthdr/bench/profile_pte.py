"""`python -m device_bench profile-pte`: where an ExecuTorch program's time goes, op by op.

    python -m device_bench profile-pte exports/executorch/dealthdr_tiny_s15_256x256.pte \\
        --method forward_short --threads 1 --repeat 3

Loads the .pte with ETDump event tracing, runs the method `--warmup` + `--repeat` times on
synthetic inputs of its shapes (a window gets the method's centre exposure pattern; our methods'
cost does not depend on content: a bucket's K is fixed), and reads the trace with
`executorch.devtools.Inspector`. Per timed run it splits Method::execute into XNNPACK delegate
calls, portable (non-delegated) kernels and the runtime's own glue, and ranks the portable
kernels and the delegate's internal operators by time (medians over the timed runs; each part is
its own median, so they add up to execute's only approximately). The portable ops are the ones
to move into the delegate: this is how FGMA's element-wise gathers and scatters were found
(export/README.md). Traced times run a little slower than `device_bench run`'s untraced ones;
compare shares, not absolute figures, across the two.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from dealthdr.bench.run import host_fields
from dealthdr.bench.worker import make_inputs
from dealthdr.fileio import atomic_write_bytes, sha256_file

log = logging.getLogger(__name__)
_SUFFIX = re.compile(r"\s+#\d+$")         # XNNPACK numbers its operator instances: "... #12"
# Events that span others: the whole run, one delegate call, one portable kernel with its glue.
_FLOAT32 = 6     # ExecuTorch's ScalarType::Float, what method metadata reports for float32
_TOTALS = {"Method::execute": "execute", "DELEGATE_CALL": "delegate", "OPERATOR_CALL": "operator"}


def add_parser(sub) -> None:
    p = sub.add_parser("profile-pte", help="per-op time of one ExecuTorch program (ETDump)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pte", type=Path, help="the .pte to profile (an export/ or quantize/ artifact)")
    p.add_argument("--method", default=None,
                   help="method to run: forward_short or forward_long of a bucket program, any "
                        "method of a streaming or tiled one (fuse_short, encode_long, flow, "
                        "tile_short, pair_flows, ...) (default: the first of the program's "
                        "methods)")
    p.add_argument("--threads", type=int, default=1,
                   help="ExecuTorch threadpool size (default 1, as device_bench run's default "
                        "acceptance runs)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs (default 3)")
    p.add_argument("--top", type=int, default=12, help="rows of each table logged (default 12)")
    p.add_argument("--etdump", type=Path, default=None,
                   help="also keep the raw trace here, for executorch.devtools.Inspector "
                        "(default: not kept)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON output (default runs/profile_<pte stem>_<method>.json, outside "
                        "the source tree)")
    p.set_defaults(run=run, config=ProfilePteConfig)


def check_pte_header(path: Path) -> None:
    """ValueError unless `path` starts like an ExecuTorch program and holds every byte its
    header promises. The runtime's loader aborts the process (C++ terminate, no exception) on
    some corrupt files, so they are refused before it sees them."""
    import struct

    with path.open("rb") as f:
        head = f.read(40)
    if len(head) < 8 or head[4:6] != b"ET":
        raise ValueError(f"{path}: not a loadable ExecuTorch program (no 'ET' identifier)")
    if len(head) >= 40 and head[8:12] == b"eh00":  # extended header: program and segments
        program, base, data = struct.unpack("<QQQ", head[16:40])
        need = max(program, base + data)
        if need > path.stat().st_size:
            raise ValueError(f"{path}: not a loadable ExecuTorch program (truncated: its "
                             f"header describes {need} bytes, the file has "
                             f"{path.stat().st_size})")


def _load(path: Path, method: str | None):
    from executorch.extension.pybindings.portable_lib import _load_for_executorch

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such .pte")
    check_pte_header(path)
    try:
        module = _load_for_executorch(str(path), enable_etdump=True)
        names = list(module.method_names())
    except RuntimeError as err:
        raise ValueError(f"{path}: not a loadable ExecuTorch program ({err})") from None
    method = method or sorted(names)[0]
    if method not in names:
        raise ValueError(f"{path}: no method {method!r}; it has {sorted(names)}")
    meta = module.method_meta(method)
    shapes = []
    for i in range(meta.num_inputs()):
        tensor = meta.input_tensor_meta(i)
        if tensor.dtype() != _FLOAT32:
            raise ValueError(f"{path}:{method}: input {i} has ScalarType {tensor.dtype()}; "
                             "profile-pte synthesises float32 inputs only")
        shapes.append(tuple(tensor.sizes()))
    return module, method, shapes


def method_inputs(method: str, shapes: list[tuple[int, ...]]) -> list:
    """Inputs for any method of our programs, from its input shapes: a window (1, T, 3, H, W)
    with exposures (1, T) gets the centre's pattern (from the method's `_short`/`_long`
    suffix; short otherwise); single values (a relative exposure, a flag) are 1; every other
    input is uniform in [0, 1). The cost of our methods does not depend on the content (a
    bucket's K is fixed), only on the shapes."""
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    out = [torch.from_numpy(rng.random(s, dtype=np.float32)) for s in shapes]
    for i, s in enumerate(shapes):
        if int(np.prod(s)) == 1:
            out[i] = torch.ones(s)
    if len(shapes) >= 2 and len(shapes[0]) == 5 and shapes[1] == shapes[0][:2]:
        centre = method.rsplit("_", 1)[-1]
        out[0], out[1] = (torch.from_numpy(a) for a in make_inputs(
            centre if centre in ("short", "long") else "short", shapes[0][-2:],
            frames=shapes[0][1]))
    return out


def aggregate(events, warmup: int) -> dict:
    """Medians over the timed runs (each event's raw times list one entry per run)."""
    def med(values):
        return round(statistics.median(values), 3) if values else 0.0

    sums = defaultdict(lambda: defaultdict(float))     # (kind, name) -> run -> ms
    calls = defaultdict(int)                           # (kind, name) -> instances per run
    for e in events:
        if e.is_delegated_op:
            key = ("delegated", _SUFFIX.sub("", e.name))
        elif e.name.startswith("native_call_"):
            key = ("portable", e.name.removeprefix("native_call_"))
        elif e.name in _TOTALS:
            key = ("total", _TOTALS[e.name])
        else:
            continue
        calls[key] += 1
        timed = list(e.perf_data.raw)[warmup:] if e.perf_data is not None else []
        for i, t in enumerate(timed):
            sums[key][i] += t
    n = len(sums[("total", "execute")])
    if not n:
        raise ValueError("the trace holds no timed Method::execute: raise --repeat")

    def per_run(key):
        return [sums[key].get(i, 0.0) for i in range(n)]

    def table(kind):
        rows = [{"op": name, "calls_per_run": calls[(k, name)], "ms": med(per_run((k, name)))}
                for k, name in list(sums) if k == kind]
        return sorted(rows, key=lambda r: -r["ms"])

    execute, delegate, operator = (per_run(("total", k)) for k in _TOTALS.values())
    portable = table("portable")
    return {"runs": n, "execute_ms": med(execute), "delegate_calls_ms": med(delegate),
            "portable_ops_ms": med(operator),
            "runtime_other_ms": med([e - d - o for e, d, o in zip(execute, delegate, operator)]),
            "delegate_calls_per_run": calls[("total", "delegate")],
            "portable_calls_per_run": sum(r["calls_per_run"] for r in portable),
            "portable_ops": portable, "delegated_ops": table("delegated")}


def profile(path: Path, method: str | None, threads: int, warmup: int, repeat: int,
            keep: Path | None = None) -> dict:
    import importlib.metadata

    import torch
    from executorch.devtools import Inspector
    from executorch.extension.pybindings.portable_lib import (_threadpool_get_thread_count,
                                                              _unsafe_reset_threadpool)


    if threads < 1 or warmup < 0 or repeat < 1:
        raise ValueError("--threads and --repeat must be >= 1, --warmup >= 0")
    _unsafe_reset_threadpool(threads)
    module, method, shapes = _load(path, method)
    inputs = tuple(method_inputs(method, shapes))
    started = time.perf_counter()
    for _ in range(warmup + repeat):
        module.run_method(method, inputs)
    log.info("%s:%s: %d runs in %.1f s", path.name, method, warmup + repeat,
             time.perf_counter() - started)
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.etdp"
        module.write_etdump_result_to_file(str(trace))
        blocks = Inspector(etdump_path=str(trace)).event_blocks
        if keep is not None:
            atomic_write_bytes(keep, trace.read_bytes())
    events = [e for b in blocks if b.name == "Execute" for e in b.events]
    return {"artifact": path.name, "sha256": sha256_file(path), "method": method,
            "size": f"{shapes[0][-2]}x{shapes[0][-1]}", "input_shapes": [list(x) for x in shapes],
            "threads": threads,
            "threads_effective": int(_threadpool_get_thread_count()), "warmup": warmup,
            "executorch": importlib.metadata.version("executorch"), "torch": torch.__version__,
            **aggregate(events, warmup)}


@dataclass(frozen=True)
class ProfilePteConfig:
    """`device_bench profile-pte`'s settings, one field per flag (`--help` explains each)."""
    pte: Path
    method: str | None
    threads: int
    warmup: int
    repeat: int
    top: int
    etdump: Path | None
    out: Path | None


def run(cfg: ProfilePteConfig) -> int:
    rec = {**host_fields("host"), **profile(cfg.pte, cfg.method, cfg.threads, cfg.warmup,
                                            cfg.repeat, cfg.etdump)}
    out = cfg.out or Path("runs") / f"profile_{cfg.pte.stem}_{rec['method']}.json"
    atomic_write_bytes(out, json.dumps(rec, indent=2).encode())
    log.info("execute %.1f ms = delegate calls %.1f (%d) + portable ops %.1f (%d) + runtime %.1f",
             rec["execute_ms"], rec["delegate_calls_ms"], rec["delegate_calls_per_run"],
             rec["portable_ops_ms"], rec["portable_calls_per_run"], rec["runtime_other_ms"])
    for kind in ("portable_ops", "delegated_ops"):
        for r in rec[kind][:cfg.top]:
            log.info("  %-9s %-40s %4d calls %9.2f ms", kind.split("_")[0], r["op"],
                     r["calls_per_run"], r["ms"])
    log.info("wrote %s", out)
    return 0
