"""FGMA's eager tile layout: each selected tile's queries and key halo gathered straight from
the feature maps, and its result written straight into the output.

The exported graph moves tiles through tile-major tables (`FGMA.key_map`, `halo_table`) built
from static slices, because delegates take those and no per-element index arithmetic. Eager
mode need not: a selected tile's t x t queries and g x g halo are one advanced-indexing gather
each (coordinates from the tile id, clamped at the edges; halo positions outside the image get
zero features and the minus-infinity bias, as in the key map), and results land in the output
with one indexed write. Work is proportional to the selected tiles, with no table of the whole
map built first (forward and backward), and the numbers are the graph layout's.
"""
from __future__ import annotations

import torch


def tile_coords(ids: torch.Tensor, grid: tuple[int, int, int], tile: int, offset: int,
                size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Item, row and column indices (broadcasting to (K, size, size)) of the size x size block
    whose top-left corner is `offset` up and left of tile `ids`' top-left corner.

    ids: flat tile ids n * a * b + i * b + j on the (N, a, b) tile grid."""
    _, a, b = grid
    p = ids.long()
    n, rem = p // (a * b), p % (a * b)
    step = torch.arange(size, device=ids.device)
    rows = ((rem // b) * tile - offset).view(-1, 1, 1) + step.view(1, -1, 1)
    cols = ((rem % b) * tile - offset).view(-1, 1, 1) + step.view(1, 1, -1)
    return n.view(-1, 1, 1), rows, cols


def gather_block(fmap: torch.Tensor, coords: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """(N, C, H, W) -> (K, size, size, C) at `coords`, clamped to the map. Positions past the
    bottom/right edge of a query tile read the edge: they are never written out."""
    n, rows, cols = coords
    h, w = fmap.shape[-2:]
    return fmap.permute(0, 2, 3, 1)[n, rows.clamp(0, h - 1), cols.clamp(0, w - 1)]


def gather_halo(warped: torch.Tensor, coords: tuple[torch.Tensor, ...], neg: float,
                ) -> torch.Tensor:
    """(K, g * g, C + 1) key halos: warped features, zero outside the image, and a bias channel
    that is 0 inside and `neg` outside (the same values as `FGMA.key_map`)."""
    _, rows, cols = coords
    h, w = warped.shape[-2:]
    inside = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).unsqueeze(-1)
    feats = gather_block(warped, coords) * inside
    bias = torch.where(inside, 0.0, neg).to(feats.dtype)
    return torch.cat((feats, bias), -1).flatten(1, 2)


def place_tiles(like: torch.Tensor, parts: list[tuple[torch.Tensor, tuple[torch.Tensor, ...]]],
                grid: tuple[int, int, int], tile: int) -> torch.Tensor:
    """(N, C, h, w) map: zero, with each (K, t, t, C) result written at its tiles' coordinates.
    The buffer covers whole tiles, so coordinates need no clamping; tile ids are unique."""
    num, a, b = grid
    h, w = like.shape[-2:]
    c = parts[0][0].shape[-1]
    out = like.new_zeros(num, a * tile, b * tile, c)
    for values, (n, rows, cols) in parts:
        out.index_put_((n, rows, cols), values)
    fmap = out.permute(0, 3, 1, 2)
    return fmap if (a * tile, b * tile) == (h, w) else fmap[:, :, :h, :w]


def selected_area(mask: torch.Tensor, ids: torch.Tensor, grid: tuple[int, int, int],
                  tile: int) -> torch.Tensor:
    """(N, 1, h, w) float: 1 inside the tiles `ids`, 0 elsewhere."""
    num, a, b = grid
    picked = mask.new_zeros(num * a * b).index_fill(0, ids.long(), 1.0).view(num, 1, a, b)
    area = picked.repeat_interleave(tile, 2).repeat_interleave(tile, 3)
    return area[..., :mask.shape[-2], :mask.shape[-1]]
