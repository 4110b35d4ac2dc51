"""`python -m device_bench run`: time exported artifacts and torch eager on this host.

    python -m device_bench run --artifacts exports/executorch exports/onnx exports/int8 \\
        --sizes 256x256 --threads 1,2 --out device_bench/results/host_256.jsonl

Every (artifact, size, thread count) is measured in a fresh subprocess (dealthdr/bench/worker.py):
the load is timed apart, then `--warmup` untimed and `--repeat` timed inferences on the same
input; the `--trim` share of the fastest and slowest are dropped and the median, p10 and p90
reported; peak memory is the RSS high-water mark the artifact added. Records are JSON lines
(dealthdr/bench/schema.py); the file is rewritten atomically after every record, and a rerun
skips the records it already holds, so an interrupted run resumes where it stopped (`--fresh`
starts anew, for a record whose ratios must all come from one run). The summary (per runtime:
the linear fit of latency against attention ratio and its residual, and speed relative to
torch eager) is printed at the end and written beside the records.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dealthdr.bench import breakdown, plot, schema, summary
from dealthdr.bench.jobs import RUNTIMES, FlopCache, attention_ratio, discover
from dealthdr.bench.stats import latency_stats, percentile
from dealthdr.cliargs import parse_sizes
from dealthdr.fileio import atomic_write_bytes
from dealthdr.sensitivity import parse_s_texts
from dealthdr.sysinfo import cpu_model, dirty_paths, source_commit

log = logging.getLogger(__name__)


def parse_int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") \
            from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {text!r}")
    return values


def default_device() -> str:
    return f"{platform.system().lower()}-{platform.machine()}"


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="time artifacts and torch eager on this host",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, nargs="+", required=True, metavar="DIR",
                   help="export / quantize output folders (or their manifest.json files)")
    p.add_argument("--sizes", type=parse_sizes, default=[(256, 256)],
                   help="input sizes HxW, comma-separated; an artifact runs only at the size it "
                        "was exported at, eager at every size (default 256x256)")
    p.add_argument("--threads", type=parse_int_list, default=[1, 2],
                   help="intra-op thread counts, comma-separated (default 1,2)")
    p.add_argument("--runtimes", default="torch,onnxruntime,executorch",
                   help="comma-separated subset of torch (eager), onnxruntime, executorch "
                        "(default: all three)")
    p.add_argument("--s", type=parse_s_texts, default=None, dest="s_filter",
                   help="only these s-buckets, comma-separated (default: every bucket in the "
                        "manifests)")
    p.add_argument("--centre", choices=("both", "short", "long"), default="both",
                   help="windows centred on a short or long frame; a stream alternates, so the "
                        "default measures both graphs")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed inferences after the load; the first is also checked for shape "
                        "and finiteness (default 2)")
    p.add_argument("--repeat", type=int, default=10,
                   help="timed inferences per pass (default 10)")
    p.add_argument("--passes", type=int, default=1,
                   help="measure every job this many times, interleaved: pass 1 runs the jobs "
                        "in order, pass 2 in reverse, ... (a slow drift of the machine then "
                        "lands on every artifact alike); the record pools all passes' samples "
                        "and keeps each pass's median (default 1)")
    p.add_argument("--trim", type=float, default=0.1,
                   help="share of fastest and of slowest samples dropped before the statistics "
                        "(default 0.1)")
    p.add_argument("--checkpoint", default=None,
                   help="weights for the eager reference (default: the manifest's checkpoint, or "
                        "the shipped one when its sha256 matches)")
    p.add_argument("--device", default=default_device(),
                   help=f"name of this machine in the records (default {default_device()})")
    p.add_argument("--timeout", type=float, default=1800,
                   help="seconds one measurement may take before it is killed (default 1800)")
    p.add_argument("--out", type=Path, default=Path("runs/host.jsonl"),
                   help="JSON-lines records; existing records are kept and not re-measured "
                        "(default runs/host.jsonl, outside the source tree)")
    p.add_argument("--fresh", action="store_true",
                   help="measure every job anew: the records and resume state already in --out "
                        "are dropped (the file is replaced at the first new record), so ratios "
                        "in it all come from this run; resume an interrupted --fresh run "
                        "without the flag")
    p.add_argument("--plot", type=Path, default=None, metavar="DIR",
                   help="also draw the curves, the tables and the eager component breakdown "
                        "into DIR (as `device_bench plot` and `breakdown`)")
    p.add_argument("--quality", type=Path, nargs="*", default=None, metavar="FILE",
                   help="with --plot: PSNR-mu sources (eval JSON, quantize_report.json); default "
                        "dealthdr/weights/eval_heldout.json")
    p.set_defaults(run=run, config=RunConfig)


def host_fields(device: str) -> dict:
    return {"device": device, "cpu": cpu_model(), "os": f"{platform.system()} {platform.release()}",
            "commit": source_commit(), "dirty_paths": dirty_paths()}


def streamed_flops(window: dict, frames: int) -> tuple[float | None, dict]:
    """One output frame of a frame loop from the components of a window graph of `frames`
    frames: one of its encodes and two of its frames - 1 (centre, neighbour) pairs through
    SpyNet, both ways (for 5 frames: one of five encodes, four of the eight directions)."""
    if not window:
        return None, {}
    share = {"encoders": 1 / frames, "flow (SpyNet)": 2 / (frames - 1)}
    comps = {k: v * share.get(k, 1.0) for k, v in window.items()}
    return sum(comps.values()), comps


def build_record(job, result: dict, host: dict, gflops, components: dict, trim: float) -> dict:
    st = latency_stats(result["samples_ms"], trim)
    return {
        **host, "runtime": result["runtime"], "runtime_version": result["runtime_version"],
        "backend": job.backend, "precision": job.precision, "variant": job.variant, "s": job.s,
        "bucket_k": job.bucket_k, "attention_ratio": round(attention_ratio(job.bucket_k, job.size,
                                                                           job.tile), 6),
        "size": job.size_text, "threads": job.threads,
        "latency_ms_median": round(st["latency_ms_median"], 3),
        "latency_ms_p10": round(st["latency_ms_p10"], 3),
        "latency_ms_p90": round(st["latency_ms_p90"], 3),
        "load_ms": round(result["load_ms"], 2), "peak_mem_mb": round(result["peak_mem_mb"], 1),
        "gflops": None if gflops is None else round(gflops, 4),
        # extras
        "centre": job.centre, "sha256": job.sha256,
        "artifact": Path(job.path).name if job.path else None, "method": job.method,
        "latency_ms_mean": round(st["latency_ms_mean"], 3), "samples_kept": st["samples_kept"],
        "samples_ms": [round(v, 3) for v in result["samples_ms"]], "trim": trim,
        "warmup": result.get("warmup"), "peak_rss_mb": round(result["peak_rss_mb"], 1),
        "peak_mem_method": result["peak_mem_method"], "allocator": result.get("allocator"),
        "threads_effective": result.get("threads_effective"),
        "gflops_components": {k: round(v, 4) for k, v in components.items()},
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "passes": result.get("passes", 1),
        "pass_medians_ms": result.get("pass_medians_ms"), **job.extra}


def run_job(job, warmup: int, repeat: int, timeout: float) -> dict:
    """Measure one job in a fresh interpreter; raise RuntimeError with its stderr tail."""
    env = dict(os.environ)
    # Thread pools sized at import (OpenMP in torch and onnxruntime's deps) read these.
    env["OMP_NUM_THREADS"] = str(job.threads)
    env["MKL_NUM_THREADS"] = str(job.threads)
    with tempfile.TemporaryDirectory(prefix="device_bench.") as tmp:
        spec, out = Path(tmp) / "job.json", Path(tmp) / "result.json"
        spec.write_text(json.dumps(job.to_json(warmup, repeat)))
        try:
            proc = subprocess.run([sys.executable, "-m", "dealthdr.bench.worker", str(spec),
                                   str(out)], env=env, capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{job.label}: killed after {timeout:.0f} s (--timeout)") from None
        if proc.returncode != 0 or not out.is_file():
            tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
            raise RuntimeError(f"{job.label}: worker exited {proc.returncode}:\n{tail}")
        result = json.loads(out.read_text())
    result["warmup"] = warmup
    return result


def merge_passes(results: list[dict]) -> dict:
    """One worker result from several passes of the same job: samples pooled, the load time's
    median, the peak memory's maximum, and each pass's median kept."""
    first = results[0]
    return {**first, "samples_ms": [v for r in results for v in r["samples_ms"]],
            "load_ms": percentile([r["load_ms"] for r in results], 50),
            "peak_mem_mb": max(r["peak_mem_mb"] for r in results),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
            "passes": len(results),
            "pass_medians_ms": [round(percentile(r["samples_ms"], 50), 3) for r in results]}


def interleaved(todo: list, passes: int) -> list[tuple[int, object]]:
    """(pass, job) in the order they run: forward, backward, forward, ..."""
    return [(p, j) for p in range(passes) for j in (todo if p % 2 == 0 else todo[::-1])]


def read_partial(path: Path) -> dict:
    """The finished passes of a killed run; {} when there are none. A file that is not what
    save_partial writes is refused by name, not guessed at: deleting it only costs a re-run of
    those passes, which the message says."""
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable resume state ({err}); delete it to re-measure "
                         "the unfinished jobs from their first pass") from None
    if not isinstance(doc, dict) or not all(isinstance(v, list) for v in doc.values()):
        raise ValueError(f"{path}: not a resume state (a JSON object of pass lists); delete "
                         "it to re-measure the unfinished jobs from their first pass")
    return doc


def measure_all(jobs: list, out: Path, device: str, warmup: int, repeat: int, trim: float,
                timeout: float, passes: int = 1, fresh: bool = False,
                ) -> tuple[list[dict], list[str]]:
    """Run the jobs not yet in `out`, `passes` times interleaved; returns (all records,
    failures). Finished passes of unfinished jobs wait in `<out>.partial.json`, so a resumed
    run only measures what is missing. `fresh`: nothing of an earlier run is reused or kept
    (a record that mixes runs would compare timings taken under different machine states)."""
    from tqdm import tqdm

    partial_path = out.with_name(out.name + ".partial.json")
    if fresh:
        if out.is_file() or partial_path.is_file():
            log.info("--fresh: the records in %s are replaced by this run's", out)
        records, partial = [], {}
    else:
        records = schema.read_records(out) if out.is_file() else []
        partial = read_partial(partial_path)
    host = host_fields(device)
    done = {schema.key(r) for r in records}

    def job_key(j):
        return (device, j.runtime, j.backend, j.precision, j.variant, j.s, j.centre,
                tuple(j.bucket_k), j.size_text, j.threads, j.sha256)

    def save_partial():
        if partial:
            atomic_write_bytes(partial_path, json.dumps(partial).encode())
        elif partial_path.exists():
            partial_path.unlink()
    todo = [j for j in jobs if job_key(j) not in done]
    if len(todo) < len(jobs):
        log.info("%s holds %d of the %d measurements; running the other %d", out,
                 len(jobs) - len(todo), len(jobs), len(todo))
    flops, failures, failed = FlopCache(), [], set()
    for p, job in tqdm(interleaved(todo, passes), desc="device_bench run", unit="job"):
        k = json.dumps(job_key(job))
        have = partial.get(k, [])
        if k in failed or len(have) > p:
            continue
        try:
            while len(have) <= p:      # a resumed job may lack an earlier pass too
                have.append(run_job(job, warmup, repeat, timeout))
        except RuntimeError as err:
            log.error("%s", err)
            failures.append(str(err).splitlines()[0])
            failed.add(k)
            continue
        partial[k] = have
        if len(have) < passes:
            save_partial()
            continue
        gflops, comps = flops(job)
        if job.backend.endswith("-stream"):
            gflops, comps = streamed_flops(comps, job.frames)
        rec = build_record(job, merge_passes(have), host, gflops, comps, trim)
        if schema.key(rec) != job_key(job):  # the worker reports its runtime's own name
            raise RuntimeError(f"{job.label}: record key {schema.key(rec)} != job key")
        records.append(schema.validate(rec, job.label))
        schema.write_records(out, records)
        del partial[k]
        save_partial()
        log.info("%s: %.4g ms median (p10 %.4g, p90 %.4g), load %.4g ms, +%.0f MB", job.label,
                 rec["latency_ms_median"], rec["latency_ms_p10"], rec["latency_ms_p90"],
                 rec["load_ms"], rec["peak_mem_mb"])
    return records, failures


@dataclass(frozen=True)
class RunConfig:
    """`device_bench run`'s settings, one field per flag (`--help` explains each)."""
    artifacts: list[Path]
    sizes: list[tuple[int, int]]
    threads: list[int]
    runtimes: str
    s_filter: list[str] | None
    centre: str
    warmup: int
    repeat: int
    passes: int
    trim: float
    checkpoint: str | None
    device: str
    timeout: float
    out: Path
    fresh: bool
    plot: Path | None
    quality: list[Path] | None


def run(cfg: RunConfig) -> int:
    runtimes = tuple(r.strip() for r in cfg.runtimes.split(",") if r.strip())
    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad or not runtimes:
        raise ValueError(f"--runtimes: {bad or 'nothing given'}; choose from {list(RUNTIMES)}")
    if cfg.warmup < 1 or cfg.repeat < 1 or cfg.passes < 1:
        raise ValueError("--warmup, --repeat and --passes must be >= 1 (the first warm-up "
                         "inference checks the output)")
    if not 0 <= cfg.trim < 0.5:
        raise ValueError(f"--trim must be in [0, 0.5), got {cfg.trim}")
    centres = ("short", "long") if cfg.centre == "both" else (cfg.centre,)
    jobs = discover(cfg.artifacts, cfg.sizes, cfg.threads, runtimes, cfg.s_filter, centres,
                    cfg.checkpoint)
    if not jobs:
        raise ValueError("nothing to measure: no artifact of the manifests matches --sizes / "
                         "--s / --centre / --runtimes on this host")
    records, failures = measure_all(jobs, cfg.out, cfg.device, cfg.warmup, cfg.repeat,
                                    cfg.trim, cfg.timeout, cfg.passes, cfg.fresh)
    mine = [r for r in records if r["device"] == cfg.device]
    report = summary.summarise(mine)
    summary.write_json(cfg.out.with_suffix(".summary.json"), report)
    print(summary.text(report))
    if cfg.plot is not None:
        quality = cfg.quality if cfg.quality is not None else plot.default_quality()
        bd_path = cfg.plot / "breakdown.json"
        breakdown.write(bd_path, breakdown.measure_for_jobs(jobs, max(cfg.threads)))
        for line in plot.draw([cfg.out], cfg.plot, quality, bd_path):
            print(line)
    if failures:
        print(f"{len(failures)} measurement(s) failed:\n  " + "\n  ".join(failures),
              file=sys.stderr)
        return 1
    return 0
