"""Frame-wide channel-attention statistics for tiled inference.

Channel ("transposed") attention normalises q and k over every position of the image and
correlates them over every position: its (C/h) x (Ck/h) matrix per head is a function of three
sums over positions, G = sum q k^T, |q|^2 = sum q^2 and |k|^2 = sum k^2:

    attn = softmax(temperature * G / (sqrt(|q|^2 + eps^2) sqrt(|k|^2 + eps^2)^T))

A tile of a large frame sees only its own positions, so a tile run alone attends with the
tile's statistics, not the frame's, and the tiles' outputs disagree (measured in
`device_bench tiled`: most of the seam error, with the flows). Sums split over tiles, though.
Inside `frame_statistics(weight, given)` every channel attention of a forward, in call order:

- adds its weighted partial sums (weight = the tile's share of each position, e.g. its blend
  weight over the summed blend weights, so the shares of all tiles sum to 1 everywhere) to
  `partials`;
- attends with the frame's sums `given[i]` when they are given, else with the tile's own.

`dealthdr.tiling.run_tiled` sums the partials of one pass over the tiles and gives them to the
next; the export of a tile program (`export/`) turns `weight`, `given` and `partials` into
program inputs and outputs. Outside the context nothing changes (a plain forward).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .inputs import after

EPS = 1e-6
# (G, |q|^2, |k|^2): (B*heads, d, dk), (B*heads, d), (B*heads, dk)
Sums = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class FrameStatistics:
    weight: torch.Tensor                       # (B, 1, H, W) at the input's resolution
    given: list[Sums] | None = None
    # An exported tile program always takes `given`; mix (1,) = 1 attends with them, 0 with
    # the tile's own sums (its first pass).
    mix: torch.Tensor | None = None
    partials: list[Sums] = field(default_factory=list)


_ACTIVE: ContextVar[FrameStatistics | None] = ContextVar("dealthdr_frame_statistics",
                                                          default=None)


@contextmanager
def frame_statistics(weight: torch.Tensor, given: list[Sums] | None = None,
                     mix: torch.Tensor | None = None):
    """Within the block, channel attention collects weighted partial sums and, when `given`,
    attends with those frame-wide sums (see the module docstring; `mix` blends them with the
    tile's own). Yields the record."""
    record = FrameStatistics(weight, None if given is None else list(given), mix)
    token = _ACTIVE.set(record)
    try:
        yield record
    finally:
        _ACTIVE.reset(token)


def active() -> FrameStatistics | None:
    """The record of the enclosing `frame_statistics` block, None in a plain forward."""
    return _ACTIVE.get()


def attend(record: FrameStatistics, q: torch.Tensor, k: torch.Tensor,
           temperature: torch.Tensor) -> torch.Tensor:
    """Attention matrix of q (B*h, d, N) and k (B*h, dk, N) rows under `record`: the tile's
    weighted partial sums recorded, the frame's sums used where given, else the tile's own.
    temperature: (heads, 1, 1)."""
    weight = _share(record.weight, q.shape[2], q.shape[0])
    partial = _sums(q, k, weight)
    record.partials.append(partial)
    # The partial sums feed only the program's last output, so a partitioner may compute them
    # in a late delegate call and keep every q and k alive until then. Tied here, they are
    # computed first (measured, 256x256 tile program: 214 MB planned untied, 165 MB tied).
    if record.given is None:
        return _after_all(_softmax(_sums(q, k, None), temperature), partial)
    index = len(record.partials) - 1
    if index >= len(record.given):
        raise ValueError(f"{len(record.given)} frame statistics given, but the forward runs "
                         f"more channel attentions")
    if record.mix is None:
        return _after_all(_softmax(record.given[index], temperature), partial)
    own = _sums(q, k, None)
    return _after_all(_softmax(tuple(o + record.mix * (g - o)
                                     for o, g in zip(own, record.given[index])), temperature),
                      partial)


def _after_all(x: torch.Tensor, deps: Sums) -> torch.Tensor:
    for dep in deps:
        x = after(x, dep)
    return x


def pack(sums: list[Sums]) -> torch.Tensor:
    """Every sum flattened into one vector (an exported program's input / output)."""
    return torch.cat([t.reshape(-1) for s in sums for t in s])


def unpack(flat: torch.Tensor, shapes: list[tuple[tuple[int, ...], ...]]) -> list[Sums]:
    """Inverse of `pack` for sums of `shapes` (as `sum_shapes` returns)."""
    out, at = [], 0
    for group in shapes:
        parts = []
        for shape in group:
            n = math.prod(shape)
            parts.append(flat[at:at + n].reshape(shape))
            at += n
        out.append(tuple(parts))
    if at != flat.shape[0]:
        raise ValueError(f"{flat.shape[0]} packed sums for shapes of {at} values")
    return out


def sum_shapes(sums: list[Sums]) -> list[tuple[tuple[int, ...], ...]]:
    return [tuple(tuple(t.shape) for t in s) for s in sums]


def _sums(q: torch.Tensor, k: torch.Tensor, weight: torch.Tensor | None) -> Sums:
    # Means over dims (2, 3) of 4-D views times N, the form XNNPACK delegates (as LayerNorm2d).
    bh, d, n = q.shape
    qw = q if weight is None else q * weight
    g = torch.bmm(qw, k.transpose(1, 2))
    qq = (qw * q).reshape(bh, d, n, 1).mean(dim=(2, 3)) * n
    kw = k if weight is None else k * weight
    kk = (kw * k).reshape(bh, k.shape[1], n, 1).mean(dim=(2, 3)) * n
    return g, qq, kk


def _softmax(sums: Sums, temperature: torch.Tensor) -> torch.Tensor:
    g, qq, kk = sums
    heads = temperature.shape[0]
    inv_q = torch.rsqrt(qq + EPS * EPS).unsqueeze(2)
    inv_k = torch.rsqrt(kk + EPS * EPS).unsqueeze(1)
    scores = (g * inv_q * inv_k).reshape(-1, heads, g.shape[1], g.shape[2]) * temperature
    return torch.softmax(scores.reshape(g.shape), dim=-1)


def _share(weight: torch.Tensor, n: int, rows: int) -> torch.Tensor:
    """The weight map pooled to the feature's resolution, as (rows, 1, N) for the bmm rows."""
    b, _, h, w = weight.shape
    scale = int(round((h * w / n) ** 0.5))
    if scale > 1:
        weight = F.avg_pool2d(weight, scale)
    if weight.shape[-2] * weight.shape[-1] != n:
        raise ValueError(f"share map {h}x{w} does not pool to {n} positions")
    return weight.reshape(b, 1, 1, n).expand(b, rows // b, 1, n).reshape(rows, 1, n)
