"""Flow-Guided Masked Attention (FGMA, paper §3.3, Eq. 4-8), sparse by tiles, dense inside them.

Per neighbour n of the current frame t, at one decoder level:
  D = |warp(warp(L_t, O_{n->t}), O_{t->n}) - L_t|           (Eq. 4-5, forward-backward check)
  M = s * D > 0.5 (D in [0, 1], i.e. s * D/255 > 0.5 in 8-bit units)   (Eq. 6)
  F_flow = warp(F_n, O_{t->n})
  F_att at masked positions = softmax(q k^T / sqrt(d)) v       (Eq. 7-8)
  out = Concat(F_flow, M, F_att)

Each query attends to a w x w window of the flow-warped neighbour feature around its own
position. Attention runs on whole tiles of t x t positions: a tile is selected when it holds a
masked position, and masked positions inside selected tiles get the attention result while the
others are zeroed, so the output is exactly Eq. 7-8 at M. Every key the queries of a tile can
see lies in its halo, the tile grown by r = w // 2 on each side (g = t + 2r), which is the corner
of the 2x2 block of key tiles starting at the tile: a selected tile's keys arrive as four row
gathers on a tiled layout (when every tile is taken, a halo table built from static slices is
the keys, with no gather at all), and the attention of its t*t queries is dense work: one
batched matmul gives queries their scores against a contiguous slice of halo rows, a constant
band bias keeps each query's w x w window, and a softmax and a second matmul give the values.
Each step takes half a tile's query rows ((t/2 + w - 1) * g scores per query where w^2 are
needed; `_attend_tiles` has the measurements): exported graphs as two matmuls and a softmax
per chunk of tiles, ops every delegate runs well, instead of per-pixel gathers;
eager calls as torch's fused attention kernel, which keeps no score matrix. Either way the
work is dense, and the cost is a fixed amount per selected tile, so the branch is linear in the
number of selected tiles.

Key and value projections are folded into the query side, exactly:
  q . (W_k f + b_k) = (W_k^T q) . f + q . b_k, and the last term is constant over a query's
  window, so softmax ignores it; sum_j a_j (W_v f_j + b_v) = W_v (sum_j a_j f_j) + b_v because
  the weights sum to 1. So keys and values are the warped features themselves.

Two mask policies select the tiles, sharing everything else:
  `budget=None` (dynamic): every tile with a masked position; data-dependent count, for training
    and evaluation.
  `budget=K` (bucket): the K tiles per neighbour with the largest max D (top-K on a max-pool),
    fixed shapes, for export. A tile holds a masked position exactly when s * max D > 0.5, so
    the output equals the dynamic one whenever at most K tiles hold masked positions; when more
    do, the least inconsistent tiles fall back to flow. K = all tiles (s=inf) selects nothing:
    exported graphs then take every tile by static slices, with no gather or scatter at all.

Exported graphs move tiles as rows of tiled tables (`fgma_graph.py`: the halo table, row
gathers and a slot-map scatter). Eager calls move the same tiles on `tile_rows`' layouts
(`fgma_rows.py`: per-tile gathers for selected tiles, halo rows of the channels-last key map
when every tile is taken, the bias channel only where a halo crosses the border): identical
arithmetic, less data movement, forward and backward.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import tile_rows
from .align import Aligned
from .fgma_graph import GraphLayout, after_last, zeros
from .fgma_rows import RowLayout
from .fgma_mask import (DENSE_FROM, attention_mask, bucket_tiles, consistency_difference,
                        select_bucket, select_dynamic, tile_grid, tile_max)
from .inputs import after, is_tracing
from .spynet import flow_warp

# The mask and selection functions are FGMA's public API too (they live in fgma_mask.py).
__all__ = ["FGMA", "DENSE_FROM", "attention_mask", "bucket_tiles", "consistency_difference",
           "select_bucket", "select_dynamic", "tile_grid", "tile_max"]

_NEG = tile_rows.NEG


class FGMA(RowLayout, GraphLayout, nn.Module):
    """Flow-guided masked attention for one decoder level, all neighbours in one batch.

    Args:
        channels: feature channels C at this level (also the attention dimension d).
        window: side w of the square neighbour window each query attends to (odd).
        tile: side t of the square tiles attention is selected and computed in; 2 * (w // 2)
            must not exceed it (a tile's halo then lies in a 2x2 block of tiles).
        tile_chunk: tiles processed at once in eager mode (bounds peak memory; no effect on
            the result).
        graph_chunk: the same in exported graphs, whose steps attend several query rows of a
            tile per matmul (t^2 x g^2 scores per tile at once would be 147 MB for the 4096
            tiles of `tiny`'s level 1 at 256x256). Chunks of 1024 tiles: measured on that
            level's exported branch (XNNPACK, one thread, whole tiles per step), peak RSS 285 MB
            instead of 446 MB and 171 ms instead of 188 ms.
        step_rows: query rows of a tile per attention step, a divisor of `tile` (default:
            half the tile, or the tile when it is odd). See `_attend_tiles`.

    Attribute `eager_rows` (default True): eager calls move tiles on the row layout of
    `tile_rows`; False runs the exported graph's layout eagerly (tests compare the two).
    """

    def __init__(self, channels: int, window: int, tile: int = 8, tile_chunk: int = 512,
                 graph_chunk: int = 1024, step_rows: int | None = None) -> None:
        super().__init__()
        if window % 2 == 0 or 2 * (window // 2) > tile:
            raise ValueError(f"window must be odd and 2 * (window // 2) <= tile, got window "
                             f"{window}, tile {tile}")
        if step_rows is None:
            step_rows = tile // 2 if tile % 2 == 0 else tile
        if step_rows < 1 or tile % step_rows:
            raise ValueError(f"step_rows must divide the tile, got {step_rows} for tile {tile}")
        self.channels = channels
        self.window = window
        self.tile = tile
        self.tile_chunk = tile_chunk
        self.graph_chunk = graph_chunk
        self.step_rows = step_rows
        self.eager_rows = True
        self.proj_q = nn.Linear(channels, channels)
        self.proj_k = nn.Linear(channels, channels)
        self.proj_v = nn.Linear(channels, channels)
        self.register_buffer("mean_kernel", torch.full((1, 3, 1, 1), 1.0 / 3), persistent=False)
        self.register_buffer("band", _band_bias(tile, window, step_rows), persistent=False)

    @property
    def out_channels(self) -> int:
        return 2 * self.channels + 1

    @property
    def halo(self) -> int:
        return self.tile + 2 * (self.window // 2)

    def attend(self, current: torch.Tensor, warped: torch.Tensor, mask: torch.Tensor,
               ids: torch.Tensor | None, project: bool = True,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Windowed cross-attention in the selected tiles, and the executed mask.

        current: (B, C, H, W) query features, one map per group of N / B neighbours (no copy per
        neighbour); warped: (N, C, H, W) flow-warped neighbour features, batch-major; mask:
        (N, 1, H, W) M; ids: flat tile ids from
        `select_dynamic` / `select_bucket`, or None for every tile. Returns F_att (N, C, H, W),
        zero outside M and outside the selected tiles, and the executed mask (N, 1, H, W): M in
        the selected tiles. The two tables are the branch's O(H*W) steps, paid once per call
        whatever the number of tiles; everything else is O(selected tiles). `project` False
        (eager layouts only) leaves out the value projection: F_att is then M * sum_j a_j f_j,
        for a caller that folds W_v into what it applies next (`Aligned.value`).
        """
        if self.eager_rows and not is_tracing():
            return self._attend_rows(current, warped, mask, ids, project)
        if not project:
            raise ValueError("the graph layout always applies the value projection")
        return self._attend_graph(current, warped, mask, ids)

    def key_map(self, warped: torch.Tensor) -> torch.Tensor:
        """(N, (a + 1) t, (b + 1) t, C + 1), channels last: the warped features and a bias
        channel (0 inside the image, minus infinity outside), padded by r at the top-left and
        grown to whole tiles plus one at the bottom-right, so that every tile's halo lies in the
        2x2 block of tiles starting at it. Channels last from the start: in exported graphs the
        warp's row gathers leave F_flow channels last, and where the key map is built from the
        whole warped map (selected tiles) the permute back to (N, C, H, W) and this one cancel
        (`dealthdr.export.rewrites`); a pad in (N, C, H, W) would sit between them. The
        every-tile graph builds it per group of neighbours from a slice, which still does."""
        num, c, h, w = warped.shape
        t, r = self.tile, self.window // 2
        a, b = tile_grid(h, w, t)
        pad = (0, 0, r, (b + 1) * t - w - r, r, (a + 1) * t - h - r)
        feats = F.pad(warped.permute(0, 2, 3, 1), pad)
        border = F.pad(zeros(warped, 1).permute(0, 2, 3, 1), pad, value=_NEG)
        return torch.cat((feats, border), 3)

    def _attend_tiles(self, queries: torch.Tensor, halos: torch.Tensor,
                      mask: torch.Tensor | None = None, project: bool = True) -> torch.Tensor:
        """Attention of every query of K tiles over its window.

        queries: (K, t, t, C) features; halos: (K, g * g, C + 1) keys and bias; mask: the
        tiles' M (K, t, t, 1) where the graph has it. Query rows y .. y + R - 1 of a tile see
        halo rows y .. y + R + w - 2, one contiguous slice of keys: one matmul per step gives
        those R t queries their scores there (the border bias comes in through a constant-1
        query channel), and a constant band bias keeps each query's w x w window. R =
        `step_rows`: 1 (row by row) scores w g keys per query where w^2 are needed, R = t (the
        tile at once) g^2: more arithmetic in fewer, larger ops. Measured at level-1 shapes
        (4096 tiles, C=16, w=5, t=8, one thread): XNNPACK, medians of 12 interleaved runs of
        the exported branch, R=8 190 ms, R=4 168 ms, R=2 166 ms; so half a tile per step,
        (R + w - 1) g = 96 keys per query instead of 144, two steps, a third of the scores
        alive. Torch eager runs the steps as the heads of one `scaled_dot_product_attention`
        call (fused: no score matrix in memory, forward or backward), R=4 76 ms against
        89-94 ms at R=2 and 87-99 ms at R=8, and 92-103 ms for the bmm/softmax/bmm form row
        by row (one call per step then); the whole
        FGMA forward + backward of a training batch (4 x 4 neighbours, 64x64, C=16) 110 ms
        against that form's 148 ms.
        Returns F_att (K, t, t, C) at every query of the tiles (the caller applies M); without
        `project`, before the value projection (eager calls only). Halos of C + E + 1 channels
        carry E value-only channels (`FGMA.forward`'s `pixels`) after the features: their
        attention-weighted sums follow F_att, (K, t, t, C + E).
        """
        extra = halos.shape[-1] - 1 - self.channels
        return self._attend_qk1(self._query_side(queries, mask, extra), halos, project)

    def _query_side(self, queries: torch.Tensor, mask: torch.Tensor | None,
                    extra: int = 0) -> torch.Tensor:
        """(K, t, t, C) query features -> `_with_one(_query_keys(queries), mask, extra)`. Eager
        calls (no M: the constant-1 channel is a constant) compute it as one matrix product
        with W_q, W_k and the scale folded into a C x (C + E + 1) matrix whose last E + 1
        columns are zero, and a bias whose last entry is 1: one pass over the tiles instead of
        a product, a second product, a scaling pass and a concatenation."""
        if mask is not None or is_tracing():
            return self._with_one(self._query_keys(queries), mask, extra)
        c, scale = self.channels, self.channels ** -0.5
        weight = (self.proj_q.weight.t() @ self.proj_k.weight) * scale
        bias = (self.proj_q.bias @ self.proj_k.weight) * scale
        weight = torch.cat((weight, weight.new_zeros(c, extra + 1)), 1)
        bias = torch.cat((bias, bias.new_zeros(extra), bias.new_ones(1)))
        rows = torch.addmm(bias, queries.reshape(-1, c), weight)
        return rows.view(*queries.shape[:-1], c + extra + 1)

    def _query_keys(self, queries: torch.Tensor) -> torch.Tensor:
        """(K, t, t, C) query features -> Proj_q(q) W_k / sqrt(d), what meets the raw keys."""
        q = _rowwise(self.proj_q, queries)                              # Eq. 7, Proj_q
        return (q @ self.proj_k.weight) * (self.channels ** -0.5)       # W_k folded in

    def _attend_qk(self, qk: torch.Tensor, halos: torch.Tensor,
                   mask: torch.Tensor | None) -> torch.Tensor:
        """`_attend_tiles` from the query side `_query_keys` on."""
        extra = halos.shape[-1] - 1 - self.channels
        return self._attend_qk1(self._with_one(qk, mask, extra), halos)

    @staticmethod
    def _with_one(qk: torch.Tensor, mask: torch.Tensor | None, extra: int = 0) -> torch.Tensor:
        """(K, t, t, C) -> (K, t, t, C + E + 1): E zero channels, which leave the scores alone
        while the keys' value-only channels (`FGMA.forward`'s `pixels`) ride along as values,
        and a constant-1 channel that picks up the keys' border bias. Derived from M in
        exported graphs: M stays float under int8 (a mask statistic), while a constant computed
        from the quantized qk gets a degenerate int8 range and the XNNPACK program fails to
        load."""
        one = (qk[..., :1] if mask is None else mask) * 0.0 + 1.0
        if not extra:
            return torch.cat((qk, one), 3)
        return torch.cat((qk, one.expand(*one.shape[:-1], extra) * 0.0, one), 3)

    def _attend_qk1(self, qk: torch.Tensor, halos: torch.Tensor, project: bool = True,
                    inside: bool = False) -> torch.Tensor:
        """`_attend_tiles` from `_with_one`'s (K, t, t, C + E + 1) query side on; `project` False
        returns the weighted sums before W_v and b_v, and `inside` (tiles whose halo holds no
        border key, so their bias channel is zero) leaves that channel out of the attention
        (both eager calls only). Returns (K, t, t, C + E): F_att and the E value-only sums."""
        t, c, g, w = self.tile, self.channels, self.halo, self.window
        k, step, band = qk.shape[0], self.step_rows, self.band
        e = qk.shape[-1] - 1 - c
        if not is_tracing():
            # Eq. 8 as one call of torch's fused kernel, which keeps no score matrix: the steps
            # are its heads, each step's keys an overlapping window of the halo rows (a view,
            # no copy), and the heads' outputs are the tile's rows in order, so no
            # concatenation. Level-1 shapes of `tiny` (512 tiles, one thread): 5.2 ms against
            # 5.8 ms for one call per step and the concatenation.
            d = c + e if inside else c + e + 1  # views: slicing the channels copies nothing
            keys = halos[..., :d].unfold(1, (step + w - 1) * g, step * g).transpose(2, 3)
            rows = qk[..., :d].reshape(k, t // step, step * t, d)
            out = F.scaled_dot_product_attention(rows, keys, keys, attn_mask=band, scale=1.0)
            return self._values(out.reshape(k, t, t, d), e, project)
        parts = []
        # Exported graphs: only one step's scores are alive at a time, by tying each step (and
        # each chunk, in `fgma_graph`) to the one before. A delegate
        # partitioner re-sorts the nodes it fuses breadth-first, so untied steps run as "every
        # step's scores, then every softmax": measured at s=15, 8 score matrices of 12.6 MB
        # alive in one XNNPACK call, whose workspace became the program's largest (190 MB).
        for y in range(0, t, step):
            # Slices, reshapes and bmm rather than integer indexing, `@` and `stack`: those
            # export as select/expand/unsqueeze copies, which XNNPACK does not delegate. A
            # full slice would export as `alias`, which Core ML refuses.
            keys = halos if step == t else halos[:, y * g:(y + step + w - 1) * g]
            rows = after_last(qk if step == t else qk[:, y:y + step], parts)
            rows = rows.reshape(k, step * t, c + e + 1)
            attn = torch.softmax(torch.bmm(rows, keys.transpose(1, 2)) + band, dim=-1)
            out = torch.bmm(attn, keys)                                 # Eq. 8
            parts.append(out.reshape(k, step, t, c + e + 1))
        out = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
        return self._values(out, e, True)

    def _values(self, out: torch.Tensor, extra: int, project: bool) -> torch.Tensor:
        """(K, t, t, >= C + E) attention sums -> F_att (W_v folded out of the keys: applied
        here, or by the caller when not `project`) followed by the E value-only sums."""
        c = self.channels
        feats = _rowwise(self.proj_v, out[..., :c]) if project else out[..., :c]
        return torch.cat((feats, out[..., c:c + extra]), 3) if extra else feats

    def forward(self, current: torch.Tensor, neighbours: torch.Tensor,
                flow_t_to_n: torch.Tensor, flow_n_to_t: torch.Tensor, image_t: torch.Tensor,
                s: float, budget: int | None = None, parts: bool = False,
                pixels: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor | Aligned, torch.Tensor] | tuple[
                    torch.Tensor | Aligned, torch.Tensor, torch.Tensor]:
        """Align T' neighbours to the current frame.

        current: (B, C, H, W) decoder feature F_t^in. neighbours: (B*T', C, H, W) encoder
        features F_n^i, batch-major. flow_t_to_n / flow_n_to_t: (B*T', 2, H, W) at this level.
        image_t: (B, 3, H, W) L_t, frame t as captured (gamma domain, its own exposure), at
        this level. budget: None for the dynamic policy, K tiles per neighbour for the bucket
        policy. Returns
        Concat(F_flow, M, F_att) as (B*T', 2C+1, H, W) and the executed mask (B*T', 1, H, W);
        with `parts`, the concatenation as its `Aligned` parts instead (for `AlignProjection`,
        which never needs it built).

        pixels: (B*T', E, H, W) neighbour images already flow-warped to this level, or None.
        Given, they ride through the attention as value-only channels (the scores are the
        features' alone) and a third result is returned: M * sum_j a_j pixels_j, the
        neighbours' pixels fetched through the attention weights at the executed positions
        and zero elsewhere (what `ExposureMerge` takes in place of the flow warp there).
        """
        per = neighbours.shape[0] // current.shape[0]
        # This level's warps run once its decoder feature exists, and D's corner reads are done
        # before the feature's begin (see `after`).
        flow_t_to_n, flow_n_to_t = after(flow_t_to_n, current), after(flow_n_to_t, current)
        d = None
        if s != 0 and budget != 0 and not math.isinf(s):
            d = consistency_difference(_per_neighbour(image_t, per), flow_t_to_n,
                                       flow_n_to_t, self.mean_kernel)
            flow_t_to_n = after(flow_t_to_n, d)
        warped = flow_warp(neighbours, flow_t_to_n)                 # Eq. 8, F_flow
        if s == 0 or budget == 0:
            mask = zeros(warped, 1)
            out = (Aligned(warped, mask, None) if parts else _concat(warped, mask, None)), mask
            return out if pixels is None else (*out, pixels * 0.0)
        if d is None:  # s = inf: M is everywhere, no D needed, every tile is taken
            mask, ids = zeros(warped, 1) + 1.0, None
        else:
            mask = attention_mask(d, s)
            ids = select_dynamic(mask, self.tile) if budget is None else \
                select_bucket(d, budget, self.tile)
        # Parts on the eager layouts leave W_v to the projection that reads them (`Aligned`).
        raw = parts and self.eager_rows and not is_tracing()
        keys = warped if pixels is None else torch.cat((warped, pixels), 1)
        attended, executed = self.attend(current, keys, mask, ids, project=not raw)
        fetched = None
        if pixels is not None:
            c = self.channels
            attended, fetched = attended[:, :c], attended[:, c:]
        if parts:
            out = Aligned(warped, executed, attended, self.proj_v if raw else None), executed
        else:
            out = _concat(warped, executed, attended), executed
        return out if fetched is None else (*out, fetched)


def _band_bias(tile: int, window: int, rows: int) -> torch.Tensor:
    """(rows * t, (rows + w - 1) * g) additive bias: 0 where halo position (ky, kx) of a step's
    key slice is in the window of query (qy, qx) of its rows (qy <= ky < qy + w,
    qx <= kx < qx + w), minus infinity elsewhere."""
    g = tile + 2 * (window // 2)
    qy = torch.arange(rows).repeat_interleave(tile).view(-1, 1)
    qx = torch.arange(tile).repeat(rows).view(-1, 1)
    ky = torch.arange(rows + window - 1).repeat_interleave(g).view(1, -1)
    kx = torch.arange(g).repeat(rows + window - 1).view(1, -1)
    inside = (ky >= qy) & (ky < qy + window) & (kx >= qx) & (kx < qx + window)
    return torch.where(inside, 0.0, _NEG)


def _concat(warped: torch.Tensor, mask: torch.Tensor,
            attended: torch.Tensor | None) -> torch.Tensor:
    """Concat(F_flow, M, F_att) along channels; F_att None means zeros (no attention). The
    network's inference never builds it (`dealthdr.model.align`); exported graphs, training
    and direct callers of FGMA do."""
    return torch.cat((warped, mask, zeros(warped, warped.shape[1]) if attended is None
                      else attended), dim=1)


def _per_neighbour(x: torch.Tensor, per: int) -> torch.Tensor:
    """Each item of x repeated `per` times, in order. A concat when x holds one item (what
    export sees): `repeat_interleave` exports as a portable expand copy, outside the
    delegate."""
    if x.shape[0] == 1:
        return x if per == 1 else torch.cat([x] * per)
    return x.repeat_interleave(per, 0)


def _rowwise(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` on the rows of x as one 2-D matrix. A linear layer on a channel slice of a
    4-D tile map exports as an expand of its weight to every query row and a batched matmul of
    tiny matrices (2.1 M copied elements per chunk of level-1 tiles); on 2-D rows it is one
    fully connected op."""
    return layer(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], layer.out_features)
