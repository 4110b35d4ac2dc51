"""FGMA's exported-graph layout (`FGMA.eager_rows` False, and every traced call).

Tiles move as rows of tiled tables: the query tiles once per frame, M per neighbour, and the
keys either as a halo table built from static slices (every tile taken: no gather, no scatter)
or as four row gathers of the 2x2 block of key tiles starting at a selected tile, scattered back
through a slot map. Every step is tied to the one before (`after_last`), so a delegate holds
one chunk's scores at a time. Eager calls run the same arithmetic on `tile_rows`' layouts
(`FGMA._attend_rows`), which move less data; tests hold the two equal.
"""
from __future__ import annotations

import torch

from . import tile_rows
from .fgma_mask import tile_grid
from .inputs import after, is_tracing


class GraphLayout:
    """FGMA's attention on the graph layout. A base of `FGMA`, which provides the attention
    itself (`_query_keys`, `_attend_qk`, `_attend_tiles`), `key_map` and the sizes."""

    def _attend_graph(self, current: torch.Tensor, warped: torch.Tensor, mask: torch.Tensor,
                      ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """`FGMA.attend` on the graph layout."""
        num, c, h, w = warped.shape
        t, per = self.tile, num // current.shape[0]
        a, b = tile_grid(h, w, t)
        # Query features tiled once per frame, not once per neighbour: a copy per neighbour
        # is a map-sized table (and a portable expand) for what the tile ids can address.
        own, masks = tile_rows.tiles(current, t), tile_rows.tiles(mask, t)
        step = self.graph_chunk if is_tracing() else self.tile_chunk  # bounded memory
        if ids is None:  # every tile, in order: the halo table is the keys, no gather, no scatter
            return self._attend_every_tile(own, masks, mask, warped, step)
        if ids.numel() == 0:
            return zeros(warped, c), zeros(warped, 1)
        # Selected tiles gather their halo as the 2x2 block of key tiles starting at the tile
        # (t + 2r <= 2t): four row gathers from a table the size of the map, where a halo table
        # would be 2.25x the map (for w=5, t=8) whatever the number of selected tiles.
        keys = tile_rows.tiles_last(self.key_map(warped), t)            # (N (a+1) (b+1), ...)
        keys = keys.reshape(keys.shape[0], -1)
        # Its key-grid row, computed in int64 and cast to int32: coremltools computes // and %
        # in fp32 and refuses float gather indices; a cast between two int types survives
        # export (int32 -> int32 would be dropped as a no-op).
        flat = ids.long()
        block = (flat + (flat // (a * b)) * (a + b + 1) + (flat % (a * b)) // b).to(torch.int32)
        frame = tile_rows.frame_tiles(flat, a * b, per).to(torch.int32)
        packed = []
        for part, rows, mine in zip(chunks(ids, step), chunks(block, step),
                                    chunks(frame, step)):
            queries = torch.cat((own.index_select(0, mine), masks.index_select(0, part)), 3)
            packed.append(self._attend_masked(after_last(queries, packed),
                                              self._gather_halos(keys, rows, b)))
        return self._place(cat(packed), ids, num, a, b, h, w)

    def _attend_every_tile(self, own: torch.Tensor, masks: torch.Tensor, mask: torch.Tensor,
                           warped: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The graph layout's every-tile branch: own (B a b, t, t, C) query tiles per frame,
        masks (N a b, t, t, 1) M per neighbour. The query side (Proj_q, W_k) runs once per
        frame and is read by each of its neighbours' chunks, and M travels beside the values
        instead of as a channel of them: every tile is taken, so the executed mask is M and
        the branch moves C channels per map where a concatenated mask channel cost copies of
        the whole query and value tables (counted in the lowered s=15 graph at 256x256: 32 M
        fewer elements through the delegate's slices, concatenations and transposes)."""
        num, c, h, w = warped.shape
        a, b = tile_grid(h, w, self.tile)
        per_item, per = a * b, num // (own.shape[0] // (a * b))
        qk = self._query_keys(own)
        # The halo table is 2.25x the map it is built from (w=5, t=8): built for a group of
        # whole neighbours at a time, each group's just before its attention (measured at
        # s=15, 256x256: all four of level 1's at once were the largest XNNPACK call).
        group = max(1, step // per_item)
        packed = []
        for first, (valid_group, fmap) in enumerate(zip(chunks(masks, group * per_item),
                                                        chunks(warped, group))):
            items = range(first * group, first * group + fmap.shape[0])
            # A full slice would export as `alias`: one frame's table is used as it is.
            query = cat([qk if qk.shape[0] == per_item else
                          qk[(n // per) * per_item:(n // per + 1) * per_item] for n in items])
            for q, valid, keys in zip(chunks(query, step), chunks(valid_group, step),
                                      chunks(self.halo_table(fmap), step)):
                valid = after_last(valid, packed)
                packed.append(self._attend_qk(q, keys, valid) * valid)
        return tile_rows.untile(cat(packed), (num, a, b), h, w), mask

    def _gather_halos(self, keys: torch.Tensor, rows: torch.Tensor, b: int) -> torch.Tensor:
        """(K, g * g, C + E + 1) halos of the tiles whose key blocks start at `rows` of the tiled
        key table (one row per tile of the (a + 1) x (b + 1) key grid)."""
        t, g = self.tile, self.halo
        c1 = keys.shape[1] // (t * t)
        quad = [keys.index_select(0, rows + o).reshape(-1, t, t, c1) for o in (0, 1, b + 1, b + 2)]
        block = torch.cat((torch.cat(quad[:2], 2), torch.cat(quad[2:], 2)), 1)  # (K, 2t, 2t, ..)
        if g < 2 * t:  # a no-op slice would export as `alias` (Core ML refuses)
            block = block[:, :g, :g]
        return block.reshape(-1, g * g, c1)

    def halo_table(self, warped: torch.Tensor) -> torch.Tensor:
        """(N * a * b, g * g, C + 1): per tile, every key its queries can see (the tile grown by
        r on each side, g = t + 2r), channels last, with an additive bias channel that is 0
        inside the image and minus infinity outside. Built from static slices of the key map
        (rows of tile i and the first 2r rows of tile i + 1, then the same for columns); used
        when every tile is taken, where it is exactly the keys."""
        num, c, h, w = warped.shape
        t, r, g = self.tile, self.window // 2, self.halo
        a, b = tile_grid(h, w, t)
        fmap = self.key_map(warped).reshape(num, (a + 1) * t, b + 1, t, c + 1)
        cols = torch.cat((fmap[:, :, :b], fmap[:, :, 1:, :2 * r]), 3)   # (N, H', b, g, C+1)
        rows = cols.reshape(num, a + 1, t, b * g * (c + 1))
        rows = torch.cat((rows[:, :a], rows[:, 1:, :2 * r]), 2)          # (N, a, g, b g (C+1))
        rows = rows.reshape(num * a, g, b, g * (c + 1)).permute(0, 2, 1, 3)  # 5-D at most
        return rows.reshape(num * a * b, g * g, c + 1)

    def _attend_masked(self, queries: torch.Tensor, halos: torch.Tensor) -> torch.Tensor:
        """The graph layout's tiles: queries (K, t, t, C + 1) features and M -> (K, t, t, C + 1)
        F_att * M and M, what `_place` and `_untile` move."""
        c = self.channels
        valid = queries[..., c:]
        values = self._attend_tiles(queries[..., :c], halos, valid)
        return torch.cat((values * valid, valid), 3)

    def _place(self, packed: torch.Tensor, ids: torch.Tensor, num: int, a: int, b: int,
               h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Scatter K tiles of (t, t, C + 1) into a zero tile map, as a gather.

        A slot map holds, per tile, 1 + the index of the selected tile placed there, or 0;
        the map is then one `index_select` from [zero row; rows]. That is one int32 scatter of
        K entries instead of a scatter of K tiles of floats, and it is out of place: an in-place
        write into a view is invisible to graph passes that copy the target (pt2e put a
        quantize/dequantize pair after a zero map, the write landed in the dropped original,
        and int8 graphs lost their attention branch). Tile ids are unique in both policies."""
        rows = packed.reshape(packed.shape[0], -1)
        # Everything derived from tensors, nothing from `zeros`/`arange` of static shape: an
        # exporter folds those into stored constants (see `zeros`). Int64 scatter indices:
        # torch and ONNX ScatterElements take no other type.
        empty = (rows[:1, :1] * 0).to(torch.int32).expand(num * a * b, 1).reshape(-1)
        slot = empty.scatter(0, ids.long(), torch.cumsum(ids * 0 + 1, 0, dtype=torch.int32))
        tiles = torch.cat((rows[:1] * 0.0, rows)).index_select(0, slot)
        return _untile(tiles.reshape(-1, *packed.shape[1:]), num, a, b, h, w)


def _untile(tiles: torch.Tensor, num: int, a: int, b: int, h: int, w: int,
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N a b, t, t, C + 1) -> F_att (N, C, h, w) and the executed mask (N, 1, h, w)."""
    fmap = tile_rows.untile(tiles, (num, a, b), h, w)
    return fmap[:, :-1], fmap[:, -1:]


def after_last(x: torch.Tensor, done: list[torch.Tensor]) -> torch.Tensor:
    """x computed after the last of `done` in exported graphs (see `_attend_tiles`)."""
    return after(x, done[-1]) if done else x


def chunks(x: torch.Tensor, step: int) -> list[torch.Tensor]:
    """`x` split along dim 0 into pieces of `step` rows; whole when it fits (a full slice would
    export as `alias`). Slices, not `split`: XNNPACK takes slices, while `split` exports as a
    portable copy of every piece."""
    n = x.shape[0]
    return [x] if step >= n else [x[i:i + step] for i in range(0, n, step)]


def cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def zeros(like: torch.Tensor, channels: int) -> torch.Tensor:
    """Zeros shaped like the first `channels` channels of `like`, computed from it: an exporter
    folds a `zeros_like` of static shape into a stored constant (14.6 MB of zeros per Core ML
    function at 256x256 for the tiny variant), while `x * 0` costs one pass and no storage."""
    part = like if channels == like.shape[1] else like[:, :channels]  # a full slice exports
    return part * 0.0                                                  # as `alias` (rejected)
