"""Run a window through a network tile by tile and blend the tiles: large frames within a fixed
memory budget, and fixed-shape exported programs on frames of any larger size.

Tiles of `tile` x `tile` positions overlap by at least `overlap`; the last tile of a row or
column is aligned with the frame's edge, so every tile has the same shape (what an exported
program of that size takes). Each tile's output is weighted by linear ramps across the overlaps
it shares with its neighbours (1 inside, falling towards a shared edge, never 0) and the weighted
sum is divided by the summed weights.

Two parts of the network are not local, and a tile run alone gets both wrong near and far from
its edges (seams of ~34 dB PSNR-mu at 256-px tiles, measured):

- the flows: SpyNet's coarse pyramid levels see the whole input. `run_tiled` takes the window's
  flows computed once on the whole frame (`DeAltHDR.window_flows`, at 1/flow_scale: cheap) and
  gives each tile its crop;
- channel attention's statistics, sums over every position (`dealthdr.model.framestats`). Each
  tile reports its share of the sums; a pass over all tiles adds them up, and the next pass
  attends with the frame's sums. Pass 1 attends with each tile's own sums, so `passes=2`
  already attends with nearly the frame's statistics; `given` (e.g. the previous frame's sums
  in a video) lets a single pass start from frame-wide ones.

Tile starts are multiples of `align` (the network's padding multiple), so a tile's feature grid
at every level and its crop of the flows line up with the whole frame's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .model.framestats import Sums, frame_statistics
from .model.inputs import pad_frames
from .model.network import PAD_MULTIPLE


@dataclass
class Tile:
    """What a tile run gets: one fixed-shape crop and its side inputs."""
    frames: torch.Tensor                              # (1, T, 3, th, tw)
    exposures: torch.Tensor                           # (1, T)
    flows: tuple[torch.Tensor, torch.Tensor] | None   # crops of the window's flows
    share: torch.Tensor                               # (1, 1, th, tw): this tile's part of 1
    given: list[Sums] | None                          # frame-wide attention sums, or None


# tile -> (output (1, 3, th, tw) as numpy, partial attention sums in call order)
TileRun = Callable[[Tile], tuple[np.ndarray, list[Sums]]]


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets (multiples of `align`) of tiles of `tile` covering `length`, consecutive
    ones overlapping by at least `overlap`; one tile at 0 when the length fits. With align > 1,
    `length` and `tile` must be multiples of it (pad the frame first)."""
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got {overlap} for tile {tile}")
    if length % align or tile % align:
        raise ValueError(f"length {length} and tile {tile} must be multiples of {align}")
    if length <= tile:
        return [0]
    step = (tile - overlap) // align * align
    if step <= 0:
        raise ValueError(f"tile {tile} with overlap {overlap} leaves no {align}-aligned step")
    starts = list(range(0, length - tile, step))
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


@dataclass
class TiledResult:
    hdr: np.ndarray            # (H, W, 3) float32
    frame_sums: list[Sums]     # the last pass's frame-wide attention sums (empty if none)
    tiles: int                 # tiles per pass


def run_tiled(run: TileRun, frames: torch.Tensor, exposures: torch.Tensor, tile: int,
              overlap: int = 32, flows: tuple[torch.Tensor, torch.Tensor] | None = None,
              flow_scale: int = 1, passes: int = 1, given: list[Sums] | None = None,
              align: int = 1) -> TiledResult:
    """`run` over overlapping tiles of `frames` (1, T, 3, H, W), blended.

    flows: the window's (O_{t->n}, O_{n->t}) on the padded frame's 1/flow_scale grid, cropped
    per tile; None lets each tile estimate its own. passes: runs over all tiles, each after the
    first attending with the frame sums of the one before. The frame is padded (replicating
    its edge, as the network pads) to a multiple of `align`; only one tile's input and output
    are alive at a time beside the accumulators."""
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    if flows is not None and align % flow_scale:
        raise ValueError(f"align {align} must be a multiple of flow_scale {flow_scale}")
    h, w = frames.shape[-2:]
    frames = pad_frames(frames, align)
    hp, wp = frames.shape[-2:]
    th, tw = min(tile, hp), min(tile, wp)
    layout = [(y, x, _weight(y, x, th, tw, hp, wp, overlap))
              for y in tile_starts(hp, th, overlap, align)
              for x in tile_starts(wp, tw, overlap, align)]
    total = np.zeros((hp, wp, 1), dtype=np.float32)
    for y, x, wt in layout:
        total[y:y + th, x:x + tw] += wt
    acc = np.zeros((hp, wp, 3), dtype=np.float32)
    frame_sums = given
    for p in range(passes):
        last = p == passes - 1
        sums: list[Sums] | None = None
        for y, x, wt in layout:
            share = torch.from_numpy((wt / total[y:y + th, x:x + tw])[..., 0])[None, None]
            crop = None if flows is None else tuple(
                f[..., y // flow_scale:(y + th) // flow_scale,
                  x // flow_scale:(x + tw) // flow_scale].contiguous() for f in flows)
            out, partials = run(Tile(frames[..., y:y + th, x:x + tw].contiguous(), exposures,
                                     crop, share, frame_sums))
            sums = _add(sums, partials)
            if last:
                acc[y:y + th, x:x + tw] += np.asarray(out)[0].transpose(1, 2, 0) * wt
        frame_sums = sums or None
    return TiledResult((acc / total)[:h, :w], frame_sums or [], len(layout))


def _weight(y: int, x: int, th: int, tw: int, h: int, w: int, overlap: int) -> np.ndarray:
    wy = ramp(th, overlap, y > 0, y + th < h)
    wx = ramp(tw, overlap, x > 0, x + tw < w)
    return (wy[:, None] * wx[None, :])[..., None]


def _add(total: list[Sums] | None, part: list[Sums]) -> list[Sums] | None:
    if not part:
        return total
    if total is None:
        return [tuple(t.clone() for t in p) for p in part]
    if len(total) != len(part):
        raise ValueError(f"a tile reported {len(part)} attention sums, another {len(total)}")
    return [tuple(a + b for a, b in zip(ta, pa)) for ta, pa in zip(total, part)]


def eager_tile_run(model: torch.nn.Module, s: float,
                   budget: tuple[int, int, int] | None = None) -> TileRun:
    """The eager network as a TileRun (frame-wide statistics through `framestats`); `budget`
    selects the bucket policy, as an exported tile program runs it."""
    def run(t: Tile) -> tuple[np.ndarray, list[Sums]]:
        with torch.no_grad(), frame_statistics(t.share, t.given) as record:
            out = model(t.frames, t.exposures, s=s, budget=budget, flows=t.flows)
        return out.cpu().numpy(), record.partials
    return run


def network_align(flow_scale: int) -> int:
    """Tile alignment for the network: its padding multiple and the flows' scale."""
    return math.lcm(PAD_MULTIPLE, flow_scale)
