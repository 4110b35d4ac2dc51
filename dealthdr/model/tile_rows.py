"""FGMA's eager tile layout: each selected tile's queries and key halo gathered as rows of
channels-last maps, and its result written back as rows.

The exported graph moves tiles through tile-major tables (`FGMA.key_map`, `halo_table`) built
from static slices, because delegates take those and no per-element index arithmetic. Eager
mode need not: a selected tile's t x t queries and g x g halo are one `index_select` each from a
map laid out as one row of channels per position (the key map already holds the halo's zero
features and minus-infinity bias outside the image, so halo reads need no clamping or masking),
and results land in the output with one `index_copy_`. Rows are contiguous C-vectors, so a
gather moves whole cache lines (an advanced-indexing read of a permuted NCHW view strides
through every channel plane: measured 5.6 ms against 0.64 ms for 512 halos of 12 x 12 x 17 at
one thread). Work is proportional to the selected tiles and the numbers are the graph layout's.
"""
from __future__ import annotations

import torch


def channel_rows(fmap: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N * H * W, C): one contiguous row of channels per position."""
    return fmap.permute(0, 2, 3, 1).reshape(-1, fmap.shape[1])


def block_rows(ids: torch.Tensor, grid: tuple[int, int, int], tile: int, size: int,
               hw: tuple[int, int], per: int = 1, clamp: bool = True) -> torch.Tensor:
    """Flat row indices (K * size * size,) into the `channel_rows` of an (N // per, C, h, w)
    map, of the size x size block at the top-left corner of each tile `ids`.

    ids: flat tile ids n * a * b + i * b + j on the (N, a, b) tile grid; item n reads map
    n // per (one query map per group of neighbours). `clamp`: positions past the bottom/right
    edge read the edge (query tiles that overhang the image; those positions are never
    written out)."""
    _, a, b = grid
    h, w = hw
    p = ids.long()
    n, rem = p // (a * b), p % (a * b)
    step = torch.arange(size, device=ids.device)
    rows = ((rem // b) * tile).view(-1, 1, 1) + step.view(1, -1, 1)
    cols = ((rem % b) * tile).view(-1, 1, 1) + step.view(1, 1, -1)
    if clamp:
        rows, cols = rows.clamp(max=h - 1), cols.clamp(max=w - 1)
    return (((n // per).view(-1, 1, 1) * h + rows) * w + cols).reshape(-1)


def selected_area(mask: torch.Tensor, ids: torch.Tensor, grid: tuple[int, int, int],
                  tile: int) -> torch.Tensor:
    """(N, 1, h, w) float: 1 inside the tiles `ids`, 0 elsewhere."""
    num, a, b = grid
    picked = mask.new_zeros(num * a * b).index_fill(0, ids.long(), 1.0).view(num, 1, a, b)
    area = picked.repeat_interleave(tile, 2).repeat_interleave(tile, 3)
    return area[..., :mask.shape[-2], :mask.shape[-1]]
