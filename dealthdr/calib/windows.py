"""Deterministic windows from the bundled HDR panoramas, generated in memory.

Export calibration and parity gates need realistic inputs at the exported shape, and nothing may
be downloaded: each synthetic clip (`dealthdr.data.synth`, the training recipe) one frame longer
than the window yields one window centred on a short frame and one centred on a long frame, so
both graphs of a bucket are calibrated and gated. Calibration draws from the training
panoramas, parity gates from the held-out ones, so a bucket is never judged on the clips that
sized it.

Frames larger than `MAX_SYNTH_SIDE` are synthesised at a smaller size of the same aspect and
resized (bilinear) to the target: the bundled panoramas are too small to render 1080p views, and
the gates compare two implementations of one function, for which any realistic input will do.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from dealthdr.data.synth import BUNDLED_HDRI, SynthConfig, load_panoramas, synth_clip
from dealthdr.model.config import DeAltHDRConfig

log = logging.getLogger(__name__)

MAX_SYNTH_SIDE = 256


@dataclass
class Window:
    frames: torch.Tensor      # (1, T, 3, H, W) gamma-encoded LDR in [0, 1]
    exposures: torch.Tensor   # (1, T) relative exposure times
    hdr: torch.Tensor         # (1, 3, H, W) ground truth of the centre frame
    centre: str               # "short" or "long"
    name: str


def _synth_size(height: int, width: int) -> tuple[int, int]:
    scale = min(1.0, MAX_SYNTH_SIDE / max(height, width))
    even = lambda v: max(8, 2 * round(v * scale / 2))  # noqa: E731  (whole Bayer tiles)
    return even(height), even(width)


def _resize(a: np.ndarray, height: int, width: int) -> np.ndarray:
    if a.shape[-3:-1] == (height, width):
        return a
    return np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) for f in a])


def make_windows(split: str, height: int, width: int, clips: int = 2, seed: int = 0,
                 progress: bool = False,
                 frames: int = DeAltHDRConfig.num_frames) -> list[Window]:
    """2 * `clips` windows of `frames` frames (short and long centre alternate) of `split`
    ('train'|'heldout')."""
    from tqdm import tqdm

    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    if frames < 3 or frames % 2 == 0:
        raise ValueError(f"a window needs an odd number of frames >= 3, got {frames}")
    sh, sw = _synth_size(height, width)
    cfg = SynthConfig(frames=frames + 1, height=sh, width=sw)
    sources = load_panoramas(BUNDLED_HDRI, split, cfg)
    if (sh, sw) != (height, width):
        log.info("windows synthesised at %dx%d and resized to %dx%d", sh, sw, height, width)
    out = []
    for i in tqdm(range(clips), desc=f"synth {split} windows", disable=not progress):
        clip = synth_clip(cfg, sources, seed, i)
        ldr = np.clip(_resize(clip.ldr, height, width), 0, 1)
        hdr = _resize(clip.hdr, height, width)
        exposures = np.asarray(clip.meta["exposures"], np.float32)
        for start in (0, 1):
            sl, mid = slice(start, start + frames), start + frames // 2
            centre = "long" if clip.meta["long"][mid] else "short"
            out.append(Window(
                torch.from_numpy(np.ascontiguousarray(ldr[sl].transpose(0, 3, 1, 2)))[None],
                torch.from_numpy(exposures[sl])[None],
                torch.from_numpy(np.ascontiguousarray(hdr[mid].transpose(2, 0, 1)))[None],
                centre, f"{split}{seed}-clip{i}-{centre}"))
    return out
