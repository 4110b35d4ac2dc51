"""FGMA's eager layouts (`FGMA.eager_rows`, the default for eager calls): the same tiles,
windows and arithmetic as the exported graph's layout (`fgma_graph.py`), moved by `tile_rows`'
gathers and writes, with work proportional to the selected tiles. Tests hold the two equal.
"""
from __future__ import annotations

import torch

from . import tile_rows
from .fgma_graph import chunks, zeros
from .fgma_mask import tile_grid


class RowLayout:
    """FGMA's attention on the eager layouts. A base of `FGMA`, which provides the attention
    itself (`_query_side`, `_attend_qk1`, `_attend_tiles`) and the sizes."""

    def _attend_rows(self, current: torch.Tensor, warped: torch.Tensor, mask: torch.Tensor,
                     ids: torch.Tensor | None, project: bool = True,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """`attend` on the eager layouts (`tile_rows`): the same tiles, windows and arithmetic,
        so the same numbers, with work proportional to the selected tiles."""
        num, c, h, w = warped.shape
        t, per = self.tile, num // current.shape[0]
        a, b = tile_grid(h, w, t)
        grid = (num, a, b)
        if ids is not None and ids.numel() == 0:
            return zeros(warped, c), zeros(warped, 1)
        r, parts = self.window // 2, []
        if ids is None:  # every tile: channels-last tables, one index_select per halo
            attended = self._every_tile_rows(current, warped, mask, project)
        else:  # selected tiles: gathered where they lie, no table of the whole map
            for part in chunks(ids, self.tile_chunk):
                at = tile_rows.tile_coords(part, grid, t, 0, t)
                item, rows, cols = at
                halos = tile_rows.gather_halo(
                    warped, tile_rows.tile_coords(part, grid, t, r, self.halo), tile_rows.NEG)
                values = self._attend_tiles(
                    tile_rows.gather_block(current, (item // per, rows, cols)), halos,
                    project=project)
                parts.append((values * tile_rows.gather_block(mask, at), at))
            attended = tile_rows.place_tiles(warped, parts, grid, t)
        executed = mask if ids is None else mask * tile_rows.selected_area(mask, ids, grid, t)
        return attended, executed

    def _every_tile_rows(self, current: torch.Tensor, warped: torch.Tensor,
                         mask: torch.Tensor, project: bool = True) -> torch.Tensor:
        """F_att of every tile on the eager layouts. The query side runs once per frame and is
        read by each of its neighbours (a frame's tiles are every neighbour's queries); each
        halo is one `index_select` of the channels-last key map, at row indices computed once
        for all neighbours.

        Tiles whose halo lies inside the image (`tile_rows.inner_tiles`) see no border key, so
        their attention leaves out the bias channel: head size C instead of C + 1 in torch's
        fused kernel (level 1 of `tiny`, 512 tiles, one thread: 4.4 ms against 5.2 ms). They run
        in chunks of whole rows of that inner block, from a copy of its queries made once per
        frame; the ring of border tiles around it keeps the bias channel and runs as one call
        per chunk of its four sides. Without autograd each block's result is written straight
        into the (N, C, H, W) map, M applied on the way, instead of into a table of every tile
        that is untiled and transposed afterwards."""
        num, c, h, w = warped.shape
        t, per = self.tile, num // current.shape[0]
        a, b = tile_grid(h, w, t)
        grid, dev = (num, a, b), warped.device
        qk = self._query_side(tile_rows.tiles(current, t), None, c - self.channels)
        qk = qk.view(-1, a * b, t, t, c + 1)
        masks = tile_rows.tiles(mask, t).view(num, a, b, t, t, 1)
        r = self.window // 2
        size = ((a + 1) * t, (b + 1) * t)
        keys = tile_rows.key_buffer(warped, r, *size).view(num, -1, c)
        bias = tile_rows.border_bias(h, w, r, *size, tile_rows.NEG, warped)
        (i0, i1), (j0, j1) = inner = tile_rows.inner_tiles(h, w, t, r)
        if 4 * (i1 - i0) * (j1 - j0) < 3 * a * b:
            # Split only where the ring is thin: otherwise its extra calls cost more than the
            # smaller heads save (interleaved A/B, 4 neighbours, one thread, split against
            # not: level 2 of `tiny`, 16 x 16 tiles, 23 % ring, 29.3 against 29.9 ms; level 3,
            # 8 x 8 tiles, 44 % ring, 13.9 against 13.0 ms)
            (i0, i1), (j0, j1) = inner = (i0, i0), (j0, j0)
        q_in = qk.view(-1, a, b, t, t, c + 1)[:, i0:i1, j0:j1].reshape(
            qk.shape[0], -1, t, t, c + 1)
        direct = not torch.is_grad_enabled()
        fmap = warped.new_empty(num, c, a * t, b * t) if direct else None
        parts = []
        for inside, pieces in tile_rows.tile_calls(a, b, inner, self.tile_chunk):
            local = torch.cat([tile_rows.block_ids(p, b, dev) for p in pieces])
            rows = tile_rows.halo_index(local, grid, t, self.halo, size)
            if inside:  # one piece: whole rows of the inner block, a slice of its queries
                first, last = (pieces[0][0] - i0) * (j1 - j0), (pieces[0][1] - i0) * (j1 - j0)
                queries, border = q_in[:, first:last], None
            else:  # the ring's bias halos are the same for every neighbour
                queries = qk.index_select(1, local)
                border = bias.index_select(0, rows).view(local.numel(), -1, 1)
            for n in range(num):
                halos = keys[n].index_select(0, rows).view(local.numel(), -1, c)
                if border is not None:
                    halos = torch.cat((halos, border), 2)
                values = self._attend_qk1(queries[n // per], halos, project, inside)
                k = 0
                for y0, y1, x0, x1 in pieces:
                    block = values[k:k + (y1 - y0) * (x1 - x0)]
                    k += block.shape[0]
                    m = masks[n, y0:y1, x0:x1]
                    if not direct:
                        ids = n * a * b + tile_rows.block_ids((y0, y1, x0, x1), b, dev)
                        parts.append((ids, block * m.reshape(-1, t, t, 1)))
                        continue
                    # M applied on the way into the map; a wide block a tile row at a time, so
                    # that a row's results stay in cache while the transposing write reads them
                    # C times (a 17 x 30 tile block of level 1: 1.2 against 2.0 ns per element)
                    block = block.view(y1 - y0, x1 - x0, t, t, c)
                    step = 1 if x1 - x0 > 2 else y1 - y0
                    for y in range(y0, y1, step):
                        ye = min(y1, y + step)
                        torch.mul(block[y - y0:ye - y0].permute(4, 0, 2, 1, 3),
                                  m[y - y0:ye - y0].permute(4, 0, 2, 1, 3),
                                  out=fmap[n, :, y * t:ye * t, x0 * t:x1 * t].view(
                                      c, ye - y, t, x1 - x0, t))
        if not direct:
            ids, values = (torch.cat(x) for x in zip(*parts))
            table = values.new_zeros(num * a * b, t, t, c).index_copy(0, ids, values)
            return tile_rows.untile(table, grid, h, w)
        return fmap if (a * t, b * t) == (h, w) else fmap[:, :, :h, :w]
