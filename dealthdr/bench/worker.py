"""Time one artifact in this (fresh) process: load, warm up, timed inferences, peak memory.

    python -m dealthdr.bench.worker JOB.json RESULT.json

`device_bench run` starts one such process per (artifact, size, threads), so that every
measurement starts from the same state: no other runtime's thread pool, allocator caches or
loaded weights around, and a peak-memory figure that belongs to this artifact alone.

Peak memory: the RSS high-water mark of this process, minus its RSS just before the load. On
Linux the kernel's high-water mark (VmHWM) is reset after the imports and the inputs are made
(`/proc/self/clear_refs`, "5"), so import-time peaks do not count. Elsewhere (macOS) the
process's `ru_maxrss` is used, which includes the imports' own peak; the record says which.
tracemalloc would miss it all: the runtimes allocate in native code.

Torch eager runs with the allocator settings of `dealthdr reconstruct` and `evaluate`
(`dealthdr.cliargs.reuse_freed_memory`: on glibc, freed memory is kept for the next inference
instead of being unmapped and faulted in again), so it is timed as this project runs it (with
glibc's defaults, 608-611 ms per eager forward at 256x256, s = 0, one thread, against 515-552
ms: two alternating runs each). ExecuTorch and onnxruntime plan their own buffers and run with
the system allocator, as an app that embeds them would: with freed memory kept, the streaming
loop's per-call outputs fragmented the heap and its peak rose by 30 MB. The record's
`allocator` says which settings applied.
"""
from __future__ import annotations

import gc
import json
import os
import re
import resource
import sys
import time
from pathlib import Path

import numpy as np

from dealthdr.checkpoint import load_checkpoint
from dealthdr.cliargs import allocator_note, reuse_freed_memory
from dealthdr.export.buckets import Bucket, BucketGraph


def _status_mb(field: str) -> float | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) / 1024 if m else None


def start_memory_watch() -> dict:
    """Reset the high-water mark where the OS allows it; return the baseline."""
    # Garbage freed during the measurement would lower RSS below the baseline and hide the
    # artifact's own peak (seen in the full test run: 64 MB allocated, < 50 MB measured).
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        method = "VmHWM after reset (Linux /proc/self/clear_refs)"
    except OSError:
        method = "ru_maxrss (includes import-time peak)"
    rss = _status_mb("VmRSS")
    if rss is None:  # no /proc: macOS reports ru_maxrss in bytes
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    return {"baseline_rss_mb": rss, "method": method}


def peak_memory(watch: dict) -> dict:
    hwm = _status_mb("VmHWM")
    if hwm is None or not watch["method"].startswith("VmHWM"):
        scale = 2 ** 20 if sys.platform == "darwin" else 2 ** 10
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
    return {"peak_mem_mb": max(0.0, hwm - watch["baseline_rss_mb"]), "peak_rss_mb": hwm,
            "baseline_rss_mb": watch["baseline_rss_mb"], "peak_mem_method": watch["method"]}


def make_inputs(centre: str, size: tuple[int, int], seed: int = 0, *, frames: int):
    """A window of `frames` frames (1, T, 3, H, W) in [0, 1] and exposures (1, T) with the
    centre's pattern, as float32 numpy arrays. A bucket graph's cost does not depend on the
    content (K is fixed)."""
    rng = np.random.default_rng(seed)
    window = rng.random((1, frames, 3, *size), dtype=np.float32)
    # `dealthdr.model.inputs.window_pattern`, restated: importing it would load torch into
    # the onnxruntime worker, which measures without it (tests/test_export.py holds them equal)
    long_ = [((i - frames // 2) % 2 == 0) == (centre == "long") for i in range(frames)]
    exposures = np.array([[8.0 if p else 1.0 for p in long_]], dtype=np.float32)
    return window, exposures


def load_eager(job: dict):
    import torch

    torch.set_num_threads(job["threads"])

    def load():
        model, _ = load_checkpoint(job["checkpoint"], job["variant"])
        bucket = Bucket(float(job["s"]), job["centre"], tuple(job["ratio_budget"]),
                        tuple(job["bucket_k"]), job["tile"])
        graph = BucketGraph(model.eval(), bucket).eval()

        def run(frames, exposures):
            with torch.inference_mode():
                return graph(frames, exposures)
        return run
    return load, "torch", torch.__version__, torch.from_numpy


def load_executorch(job: dict):
    import importlib.metadata

    import torch
    from executorch.extension.pybindings.portable_lib import (_threadpool_get_thread_count,
                                                              _unsafe_reset_threadpool)
    from executorch.runtime import Runtime

    # One process per job, so resetting the global pool cannot race another program.
    _unsafe_reset_threadpool(job["threads"])
    job["threads_effective"] = int(_threadpool_get_thread_count())

    def load():
        program = Runtime.get().load_program(job["path"])
        if "stream" in job.get("extra", {}):
            methods = {name: program.load_method(name) for name in stream_methods(job["centre"])}
            meta = methods[f"fuse_{job['centre']}"].metadata
            shapes = [tuple(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())]
            return stream_step(methods, job["centre"], shapes[2:])
        method = program.load_method(job["method"])

        def run(frames, exposures):
            return method.execute([frames, exposures])[0]
        return run
    return load, "executorch", importlib.metadata.version("executorch"), torch.from_numpy


def stream_methods(centre: str) -> tuple[str, ...]:
    """The methods of a streaming program one centre's frame loop calls. A job loads only these,
    as a window job loads only its centre's method: the other centre's fuse would add its
    planned arena to the peak (a loop that alternates centres needs the other centre's method
    on both paths)."""
    return "encode_short", "encode_long", "flow", f"fuse_{centre}"


def stream_step(methods: dict, centre: str, state_shapes: list[tuple[int, ...]]):
    """One output frame of a streaming program's frame loop per call, on a fixed window.

    The loop holds the window's features the way the fuse takes them: the centre's, and the
    neighbours' stacked in time order, one buffer per level (39 MB at 256x256 for `tiny`, with
    no per-call copy of the neighbours into a fresh stack). The first call fills them: all
    frames encoded, the centre's four pairs through `flow`. Every later call is what the loop
    runs when a new frame arrives: its encode, the window's slide (each level's buffers shift
    one frame in place and the new frame's features land last), `flow` for the new frame with
    the two before it (the second pair serves the next window, and a loop computes it now), and
    the fuse. Costs do not depend on the content, so the frames stay the same.

    `state_shapes` are the shapes of the fuse's inputs after the window: the centre's features
    per level, the neighbours' per level, the two stacked flows. The first call allocates these
    buffers and runs the fuse once on them while they are zeros, as an app warms its methods
    up when it loads them: the runtime's one-time buffers of the fuse's first execution (at
    s = 15, 256x256: 70 MB above the later calls, measured) then come and go before any other
    method has run."""
    import torch

    state: dict = {}

    def call(name, *inputs):
        return methods[name].execute([t.contiguous() for t in inputs])

    def run(frames, exposures):
        rel = exposures / exposures.min(dim=1, keepdim=True).values
        t = frames.shape[1]
        c = t // 2
        kind = ["long" if r > 1.01 else "short" for r in rel[0].tolist()]

        def encode(j):
            return call(f"encode_{kind[j]}", frames[:, j], rel[:, j:j + 1])

        def flow(a, b):
            return call("flow", frames[:, a], rel[:, a:a + 1], frames[:, b], rel[:, b:b + 1])

        if not state:
            levels = (len(state_shapes) - 2) // 2
            buffers = [torch.zeros(shape) for shape in state_shapes]
            state.update(centre=buffers[:levels], near=buffers[levels:-2], flows=buffers[-2:])
            call(f"fuse_{centre}", frames, exposures, *buffers)      # the warm-up
            for buf, f in zip(state["centre"], encode(c)):
                buf.copy_(f)
            for i, j in enumerate(j for j in range(t) if j != c):
                for buf, f in zip(state["near"], encode(j)):
                    buf[i].copy_(f[0])
                for buf, f in zip(state["flows"], flow(c, j)):
                    buf[i].copy_(f[0])
        else:
            slide(state["centre"], state["near"], encode(t - 1))
            for d, f in enumerate(flow(c, t - 1)):
                state["flows"][d][t - 2].copy_(f[0])
            flow(t - 2, t - 1)
        return call(f"fuse_{centre}", frames, exposures, *state["centre"], *state["near"],
                    *state["flows"])[0]
    return run


def slide(centre: list, near: list, new: list) -> None:
    """The window moves one frame on, in place: per level, `centre` (1, ...) and `near`
    (T-1, ...) hold frames 0..T-1 of the old window but its centre; afterwards they hold frames
    1..T-1 and `new` (1, ...), split the same way around the new centre."""
    for centre_lv, near_lv, new_lv in zip(centre, near, new):
        c = near_lv.shape[0] // 2
        for i in range(c - 1):
            near_lv[i].copy_(near_lv[i + 1])
        near_lv[c - 1].copy_(centre_lv[0])
        centre_lv[0].copy_(near_lv[c])
        for i in range(c, near_lv.shape[0] - 1):
            near_lv[i].copy_(near_lv[i + 1])
        near_lv[-1].copy_(new_lv[0])


def load_onnxruntime(job: dict):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = job["threads"]
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL

    def load():
        session = ort.InferenceSession(job["path"], opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def run(frames, exposures):
            return session.run(None, dict(zip(names, (frames, exposures))))[0]
        return run
    return load, "onnxruntime", ort.__version__, lambda a: a


LOADERS = {"torch": load_eager, "executorch": load_executorch, "onnxruntime": load_onnxruntime}


def measure(job: dict) -> dict:
    """Load the job's artifact, check one output, then time `warmup` + `repeat` inferences."""
    size = tuple(job["size"])
    load, runtime, version, convert = LOADERS[job["runtime"]](job)  # imports: not timed
    frames, exposures = (convert(a) for a in make_inputs(job["centre"], size,
                                                          frames=job["frames"]))
    watch = start_memory_watch()
    start = time.perf_counter()
    run = load()
    load_ms = (time.perf_counter() - start) * 1e3
    out = np.asarray(run(frames, exposures))
    if out.shape != (1, 3, *size) or not np.isfinite(out).all():
        raise RuntimeError(f"{job.get('path') or 'eager'}: output {out.shape} "
                           f"(finite: {bool(np.isfinite(out).all())}), expected (1, 3, {size[0]}, "
                           f"{size[1]}) finite")
    for _ in range(max(0, job["warmup"] - 1)):  # the checked inference was the first warm-up
        run(frames, exposures)
    samples = []
    for _ in range(job["repeat"]):
        t = time.perf_counter_ns()
        run(frames, exposures)
        samples.append((time.perf_counter_ns() - t) / 1e6)
    return {"runtime": runtime, "runtime_version": version, "load_ms": load_ms,
            "samples_ms": samples, "threads_effective": job.get("threads_effective"),
            **peak_memory(watch)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m dealthdr.bench.worker JOB.json RESULT.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text())
    os.environ.setdefault("OMP_NUM_THREADS", str(job["threads"]))
    if job["runtime"] == "torch":
        reuse_freed_memory()
    result = measure(job)
    result["allocator"] = allocator_note()
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
