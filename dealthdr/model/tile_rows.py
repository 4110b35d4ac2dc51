"""FGMA's eager tile layout: each selected tile's queries and key halo taken as rows of
channels-last tables, and its result put back as a row.

The exported graph moves tiles through tile-major tables built from static slices
(`FGMA.key_map`, `halo_table`), because delegates take those and no per-element index
arithmetic. Eager mode need not. Every table here is built once per call with one copy of its
map: the queries and the mask tile-major (`tiles`), the keys as the rows of the channels-last
key map the graph layout tiles too (`FGMA.key_map`: zero features and a minus-infinity bias
channel outside the image). A tile's g x g halo is then one `index_select` of contiguous C + 1
float rows at flat indices (`halo_index`), and the tiles' results are rows of the output's
tile table (`place`). Advanced indexing of the (N, C, H, W) maps at per-position coordinates
reads each channel with the map's plane stride: at the full-resolution level of `tiny` at
256x256 (every tile, one thread) the branch took 108 ms that way, 69 ms with these tables.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def tiles(fmap: torch.Tensor, tile: int) -> torch.Tensor:
    """(N, C, h, w) -> (N a b, t, t, C): tile-major, channels last (a tile's positions and
    channels are one contiguous row, so a tile moves as one row operation), zero-padded to
    whole tiles at the bottom and right (no pad op where the map is whole tiles: XNNPACK
    refuses a quantized no-op pad at load time)."""
    _, _, h, w = fmap.shape
    a, b = -(-h // tile), -(-w // tile)
    if (a * tile, b * tile) != (h, w):
        fmap = F.pad(fmap, (0, b * tile - w, 0, a * tile - h))
    return tiles_last(fmap.permute(0, 2, 3, 1), tile)


def tiles_last(fmap: torch.Tensor, tile: int) -> torch.Tensor:
    """(N, a t, b t, C) channels-last map -> (N a b, t, t, C). At most 5-D on the way: Core ML
    takes no higher rank."""
    num, h, w, c = fmap.shape
    a, b = h // tile, w // tile
    rows = fmap.reshape(num * a, tile, b, tile * c)
    return rows.permute(0, 2, 1, 3).reshape(num * a * b, tile, tile, c)


def untile(table: torch.Tensor, grid: tuple[int, int, int], h: int, w: int) -> torch.Tensor:
    """`tiles` inverted: (N a b, t, t, C) -> (N, C, h, w)."""
    num, a, b = grid
    t, c = table.shape[1], table.shape[-1]
    rows = table.reshape(num * a, b, t, t * c).permute(0, 2, 1, 3)
    fmap = rows.reshape(num, a * t, b * t, c).permute(0, 3, 1, 2)
    # A no-op slice would export as `alias` (Core ML refuses).
    return fmap if (a * t, b * t) == (h, w) else fmap[:, :, :h, :w]


def halo_index(ids: torch.Tensor, grid: tuple[int, int, int], tile: int, halo: int,
               size: tuple[int, int]) -> torch.Tensor:
    """Flat row indices (K * g * g,) of the g x g halos of tiles `ids` (flat ids
    n * a * b + i * b + j on the (N, a, b) grid), row-major within each halo, into the rows of
    an (N, H', W', C + 1) key map of size (H', W') whose top-left is padded by the window
    radius (`FGMA.key_map`): tile (i, j)'s halo starts at (i t, j t) there."""
    _, a, b = grid
    height, width = size
    p = ids.long()
    n, rem = p // (a * b), p % (a * b)
    corner = n * (height * width) + (rem // b) * tile * width + (rem % b) * tile
    step = torch.arange(halo, device=ids.device)
    offsets = (step.view(-1, 1) * width + step.view(1, -1)).reshape(-1)
    return (corner.view(-1, 1) + offsets.view(1, -1)).reshape(-1)


def place(parts: list[torch.Tensor], ids: torch.Tensor | None, count: int) -> torch.Tensor:
    """A (count, t, t, C) tile table: the rows of `parts` (concatenated) at tiles `ids`, zero
    elsewhere; with `ids` None the parts are every tile in order. Out of place, so autograd
    sees one `index_copy`."""
    rows = parts[0] if len(parts) == 1 else torch.cat(parts)
    if ids is None:
        return rows
    return rows.new_zeros(count, *rows.shape[1:]).index_copy(0, ids.long(), rows)


def selected_area(mask: torch.Tensor, ids: torch.Tensor, grid: tuple[int, int, int],
                  tile: int) -> torch.Tensor:
    """(N, 1, h, w) float: 1 inside the tiles `ids`, 0 elsewhere."""
    num, a, b = grid
    picked = mask.new_zeros(num * a * b).index_fill(0, ids.long(), 1.0).view(num, 1, a, b)
    area = picked.repeat_interleave(tile, 2).repeat_interleave(tile, 3)
    return area[..., :mask.shape[-2], :mask.shape[-1]]
