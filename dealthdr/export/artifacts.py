"""What every exporter shares: its flags, the atomic output folder, digests and the manifest.

An exporter writes into a hidden staging folder next to `--out` and renames it into place only
after every artifact passed its gate, so a failed export leaves nothing behind. The manifest
(`manifest.json`, in the spirit of ai-hub-models' perf/numerics records) lists per artifact:
file, backend, precision, s, centre, bucket_k, attention_ratio_budget, input/output shapes,
bytes, sha256 and the parity figures.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from dealthdr import __version__
from dealthdr.calib.buckets import read_buckets, run_calibration
from dealthdr.calib.windows import make_windows
from dealthdr.checkpoint import checkpoint_label, load_checkpoint, resolve_checkpoint
from dealthdr.cliargs import configure_logging, parse_size
from dealthdr.export.buckets import make_buckets
from dealthdr.export.config import ExportConfig
from dealthdr.export.gate import GateFailed
from dealthdr.fileio import atomic_write_bytes, jsonable, sha256_file
from dealthdr.model import VARIANTS
from dealthdr.model.fgma import bucket_tiles
from dealthdr.model.fold import fold_affine
from dealthdr.model.network import level_tiles
from dealthdr.sensitivity import parse_s_list
from dealthdr.sysinfo import machine_record

log = logging.getLogger(__name__)

LICENSE = "Apache-2.0 (dealthdr); weights: see dealthdr/weights/README.md"


def add_common_flags(p: argparse.ArgumentParser, out_default: str) -> None:
    p.add_argument("--s-buckets", type=parse_s_list, default=[0.0, 1.0, 15.0, 100.0],
                   help="sensitivities s to export, comma-separated, 'inf' allowed; one "
                        "fixed-shape graph each (default 0,1,15,100)")
    p.add_argument("--checkpoint", default="default",
                   help="weights (.safetensors + .json) or 'default', the shipped checkpoint "
                        "of --variant (tiny when none is named)")
    p.add_argument("--variant", choices=sorted(VARIANTS), default=None,
                   help="variant of --checkpoint: with 'default', whose shipped weights; with a "
                        "path, a mismatch is an error (default: whatever the checkpoint is)")
    p.add_argument("--size", type=parse_size, default=(256, 256),
                   help="fixed input size HxW (default 256x256, a phone tile; 1080x1920 works)")
    p.add_argument("--centre", choices=("both", "short", "long"), default="both",
                   help="exposure of the window's centre frame: an alternating stream needs "
                        "both graphs per s (default both)")
    p.add_argument("--buckets", type=Path, default=None,
                   help="bucket calibration JSON from `python calib/buckets.py`; default: "
                        "calibrate now on synthetic windows of the training panoramas")
    p.add_argument("--quantile", type=float, default=0.95,
                   help="calibration quantile of the attention ratio (default 0.95; ignored "
                        "with --buckets)")
    p.add_argument("--calib-clips", type=int, default=2,
                   help="synthetic clips for calibration, 2 windows each (default 2)")
    p.add_argument("--parity-clips", type=int, default=1,
                   help="held-out synthetic clips for the parity gate, 2 windows each "
                        "(default 1)")
    p.add_argument("--out", type=Path, default=Path(out_default),
                   help=f"output folder (default {out_default}); must not exist unless --force")
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")


@contextlib.contextmanager
def staging_dir(out: Path, force: bool):
    """Yield a fresh staging folder; on success it replaces `out`, on error it is removed."""
    out = Path(out)
    if out.exists() and not force:
        raise ValueError(f"{out} exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.staging-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        stage.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        stage.rename(out)


def digest(path: Path) -> tuple[int, str]:
    """(bytes, sha256) of a file, or of a folder (.mlpackage): then the sha256 of its sorted
    'relative path, file sha256' lines."""
    if path.is_file():
        return path.stat().st_size, sha256_file(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    lines = "".join(f"{f.relative_to(path)}\0{sha256_file(f)}\n" for f in files)
    return sum(f.stat().st_size for f in files), hashlib.sha256(lines.encode()).hexdigest()


def artifact_record(path: Path, root: Path, backend: str, precision: str, bucket,
                    size: tuple[int, int], parity: dict, *, frames: int, **extra) -> dict:
    """The manifest record of one artifact; `frames`: its window length (the model's
    `num_frames`). `bucket` None: a program that serves every s and centre (a tiled export's
    frame flows), recorded with s and centre "any" and no attention fields."""
    n_bytes, sha = digest(path)
    h, w = size
    if bucket is None:
        attention = {"s": "any", "centre": "any"}
    else:
        # The tiles each level's attention runs in per neighbour: K, or every tile for a
        # bucket of at least DENSE_FROM of them (cheaper than gathering that many, and exact).
        tiles = level_tiles(size, bucket.tile)
        attention = {**bucket.record(), "tiles_per_level": list(tiles),
                     "tiles_run": [bucket_tiles(k, n) for k, n in zip(bucket.budget, tiles)]}
    return {"file": str(path.relative_to(root)), "backend": backend, "precision": precision,
            **attention,
            "input_shape": {"frames": [1, frames, 3, h, w], "exposures": [1, frames]},
            "output_shape": [1, 3, h, w], "bytes": n_bytes, "sha256": sha, **extra,
            "parity": parity}


def write_manifest(stage: Path, tool: str, cfg: ExportConfig, model_info: dict,
                   calibration: dict, artifacts: list[dict], started: float,
                   notes: list[str] | None = None) -> dict:
    manifest = {
        "format": "dealthdr-export-manifest/1", "tool": tool, "dealthdr": __version__,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "model": model_info, "size": list(cfg.size), "centre": cfg.centre,
        "calibration": calibration, "artifacts": artifacts, "notes": notes or [],
        "wall_time_s": round(time.time() - started, 1), "machine": machine_record(),
        "license": LICENSE}
    atomic_write_bytes(stage / "manifest.json",
                       (json.dumps(jsonable(manifest), indent=2) + "\n").encode())
    return manifest


def prepare(cfg: ExportConfig):
    """Load the model, calibrate (or read) the buckets, make parity windows.
    Returns (model, model_info, calibration, buckets, windows)."""
    for flag, value in (("--calib-clips", cfg.calib_clips), ("--parity-clips", cfg.parity_clips)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    path = resolve_checkpoint(cfg.checkpoint, cfg.variant)
    model, meta = load_checkpoint(path, cfg.variant)
    # Exported graphs carry the norms' affine and the layer scales inside the convolutions
    # (`dealthdr.model.fold`): fewer map-sized ops per window, the same function.
    params = sum(p.numel() for p in model.parameters())
    model = fold_affine(model)
    sha = sha256_file(path)
    info = {"variant": model.cfg.name, "checkpoint": checkpoint_label(path),
            "checkpoint_sha256": sha,
            "exposure_ratio": model.cfg.exposure_ratio,
            "params": params, "folded_affine_steps": model.folded_steps}
    if cfg.buckets is not None:
        calibration = read_buckets(cfg.buckets)
        if calibration.get("checkpoint_sha256") != sha:
            log.warning("%s was calibrated on another checkpoint (%s)", cfg.buckets,
                        calibration.get("checkpoint"))
    else:
        calibration = run_calibration(str(path), None, cfg.s_buckets, cfg.size,
                                      cfg.calib_clips, cfg.quantile)
    buckets = make_buckets(calibration, cfg.s_buckets, cfg.size, cfg.centres,
                           model.cfg.attn_tile)
    windows = make_windows("heldout", *cfg.size, clips=cfg.parity_clips, seed=1,
                           progress=True, frames=model.cfg.num_frames)
    return model, info, calibration, buckets, windows


def main_wrapper(run) -> int:
    """Logging set-up and error policy shared by the exporters: bad input exits 2, a failed
    gate exits 1; both with one clear line and no artifact left behind."""
    configure_logging()
    try:
        return run() or 0
    except (ValueError, OSError) as err:  # bad input, unusable paths: one line, exit 2
        print(f"error: {err}", file=sys.stderr)
        return 2
    except GateFailed as err:
        print(f"parity gate failed: {err}", file=sys.stderr)
        return 1
