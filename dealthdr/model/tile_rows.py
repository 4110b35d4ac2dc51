"""FGMA's tile layouts: the tiling both layouts use (`tiles`, `tiles_last`, `untile`), and how
eager calls take each tile's queries and key halo and put its result back.

The exported graph moves tiles through tile-major tables built from static slices
(`FGMA.key_map`, `halo_table`), because delegates take those and no per-element index
arithmetic. Eager mode need not, and takes tiles two ways:
- selected tiles (`tile_coords`, `gather_block`, `gather_halo`, `place_tiles`): one
  advanced-indexing gather per tile block, coordinates clamped at the edges, halo positions
  outside the image given zero features and the minus-infinity bias as in the key map, and one
  indexed write of the results. Work follows the selected tiles, with no table of the whole map
  (a fresh map-sized table costs its page faults on every call, about 0.35 ms per MB here: built
  for selections too, it made the branch 3.4x slower at 10 % of the tiles).
- every tile (`tiles`, `key_buffer`, `halo_index`, `inner_tiles`, `tile_calls`): the queries
  and the mask tile-major, the keys as the rows of a channels-last feature buffer, so a halo is
  one `index_select` of contiguous C-float rows instead of reads at the (N, C, H, W) maps' plane
  stride, with the border bias (`border_bias`) gathered apart for the tiles whose halo crosses
  the border. At the full-resolution level of `tiny` at 256x256 (one thread) the branch took
  69-88 ms this way against 108-110 ms by per-tile gathers (two measurements on a noisy host,
  before the inner tiles left the bias channel out).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

NEG = -1e4  # "minus infinity" that stays finite in fp16: the key map's border bias


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


def key_buffer(warped: torch.Tensor, r: int, rows: int, cols: int) -> torch.Tensor:
    """The features of `FGMA.key_map` in eager calls: one (N, rows, cols, C) buffer, the warped
    features written once into its interior at offset r and zeros only in the margins, instead
    of two pads and a concatenation, each a pass over the whole map. The bias channel lives
    apart (`border_bias`): it is the same for every neighbour, only border tiles read it, and
    C-float rows without it copy and gather faster (a 16-float row is one cache line)."""
    num, c, h, w = warped.shape
    out = warped.new_empty(num, rows, cols, c)
    for margin in (out[:, :r], out[:, r + h:], out[:, r:r + h, :r], out[:, r:r + h, r + w:]):
        margin.zero_()
    out[:, r:r + h, r:r + w] = warped.permute(0, 2, 3, 1)
    return out


def border_bias(h: int, w: int, r: int, rows: int, cols: int, neg: float,
                like: torch.Tensor) -> torch.Tensor:
    """The bias channel of `FGMA.key_map` for one item, (rows * cols,): 0 where the key map holds
    the h x w image (offset r), `neg` in the margins."""
    out = like.new_full((rows, cols), neg)
    out[r:r + h, r:r + w] = 0.0
    return out.view(-1)


def inner_tiles(h: int, w: int, tile: int, r: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Tile rows [i0, i1) and columns [j0, j1) of an h x w map whose halo (the tile grown by r
    on each side) lies inside the map: their keys carry no border bias. Empty ranges where no
    tile's does."""
    first = -(-r // tile)
    return (first, max(first, (h - r) // tile)), (first, max(first, (w - r) // tile))


def tile_calls(a: int, b: int, inner: tuple[tuple[int, int], tuple[int, int]], chunk: int,
               ) -> list[tuple[bool, list[tuple[int, int, int, int]]]]:
    """How the every-tile eager branch covers an a x b tile grid: (inside, pieces) per attention
    call, pieces being tile blocks (y0, y1, x0, x1). The inner block (`inner_tiles`) runs in
    pieces of whole rows of at most `chunk` tiles (at least one row), one call each; the ring
    around it, its four sides cut the same way, in calls that take consecutive pieces while
    they hold at most `chunk` tiles together."""
    (i0, i1), (j0, j1) = inner
    calls = [(True, [p]) for p in _row_pieces((i0, i1, j0, j1), chunk)]
    ring: list[tuple[int, int, int, int]] = []
    held = 0  # tiles in `ring`
    for side in ((0, i0, 0, b), (i1, a, 0, b), (i0, i1, 0, j0), (i0, i1, j1, b)):
        for piece in _row_pieces(side, chunk):
            tiles = (piece[1] - piece[0]) * (piece[3] - piece[2])
            if ring and held + tiles > chunk:
                calls.append((False, ring))
                ring, held = [], 0
            ring.append(piece)
            held += tiles
    if ring:
        calls.append((False, ring))
    return calls


def _row_pieces(block: tuple[int, int, int, int], chunk: int) -> list[tuple[int, int, int, int]]:
    y0, y1, x0, x1 = block
    if y1 <= y0 or x1 <= x0:
        return []
    step = max(1, chunk // (x1 - x0))
    return [(y, min(y1, y + step), x0, x1) for y in range(y0, y1, step)]


def block_ids(block: tuple[int, int, int, int], b: int, device) -> torch.Tensor:
    """Flat tile ids i * b + j of a tile block (y0, y1, x0, x1), row-major."""
    y0, y1, x0, x1 = block
    return (torch.arange(y0, y1, device=device).view(-1, 1) * b
            + torch.arange(x0, x1, device=device).view(1, -1)).flatten()


def frame_tiles(ids: torch.Tensor, per_item: int, per: int) -> torch.Tensor:
    """Rows of the query tile table (one frame per `per` neighbours, `per_item` tiles each) that
    neighbour tiles `ids` read: the same tile of the neighbour's own frame, int64."""
    p = ids.long()
    return (p // (per_item * per)) * per_item + p % per_item


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
    feats = gather_block(warped, coords)
    bias = torch.where(inside, 0.0, neg).to(feats.dtype)
    if torch.is_grad_enabled():
        return torch.cat((feats * inside, bias), -1).flatten(1, 2)
    # Without autograd both parts go straight into one buffer, instead of a product and a
    # concatenation (level 3 of `tiny`, 172 halos of 64 channels: 2-3 ms of copies)
    out = feats.new_empty(*feats.shape[:-1], feats.shape[-1] + 1)
    torch.mul(feats, inside, out=out[..., :-1])
    out[..., -1:] = bias
    return out.flatten(1, 2)


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
