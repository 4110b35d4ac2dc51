"""`python -m device_bench stream`: `dealthdr reconstruct` streaming against every window.

    python -m device_bench stream --size 256x256 --frames 32 --s 15 --threads 1 \\
        --out device_bench/results/stream_256.json

One synthetic held-out clip (`dealthdr synth`: the held-out panoramas, exact ground truth) is
reconstructed by `dealthdr reconstruct` in fresh processes, alternating the streaming default
and `--no-stream` for `--repeats` rounds, so both modes see the same machine state. Each run is
timed by the reconstruction's own clock (the manifest's `seconds`: reading, the network,
writing float32 EXR; no imports) and its peak RSS is the child's high-water mark (`wait4`).
The record holds both modes' median seconds, their ratio, both peaks and their ratio, and the
largest |difference| between the two modes' EXR frames, with the machine and versions.
Time it with nothing else running: the two modes share the cores.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dealthdr.cliargs import parse_size
from dealthdr.data.io import read_hdr
from dealthdr.data.synth import BUNDLED_HDRI, SynthConfig, load_panoramas, synth_dataset
from dealthdr.fileio import atomic_write_bytes
from dealthdr.sysinfo import machine_record

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("stream", help="reconstruct streaming vs every window: time, memory, "
                                      "equality", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=parse_size, default=(256, 256),
                   help="frame size HxW of the synthetic clip (default 256x256)")
    p.add_argument("--frames", type=int, default=32, help="clip length (even, default 32)")
    p.add_argument("--s", type=float, default=15.0, help="attention sensitivity (default 15)")
    p.add_argument("--checkpoint", default="default",
                   help="weights ('default': the shipped checkpoint)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--repeats", type=int, default=2,
                   help="rounds of (streaming, windows) runs; medians are reported (default 2)")
    p.add_argument("--seed", type=int, default=7, help="seed of the synthetic clip")
    p.add_argument("--out", type=Path, default=Path("runs/stream.json"),
                   help="JSON record to write (default runs/stream.json)")
    p.set_defaults(run=run, config=StreamConfig)


@dataclass(frozen=True)
class StreamConfig:
    """`device_bench stream`'s settings, one field per flag (`--help` explains each)."""
    size: tuple[int, int]
    frames: int
    s: float
    checkpoint: str
    threads: int
    repeats: int
    seed: int
    out: Path


def run(cfg: StreamConfig) -> int:
    if cfg.repeats < 1 or cfg.threads < 1:
        raise ValueError("--repeats and --threads must be >= 1")
    with tempfile.TemporaryDirectory(prefix="dealthdr_stream_") as tmp:
        clip = _clip(Path(tmp), cfg)
        runs = {"stream": [], "windows": []}
        for r in range(cfg.repeats):
            for mode in runs:
                out = Path(tmp) / f"{mode}{r}"
                runs[mode].append(_reconstruct(clip, out, mode, cfg))
                log.info("%s round %d: %.1f s, peak %.0f MB", mode, r, runs[mode][-1]["seconds"],
                         runs[mode][-1]["peak_rss_mb"])
        max_abs = _max_abs(Path(tmp) / "stream0" / "hdr", Path(tmp) / "windows0" / "hdr")
    record = _record(cfg, runs, max_abs)
    atomic_write_bytes(cfg.out, (json.dumps(record, indent=2) + "\n").encode())
    log.info("streaming %.2fx faster (%.1f vs %.1f s), peak RSS %.2fx, max |diff| %.2e -> %s",
             record["speedup"], record["stream"]["seconds_median"],
             record["windows"]["seconds_median"], record["peak_rss_ratio"], max_abs, cfg.out)
    return 0


def _clip(root: Path, cfg: StreamConfig) -> Path:
    synth = SynthConfig(frames=cfg.frames, height=cfg.size[0], width=cfg.size[1])
    return synth_dataset(root / "clips", 1, synth,
                         load_panoramas(BUNDLED_HDRI, "heldout", synth), seed=cfg.seed,
                         progress=False)[0]


def _reconstruct(clip: Path, out: Path, mode: str, cfg: StreamConfig) -> dict:
    cmd = [sys.executable, "-m", "dealthdr", "reconstruct", "--input", str(clip), "--output",
           str(out), "--checkpoint", str(cfg.checkpoint), "--s", str(cfg.s), "--threads",
           str(cfg.threads), "--float32", "--no-preview", "--no-progress", "--tile", "0"]
    if mode == "windows":
        cmd.append("--no-stream")
    # stderr to a file, not a pipe: the child's warnings could fill a pipe nobody reads
    # while wait4 waits (wait4, not communicate: it returns the child's own peak RSS)
    with tempfile.TemporaryFile() as log_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log_file)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log_file.seek(0)
        err = log_file.read().decode(errors="replace")
    if proc.returncode != 0:
        raise ValueError(f"dealthdr reconstruct failed ({proc.returncode}): {err[-2000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    if manifest["stream"] != (mode == "stream"):
        raise RuntimeError(f"{mode} run reports stream={manifest['stream']}")
    return {"seconds": manifest["seconds"], "peak_rss_mb": usage.ru_maxrss / 1024,
            "psnr_mu_full_windows": manifest.get("ground_truth", {}).get("psnr_mu_full_windows")}


def _max_abs(a: Path, b: Path) -> float:
    import numpy as np

    names = sorted(p.name for p in a.glob("*.exr"))
    if not names or names != sorted(p.name for p in b.glob("*.exr")):
        raise RuntimeError("the two modes wrote different frames")
    return max(float(np.abs(read_hdr(a / n) - read_hdr(b / n)).max()) for n in names)


def _record(cfg: StreamConfig, runs: dict, max_abs: float) -> dict:
    summary = {mode: {"seconds_median": statistics.median(r["seconds"] for r in rs),
                      "peak_rss_mb_max": max(r["peak_rss_mb"] for r in rs), "runs": rs}
               for mode, rs in runs.items()}
    machine = machine_record()
    machine["threads"] = cfg.threads
    return {"benchmark": "reconstruct_stream_vs_windows", "size": list(cfg.size),
            "frames": cfg.frames, "s": cfg.s, "checkpoint": str(cfg.checkpoint), **summary,
            "speedup": summary["windows"]["seconds_median"] / summary["stream"]["seconds_median"],
            "peak_rss_ratio": summary["stream"]["peak_rss_mb_max"]
            / summary["windows"]["peak_rss_mb_max"],
            "max_abs_stream_vs_windows": max_abs, "machine": machine}

