"""FGMA's mask and tile selection (paper Eq. 4-6): the consistency difference D, the mask M
for a sensitivity s, and the two policies that choose the tiles attention runs in (dynamic for
training and evaluation, fixed-size buckets for export). `dealthdr.model.fgma` uses them."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .layers import positive_step
from .spynet import flow_warp


def consistency_difference(image_t: torch.Tensor, flow_t_to_n: torch.Tensor,
                           flow_n_to_t: torch.Tensor, mean_kernel: torch.Tensor | None = None,
                           ) -> torch.Tensor:
    """Eq. 4-5: D = |L_{t->n->t} - L_t|, averaged over colour channels, (N, 1, H, W) in [0, 1].

    image_t: (N, 3, H, W) L_t, the current frame as captured, one copy per neighbour.
    mean_kernel: (1, 3, 1, 1) constant 1/3 weights (FGMA passes its buffer, so an exported
    graph sees a constant, not a `full` op, and the delegate takes the conv).
    """
    there = flow_warp(image_t, flow_n_to_t, padding_mode="border")
    back = flow_warp(there, flow_t_to_n, padding_mode="border")
    diff = (back - image_t).abs()
    # The channel mean as a 1x1 conv with constant 1/C weights: XNNPACK delegates convs but
    # not a mean over dim 1 (same reason and test as LayerNorm2d).
    if mean_kernel is None:
        mean_kernel = diff.new_full((1, diff.shape[1], 1, 1), 1.0 / diff.shape[1])
    return F.conv2d(diff, mean_kernel)


def attention_mask(d: torch.Tensor, s: float) -> torch.Tensor:
    """Eq. 6 as a float {0, 1} mask. s=0: empty (flow only); s=inf: everywhere (attention only).

    Written as s * D > 0.5 rather than D > 0.5 / s so that s=0 never divides by zero; it is
    monotone in s: a position masked at s is masked at every larger s. The test is computed as
    a float step (`positive_step`), so an exported graph needs no comparison or bool cast.
    """
    if s < 0 or math.isnan(s):
        raise ValueError(f"sensitivity s must be >= 0, got {s}")
    if s == 0:
        return torch.zeros_like(d)
    if math.isinf(s):
        return torch.ones_like(d)
    return positive_step(d * s - 0.5)


def tile_grid(h: int, w: int, tile: int) -> tuple[int, int]:
    """Tiles along each axis of an h x w map (the map is zero-padded to whole tiles)."""
    return -(-h // tile), -(-w // tile)


def tile_max(x: torch.Tensor, tile: int) -> torch.Tensor:
    """(N, 1, H, W) -> (N, 1, a, b): the maximum over each tile (zero padding at the far edges)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % tile, (-w) % tile
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return F.max_pool2d(x, tile, stride=tile)  # an explicit stride: coremltools needs it


def select_dynamic(mask: torch.Tensor, tile: int) -> torch.Tensor:
    """Flat ids (n * a * b + i * b + j) of every tile holding a masked position."""
    return torch.nonzero(tile_max(mask, tile).flatten() > 0).flatten()


# A bucket of at least this share of the tiles takes every tile, by static slices, with no
# selection, gather or scatter. Measured on the exported level-1 branch (XNNPACK, 256x256, C=16,
# 4 neighbours, one thread): selected tiles cost 115 ms + 0.106 ms per tile, every tile 200 ms,
# equal at 0.78 of the tiles. Its output is then exactly the dynamic policy's.
DENSE_FROM = 0.75


def bucket_tiles(k: int, per: int) -> int:
    """Tiles per item a bucket of k runs, out of per: every tile from DENSE_FROM on."""
    return per if k >= DENSE_FROM * per else k


def select_bucket(d: torch.Tensor, k: int, tile: int) -> torch.Tensor | None:
    """Flat ids of the k tiles per item with the largest max D, fixed shapes; None when the
    bucket takes every tile (`bucket_tiles`: the graph then takes all tiles in order)."""
    score = tile_max(d, tile).flatten(1)                               # (N, a*b)
    per = score.shape[1]
    if bucket_tiles(k, per) == per:
        return None
    pos = torch.topk(score, k, dim=1, sorted=False).indices
    # Item offsets as an (N, 1) column added by broadcasting: a (N, k) index table would be
    # folded into a stored constant. int32 because coremltools refuses float indices.
    first = torch.arange(score.shape[0], device=d.device).view(-1, 1) * per
    return (pos + first).reshape(-1).to(torch.int32)
