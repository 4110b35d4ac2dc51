"""`dealthdr reconstruct`: HDR video from your alternating-exposure footage.

INPUT is a folder of 8/16-bit PNG or TIFF frames, a folder of RAW DNG frames, a video file, or
a clip folder written by `dealthdr synth`. Exposures come from the files' metadata (DNG, TIFF
EXIF), from an exposures.json beside the frames ({"frame_000.png": 1.0, "frame_001.png": 8.0};
for a video {"clip.mp4": [1, 8]}), or from --exposure-cycle. Writes one linear HDR OpenEXR per
input frame (units of the short exposure), tonemapped PNG previews, an MP4 of them and a
manifest.json, all at once: the output folder appears only when everything is written.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from .checkpoint import checkpoint_label, load_checkpoint, resolve_checkpoint
from .cliargs import apply_threads, check_device, reuse_freed_memory
from .data.sequence import open_sequence
from .model import VARIANTS
from .reconstruct import reconstruct
from .sensitivity import parse_s


def parse_range(text: str) -> tuple[int | None, int | None]:
    """'10:50' -> (10, 50); ':50', '10:' leave an end open."""
    try:
        a, b = text.split(":")
        return (int(a) if a.strip() else None), (int(b) if b.strip() else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"frame range must be START:STOP, got {text!r}") from None


def parse_cycle(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"exposures must be numbers, got {text!r}") from None
    if len(values) < 2 or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"give at least two positive exposures, e.g. 1,8; got "
                                         f"{text!r}")
    return values


def add_input_args(p: argparse.ArgumentParser) -> None:
    """Flags shared with `dealthdr adapt`."""
    p.add_argument("--input", type=Path, required=True, metavar="PATH",
                   help="folder of PNG/TIFF/DNG frames, a video file, or a `dealthdr synth` clip")
    p.add_argument("--exposure-cycle", type=parse_cycle, default=None, metavar="E1,E2,...",
                   help="relative exposures repeated over the frames (e.g. 1,8 when the first "
                        "frame is short), overriding metadata and exposures.json "
                        "(default: read them from the input)")
    p.add_argument("--frames", type=parse_range, default=(None, None), metavar="START:STOP",
                   help="use frames START..STOP-1 only (default: all)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads (default: torch's own)")


def frame_range(spec: tuple[int | None, int | None], n: int) -> range:
    start, stop = spec
    r = range(n)[slice(start, stop)]
    if len(r) == 0:
        raise ValueError(f"--frames {start}:{stop} selects no frame of {n}")
    return r


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct", help="HDR video (EXR + previews) from alternating-exposure "
                       "frames, a video or RAW DNGs", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_args(p)
    p.add_argument("--output", type=Path, required=True, metavar="DIR",
                   help="output folder; must not exist or be empty (see --overwrite)")
    p.add_argument("--checkpoint", default="default", metavar="PATH|default",
                   help="network weights (.safetensors beside its .json); 'default' is the "
                        "shipped checkpoint of --variant (default: default)")
    p.add_argument("--variant", choices=sorted(VARIANTS), default=None,
                   help="with --checkpoint default: whose shipped weights (default tiny); with "
                        "a path: the variant it must be (default: whatever it is)")
    p.add_argument("--s", type=parse_s, default=15.0,
                   help="FGMA sensitivity: 0 = flow only, inf = attention everywhere "
                        "(default: 15)")
    p.add_argument("--tile", type=int, default=512, metavar="PX",
                   help="process frames larger than PX x PX as overlapping tiles, which bounds "
                        "memory (default: 512; 0 = never tile)")
    p.add_argument("--overlap", type=int, default=32, metavar="PX",
                   help="overlap of neighbouring tiles, blended linearly (default: 32)")
    p.add_argument("--tile-passes", type=int, default=2, metavar="N",
                   help="passes over the tiles of a frame; each after the first attends with the "
                        "whole frame's channel-attention statistics from the one before (1: "
                        "fastest, visible seams; 2: matches the untiled frame closely; "
                        "default: 2)")
    p.add_argument("--fresh-statistics", action="store_true",
                   help="run every frame's tile passes from scratch; by default a frame after "
                        "the first of its exposure takes one pass with the attention statistics "
                        "of the last frame of the same exposure (half the compute)")
    p.add_argument("--no-stream", action="store_true",
                   help="run every 5-frame window from scratch; by default each frame is "
                        "encoded once and each frame pair's flow computed once across the "
                        "windows that share them (same output; tiled frames always run "
                        "windows)")
    p.add_argument("--float32", action="store_true",
                   help="write float32 EXR instead of half float (default: half)")
    p.add_argument("--no-preview", action="store_true",
                   help="write no tonemapped PNG previews and no MP4")
    p.add_argument("--no-mp4", action="store_true", help="write the PNG previews but no MP4")
    p.add_argument("--fps", type=float, default=None,
                   help="frame rate of the MP4 (default: the input video's, else 30)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing non-empty --output (only once the new one is "
                        "complete)")
    p.add_argument("--device", default="cpu",
                   help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    apply_threads(args.threads)
    reuse_freed_memory()
    if args.tile < 0 or args.overlap < 0:
        raise ValueError("--tile and --overlap must be >= 0")
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        raise ValueError(f"--fps must be a positive number, got {args.fps}")
    check_device(args.device)
    # fail on a bad checkpoint before reading data
    path = resolve_checkpoint(args.checkpoint, args.variant)
    model, _ = load_checkpoint(path, args.variant)
    seq = open_sequence(args.input, args.exposure_cycle)
    frames = frame_range(args.frames, len(seq))
    manifest = reconstruct(seq, model, args.output, s=args.s, tile=args.tile,
                           overlap=args.overlap, passes=args.tile_passes,
                           carry_statistics=not args.fresh_statistics,
                           half=not args.float32, frames=frames,
                           previews=not args.no_preview, mp4=not args.no_mp4, fps=args.fps,
                           overwrite=args.overwrite, progress=not args.no_progress,
                           device=args.device, stream=not args.no_stream,
                           extra={"checkpoint": checkpoint_label(path),
                                  "variant": model.cfg.name})
    line = (f"{len(frames)} HDR frames in {args.output} "
            f"({manifest['seconds_per_frame']:.2f} s/frame)")
    gt = manifest.get("ground_truth")
    if gt and gt["psnr_mu_full_windows"] is not None:
        line += (f"; PSNR-mu {gt['psnr_mu_full_windows']:.2f} dB over the "
                 f"{gt['frames_full_windows']} full-window frames, "
                 f"{gt['psnr_mu_all_frames']:.2f} dB over all")
    print(line)
    return 0
