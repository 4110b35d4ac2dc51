"""Turn an ordinary (single-exposure, 8-bit) video into an alternating-exposure sequence with
real motion, real sensor noise and real compression artefacts underneath, and known exposures.

Procedure, per output frame t (a documented re-exposure, not a camera simulation):
  1. decode frame `start + t * stride`, resize to --size (area interpolation);
  2. linearise: x = (v / 255) ** 2.2, the gamma the network assumes (the source is EV 0);
  3. re-expose: a short frame is x * 2**-2 (EV-2), a long one x * 2**+1 (EV+1), so the exposure
     ratio is 8 as in the paper; a long frame first integrates the source's motion from frame
     t-r to t+r (--long-blur 2r+1 frames): --long-subframes sub-frames per source interval,
     interpolated along OpenCV DIS flow, are averaged. A plain mean of the 2r+1 frames
     (--long-subframes 1) is not motion blur at a low frame rate: a person walking at 10 fps
     comes out as 2r+1 separate semi-transparent copies, a double image no camera makes;
  4. noise: + N(0, lambda_read + lambda_shot * y) on the re-exposed linear value y (the paper's
     Eq. A; default lambdas are in its night range, so short frames are visibly noisy);
  5. clip to [0, 1] (the long frame's highlights saturate), gamma 1/2.2, 16-bit PNG;
  6. exposures.json records 1 for short and 8 for long frames, the sidecar every dealthdr
     input reader understands.
The scene's true radiance is unknown (the source is already clipped 8-bit video), so there is
no ground truth: this is input for adaptation and for no-reference measures.

    python -m dealthdr.demo.alternate --video vtest.avi --out vtest_alt --frames 160
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import torch

from ..baselines import dis_flow, grey_u8
from ..cliargs import configure_logging, parse_size
from ..data.io import write_png16
from ..data.exposure import MIN_FRAMES
from ..fileio import atomic_write_bytes
from ..model.spynet import flow_warp

log = logging.getLogger(__name__)

SHORT_EV, LONG_EV = -2.0, 1.0


def decode(video: Path, start: int, count: int, stride: int, size: tuple[int, int] | None,
           pad: int) -> tuple[np.ndarray, int]:
    """Linear frames (up to count + 2 pad, H, W, 3) float32 with `pad` frames either side where
    the video has them, and the index of the first requested frame among them."""
    import cv2

    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise ValueError(f"{video} is not a video file OpenCV can read")
    first = max(start - pad * stride, 0)
    frames, i = [], 0
    while len(frames) < count + 2 * pad:
        ok, bgr = cap.read()
        if not ok:
            break
        if i >= first and (i - first) % stride == 0:
            if size is not None:
                bgr = cv2.resize(bgr, (size[1], size[0]), interpolation=cv2.INTER_AREA)
            frames.append((bgr[..., ::-1].astype(np.float32) / 255) ** 2.2)
        i += 1
    cap.release()
    if len(frames) < count + (start - first) // stride:
        raise ValueError(f"{video}: only {len(frames)} frames from {first} with stride {stride}")
    return np.stack(frames), (start - first) // stride


def _flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """DIS flow a -> b (H, W, 2) of two linear frames, on their gamma-encoded grey images (the
    `classical` baseline's flow)."""
    grey = [grey_u8(np.clip(x, 0, 1) ** (1 / 2.2)) for x in (a, b)]
    return dis_flow(*grey)


def interval_subframes(a: np.ndarray, b: np.ndarray, n: int) -> list[np.ndarray]:
    """n linear frames at times (i + 0.5) / n between frames a (time 0) and b (time 1).

    Each is a blend of a and b warped to its time with the linear-motion approximation of
    the flows between them (Super SloMo's: F_t0 = -(1-t) t F01 + t^2 F10, F_t1 = (1-t)^2 F01
    - t (1-t) F10), weighted by temporal distance. A demo's motion blur, not a learned
    interpolator: occlusion edges stay soft."""
    f01, f10 = _flow(a, b), _flow(b, a)
    ends = torch.from_numpy(np.stack((a, b)).transpose(0, 3, 1, 2).astype(np.float32))
    out = []
    for i in range(n):
        t = (i + 0.5) / n
        to_a = -(1 - t) * t * f01 + t * t * f10
        to_b = (1 - t) ** 2 * f01 - t * (1 - t) * f10
        flows = torch.from_numpy(np.stack((to_a, to_b)).transpose(0, 3, 1, 2).astype(np.float32))
        with torch.no_grad():
            warped = flow_warp(ends, flows, padding_mode="border").numpy().transpose(0, 2, 3, 1)
        out.append((1 - t) * warped[0] + t * warped[1])
    return out


def long_exposure(lin: np.ndarray, lo: int, hi: int, subframes: int) -> np.ndarray:
    """The mean linear frame over source frames lo..hi-1: `subframes` interpolated sub-frames
    per interval between them, or (subframes 1, or a single frame) their plain mean."""
    if subframes == 1 or hi - lo == 1:
        return lin[lo:hi].mean(axis=0)
    parts = [f for k in range(lo, hi - 1)
             for f in interval_subframes(lin[k], lin[k + 1], subframes)]
    return np.mean(parts, axis=0)


def alternate(video: str | Path, out: str | Path, frames: int = 160, start: int = 0,
              stride: int = 1, size: tuple[int, int] | None = (240, 320), long_blur: int = 3,
              lambda_shot: float = 4e-3, lambda_read: float = 1e-4, seed: int = 0,
              start_long: bool = False, long_subframes: int = 8) -> dict:
    """Write the alternating sequence (see the module doc) to `out`; returns its record."""
    if long_blur < 1 or long_blur % 2 == 0:
        raise ValueError(f"--long-blur must be odd and >= 1, got {long_blur}")
    if long_subframes < 1:
        raise ValueError(f"--long-subframes must be >= 1, got {long_subframes}")
    if frames < MIN_FRAMES:  # fewer make a sequence that no reader takes
        raise ValueError(f"--frames must be >= {MIN_FRAMES}, got {frames}")
    if start < 0 or stride < 1:
        raise ValueError(f"--start must be >= 0 and --stride >= 1, got {start} and {stride}")
    if not (math.isfinite(lambda_shot) and math.isfinite(lambda_read)
            and lambda_shot >= 0 and lambda_read >= 0):
        raise ValueError(f"--lambda-shot and --lambda-read must be finite and >= 0, got "
                         f"{lambda_shot} and {lambda_read}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder")
    # Frames go to a sibling folder renamed into place at the end: an interrupted run (the
    # long frames' interpolation takes a while) leaves no half sequence under `out`.
    final, out = out, out.with_name(f".{out.name}.partial")
    shutil.rmtree(out, ignore_errors=True)
    r = long_blur // 2
    lin, offset = decode(Path(video), start, frames, stride, size, r)
    rng = np.random.default_rng(seed)
    names, exposures = [], {}
    for t in range(frames):
        j = t + offset
        is_long = (t % 2 == 0) == start_long
        if is_long:
            lo, hi = max(j - r, 0), min(j + r + 1, len(lin))
            y = long_exposure(lin, lo, hi, long_subframes) * 2.0 ** LONG_EV
        else:
            y = lin[j] * 2.0 ** SHORT_EV
        y = y + np.sqrt(lambda_read + lambda_shot * y) * rng.standard_normal(y.shape)
        name = f"frame_{t:05d}.png"
        write_png16(out / name, np.clip(y, 0, 1) ** (1 / 2.2))
        names.append(name)
        exposures[name] = 2.0 ** ((LONG_EV if is_long else SHORT_EV) - SHORT_EV)
    atomic_write_bytes(out / "exposures.json", json.dumps(exposures, indent=1).encode())
    record = {"source": str(video), "frames": frames, "start": start, "stride": stride,
              "size": list(lin.shape[1:3]), "ev": {"short": SHORT_EV, "long": LONG_EV},
              "long_blur_frames": long_blur, "long_subframes": long_subframes,
              "lambda_shot": lambda_shot,
              "lambda_read": lambda_read, "seed": seed, "start_long": start_long,
              "procedure": "linearise (v/255)^2.2; short x 2^-2, long = mean over the "
                           f"{long_blur} source frames around it ({long_subframes} DIS-flow "
                           "interpolated sub-frames per interval; 1: the frames themselves) "
                           "x 2^1; + N(0, lambda_read + lambda_shot y); clip; ^(1/2.2); "
                           "16-bit PNG; exposures.json"}
    atomic_write_bytes(out / "alternate.json", json.dumps(record, indent=2).encode())
    if final.exists():
        final.rmdir()  # empty, checked above
    out.rename(final)
    log.info("%d alternating frames in %s", frames, final)
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dealthdr.demo.alternate",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", type=Path, required=True, help="source video (any OpenCV reads)")
    p.add_argument("--out", type=Path, required=True, help="output folder of PNG frames")
    p.add_argument("--frames", type=int, default=160, help="output frames (default 160)")
    p.add_argument("--start", type=int, default=0, help="first source frame (default 0)")
    p.add_argument("--stride", type=int, default=1, help="source frames per output (default 1)")
    p.add_argument("--size", type=parse_size, default=(240, 320),
                   help="output HxW (default 240x320: vtest.avi's 576x768 scaled by 0.42, "
                        "small enough for the CPU demo)")
    p.add_argument("--long-blur", type=int, default=3,
                   help="source frames whose motion a long exposure integrates, odd "
                        "(default 3)")
    p.add_argument("--long-subframes", type=int, default=8,
                   help="sub-frames per source interval, interpolated along DIS flow, that a "
                        "long exposure averages (default 8; 1: a plain mean of the source "
                        "frames, which shows a moving person as separate copies)")
    p.add_argument("--lambda-shot", type=float, default=4e-3, help="shot noise (default 4e-3)")
    p.add_argument("--lambda-read", type=float, default=1e-4, help="read noise (default 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--start-long", action="store_true", help="first frame long (default short)")
    args = p.parse_args(argv)
    configure_logging(True)
    try:
        alternate(args.video, args.out, args.frames, args.start, args.stride, args.size,
                  args.long_blur, args.lambda_shot, args.lambda_read, args.seed,
                  args.start_long, args.long_subframes)
    except (ValueError, OSError) as e:  # bad flags, unreadable videos, unusable paths: found
        # before any frame is written
        p.error(str(e))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
