"""Reconstruct a whole alternating-exposure sequence: one linear HDR frame per input frame.

Windows. Frame t is reconstructed from the network's window (`num_frames`; the paper's 5 frames,
t-2..t+2). At the first and last two frames the missing indices are reflected about the sequence
ends (-1 -> 1, -2 -> 2, F -> F-2, F+1 -> F-3). A reflection keeps an index's parity, so the
window still alternates short/long exactly like a full one and the network sees no pattern it
was not trained on; the reflected frames are real neighbours, seen twice, which the
exposure-aware merge weighs like any other aligned neighbour. (Replicating the end frame instead
would put two frames of the same exposure side by side and break the alternation the network
checks.)

Units. The network returns radiance in units of the shortest exposure of its window. Each
output is rescaled to the sequence's shortest short exposure, so that a sequence with varying
exposure times (auto exposure) gives frames in one unit; with a fixed schedule the factor is 1
and, where a short frame is not clipped, its linearised value (ldr^2.2) equals the output.

Tiles. Frames larger than --tile are processed as overlapping tiles whose outputs are blended
with linear ramps across the overlaps (`dealthdr.tiling`), so memory stays bounded at any frame
size. The flows are estimated once on the whole frame (at 1/4 resolution, cheap) and cropped per
tile, and channel attention, which sums over every position, attends with the whole frame's
sums from the previous pass over the tiles: with the default `--tile-passes 2` a 1080p frame in
256-px tiles matches the untiled one to ~51.5 dB PSNR-mu at s=15 (one pass: ~36 dB; tiles run
alone: ~33 dB; measured by `device_bench tiled`, tested in tests/test_reconstruct.py), at twice
the compute. In a sequence the statistics change slowly, so by default each frame after the
first of its exposure starts from the sums of the last frame of the same centre exposure and
takes one pass (on panning synthetic clips as close to the untiled frame as two fresh passes,
far closer than one fresh pass; tested in tests/test_reconstruct.py); `--fresh-statistics`
runs every frame's passes from scratch (a cut between two frames makes the carried sums stale
for one frame).

Streaming. Consecutive windows share four of their five frames: by default each frame goes
through its encoder once and each frame pair's flow is computed once (`dealthdr.stream`), and
every output frame runs only the fusion, with the window path's numbers (`--no-stream` runs
every window from scratch; tiled frames always do).

Output (written to a staging folder next to DIR and renamed when complete, so an interrupted or
failed run leaves no DIR behind):
    DIR/hdr/000000.exr       linear HDR, half float (or float32), one per input frame
    DIR/preview/000000.png   8-bit mu-law tonemap (mu = 5000) of the HDR clipped at 1
    DIR/preview.mp4          the previews as a video, when OpenCV can encode MP4
    DIR/manifest.json        input, exposures, checkpoint, s, tiling, timings, and when the input
                             is a clip folder with ground truth, PSNR-mu of the written files
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .fileio import atomic_write_bytes
from .data.io import read_hdr, write_exr
from .data.sequence import Sequence
from .fileio import jsonable
from .model import DeAltHDR, DeAltHDRConfig
from .stream import FrameStream
from .tiling import eager_tile_run, network_align, run_tiled

log = logging.getLogger(__name__)

FORMAT = "dealthdr-reconstruction/1"


def reflect(i: int, n: int) -> int:
    """Index i reflected into 0..n-1 about the ends (n >= 3 needs one reflection for |i| <= 2)."""
    if n < 2:
        raise ValueError("reflection needs at least 2 frames")
    period = 2 * (n - 1)
    i = abs(i) % period
    return period - i if i >= n else i


def window_indices(t: int, n: int, size: int = DeAltHDRConfig.num_frames) -> list[int]:
    """The `size` frames of t's window (the network's `num_frames`), reflected at the sequence
    ends (see the module docstring)."""
    half = size // 2
    return [reflect(i, n) for i in range(t - half, t + half + 1)]


def infer(model: DeAltHDR, frames: np.ndarray, exposures: np.ndarray, s: float,
          tile: int = 0, overlap: int = 32, device: torch.device | str = "cpu",
          passes: int = 2) -> np.ndarray:
    """One window (T, H, W, 3) gamma LDR + (T,) exposures -> linear HDR (H, W, 3), float32,
    in units of the window's shortest exposure; tiled when tile > 0 and a side exceeds it
    (`passes` over the tiles, see the module docstring)."""
    return infer_with_statistics(model, frames, exposures, s, tile, overlap, device, passes)[0]


def infer_with_statistics(model: DeAltHDR, frames: np.ndarray, exposures: np.ndarray, s: float,
                          tile: int = 0, overlap: int = 32, device: torch.device | str = "cpu",
                          passes: int = 2, given: list | None = None,
                          ) -> tuple[np.ndarray, list | None]:
    """`infer`, and the frame's channel-attention sums of a tiled run (None untiled). With
    `given` (a previous frame's sums) one pass runs, attending with them."""
    h, w = frames.shape[1:3]
    x = torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2)))[None].to(device)
    e = torch.from_numpy(np.asarray(exposures, dtype=np.float32))[None].to(device)
    with torch.no_grad():
        if tile <= 0 or (h <= tile and w <= tile):
            return model(x, e, s=s)[0].permute(1, 2, 0).cpu().numpy(), None
        fs = model.cfg.flow_scale
        res = run_tiled(eager_tile_run(model, s), x, e, tile, overlap,
                        flows=model.window_flows(x, e), flow_scale=fs,
                        passes=passes if given is None else 1, given=given,
                        align=network_align(fs))
        return res.hdr, res.frame_sums


def _streamed(streamer: FrameStream, idx: list[int], frames: np.ndarray, exposures: np.ndarray,
              device: torch.device | str) -> np.ndarray:
    """One window through the stream: (T, H, W, 3) -> (H, W, 3), as `infer`."""
    x = torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2)))[None].to(device)
    e = torch.from_numpy(np.asarray(exposures, dtype=np.float32))[None].to(device)
    return streamer(idx, x, e)[0][0].permute(1, 2, 0).cpu().numpy()


def preview(hdr: np.ndarray) -> np.ndarray:
    """8-bit RGB mu-law tonemap of HDR clipped at the short exposure's white (1)."""
    return np.round(metrics.mu_law(np.clip(hdr, 0, 1)) * 255).astype(np.uint8)


def _write_png8(path: Path, rgb: np.ndarray) -> None:
    import cv2

    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):
        raise OSError(f"OpenCV could not write {path}")


def _write_mp4(path: Path, pngs: list[Path], fps: float) -> str | None:
    """Encode the previews; returns None on success or why there is no MP4."""
    import cv2

    first = cv2.imread(str(pngs[0]))
    h, w = first.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        return "OpenCV has no MP4 (mp4v) encoder here"
    try:
        for p in pngs:
            writer.write(cv2.imread(str(p)))
    finally:
        writer.release()
    if not path.is_file() or path.stat().st_size == 0:
        path.unlink(missing_ok=True)
        return "OpenCV wrote an empty MP4"
    return None


def _staging(out: Path, overwrite: bool) -> Path:
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        raise ValueError(f"{out} exists and is not empty; choose another --output or pass "
                         "--overwrite")
    staging = out.parent / f".{out.name}.staging-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    (staging / "hdr").mkdir(parents=True)
    return staging


def _publish(staging: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None and old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    elif old is not None:  # --overwrite of a file
        old.unlink(missing_ok=True)


def score(seq: Sequence, hdr_dir: Path, indices: list[int], white: float = 1.0,
          window: int = DeAltHDRConfig.num_frames) -> dict:
    """PSNR-mu of the written EXR files against the sequence's ground truth, normalised at the
    short exposure's white as `dealthdr evaluate` does: over every written frame, and over the
    frames evaluate scores (full windows of `window` frames: t = 2 .. F-3 for 5)."""
    values = {}
    for t in indices:
        pred = read_hdr(hdr_dir / f"{t:06d}.exr")
        values[t] = metrics.psnr_mu(pred, seq.hdr_loader(t), white)
    half = window // 2
    full = [v for t, v in values.items() if half <= t < len(seq) - half]
    mean = lambda v: float(np.mean(v)) if v else None  # noqa: E731
    return {"psnr_mu_all_frames": mean(list(values.values())),
            "psnr_mu_full_windows": mean(full), "frames_full_windows": len(full),
            "per_frame": {str(t): v for t, v in values.items()},
            "normalisation": f"short-white ({white:g} -> 1)"}


def reconstruct(seq: Sequence, model: DeAltHDR, out: str | Path, s: float = 15.0,
                tile: int = 512, overlap: int = 32, passes: int = 2,
                carry_statistics: bool = True, half: bool = True,
                frames: range | None = None, previews: bool = True, mp4: bool = True,
                fps: float | None = None, overwrite: bool = False, progress: bool = True,
                device: str = "cpu", stream: bool = True, extra: dict | None = None) -> dict:
    """Reconstruct `frames` (default: all) of `seq` into folder `out`; returns the manifest."""
    from tqdm import tqdm

    out = Path(out)
    n = len(seq)
    frames = range(n) if frames is None else frames
    if len(frames) == 0 or frames.start < 0 or frames.stop > n:
        raise ValueError(f"frame range {frames.start}:{frames.stop} is outside 0:{n}")
    if tile and (tile < 16 or tile % network_align(model.cfg.flow_scale)
                 or not 0 <= overlap < tile // 2):
        raise ValueError(f"--tile must be a multiple of "
                         f"{network_align(model.cfg.flow_scale)} (or 0) and --overlap in "
                         f"[0, tile/2), got {tile}, {overlap}")
    if passes < 1:
        raise ValueError(f"--tile-passes must be >= 1, got {passes}")
    # The first frame is read before anything is written: a corrupt one stops the run here.
    tiled = tile > 0 and max(seq.frame(frames.start).shape[:2]) > tile
    model.eval().to(device)
    staging = _staging(out, overwrite)
    ref = float(seq.exposures[~seq.long].min())
    carried: dict[bool, list] = {}  # last frame's attention sums per centre exposure
    streamer = FrameStream(model, s) if stream and not tiled else None
    start = time.perf_counter()
    try:
        if previews:
            (staging / "preview").mkdir()
        pngs = []
        for t in tqdm(frames, desc="reconstruct", unit="frame", disable=not progress):
            idx = window_indices(t, n, model.cfg.num_frames)
            win = np.stack([seq.frame(i) for i in idx])
            exp = seq.exposures[idx]
            centre_long = bool(seq.long[t])
            if streamer is not None:
                hdr = _streamed(streamer, idx, win, exp, device)
            else:
                hdr, sums = infer_with_statistics(
                    model, win, exp, s, tile, overlap, device, passes,
                    carried.get(centre_long) if carry_statistics else None)
                if sums:
                    carried[centre_long] = sums
            scale = float(exp.min()) / ref
            if scale != 1.0:
                hdr = hdr * np.float32(scale)
            write_exr(staging / "hdr" / f"{t:06d}.exr", hdr, half=half)
            if previews:
                pngs.append(staging / "preview" / f"{t:06d}.png")
                _write_png8(pngs[-1], preview(hdr))
        seconds = time.perf_counter() - start
        mp4_note = "disabled"
        if previews and mp4:
            mp4_note = _write_mp4(staging / "preview.mp4", pngs,
                                  fps or seq.info.get("fps") or 30.0) or "written"
        manifest = {
            "format": FORMAT, "input": seq.describe(), "frames_written": [frames.start,
                                                                           frames.stop],
            "s": s if math.isfinite(s) else "inf", "variant": model.cfg.name,
            "exr": "half" if half else "float32", "units": (
                "linear radiance in units of the shortest short exposure "
                f"({ref:g}); ldr^2.2 / (exposure / {ref:g}) of an unclipped frame"),
            "edges": f"{model.cfg.num_frames}-frame window reflected about the sequence ends "
                     "(keeps alternation)",
            "tile": tile, "overlap": overlap, "tile_passes": passes,
            "tile_statistics": "carried" if carry_statistics else "fresh",
            "stream": streamer is not None, "seconds": seconds,
            "seconds_per_frame": seconds / len(frames), "mp4": mp4_note, **(extra or {})}
        if seq.hdr_loader is not None:
            manifest["ground_truth"] = score(seq, staging / "hdr", list(frames),
                                             window=model.cfg.num_frames)
        atomic_write_bytes(staging / "manifest.json", json.dumps(
            jsonable(manifest), indent=2, allow_nan=False).encode())
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("%d frames in %s (%.2f s/frame)", len(frames), out, seconds / len(frames))
    return manifest
