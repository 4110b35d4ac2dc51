"""Run a window through a network tile by tile and blend the tiles: large frames within a fixed
memory budget, and fixed-shape exported programs on frames of any larger size.

Tiles of `tile` x `tile` positions overlap by `overlap`; the last tile of a row or column is
aligned with the frame's edge, so every tile has the same shape (what an exported program of that
size takes). Each tile's output is weighted by linear ramps across the overlaps it shares with
its neighbours (1 inside, falling towards a shared edge, never 0) and the weighted sum is divided
by the summed weights. The network's channel attention and router pool over the whole tile and
its flow sees only the tile, so a tiled output differs slightly from an untiled one; the ramps
hide the seams (measured by `device_bench tiled` and the reconstruct tests).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` covering `length`, consecutive ones overlapping by at
    least `overlap`; one tile at 0 when the length fits."""
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got {overlap} for tile {tile}")
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return starts + [length - tile]


def ramp(length: int, overlap: int, rise: bool, fall: bool) -> np.ndarray:
    """Blend weights of one tile side: linear over `overlap` at a shared edge, 1 elsewhere."""
    w = np.ones(length, dtype=np.float32)
    if overlap > 0:
        edge = (np.arange(overlap, dtype=np.float32) + 1) / (overlap + 1)
        if rise:
            w[:overlap] = np.minimum(w[:overlap], edge)
        if fall:
            w[-overlap:] = np.minimum(w[-overlap:], edge[::-1])
    return w


def run_tiled(run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], frames: torch.Tensor,
              exposures: torch.Tensor, tile: int, overlap: int = 32) -> np.ndarray:
    """`run` over overlapping tiles of `frames` (1, T, 3, H, W), blended: (H, W, 3) float32.

    `run(frames_tile, exposures) -> (1, 3, th, tw)` sees tiles of min(tile, H) x min(tile, W);
    only one tile's input and output are alive at a time beside the two accumulators."""
    h, w = frames.shape[-2:]
    acc = np.zeros((h, w, 3), dtype=np.float32)
    weight = np.zeros((h, w, 1), dtype=np.float32)
    th, tw = min(tile, h), min(tile, w)
    for y in tile_starts(h, tile, overlap):
        for x in tile_starts(w, tile, overlap):
            crop = frames[..., y:y + th, x:x + tw].contiguous()
            out = np.asarray(run(crop, exposures))[0].transpose(1, 2, 0)
            wy = ramp(th, overlap, y > 0, y + th < h)
            wx = ramp(tw, overlap, x > 0, x + tw < w)
            wt = (wy[:, None] * wx[None, :])[..., None]
            acc[y:y + th, x:x + tw] += out * wt
            weight[y:y + th, x:x + tw] += wt
    return acc / weight
