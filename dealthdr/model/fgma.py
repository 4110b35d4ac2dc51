"""Flow-Guided Masked Attention (FGMA, paper §3.3, Eq. 4-8) with attention that is sparse in fact.

Per neighbour n of the current frame t, at one decoder level:
  D = |warp(warp(L_t, O_{n->t}), O_{t->n}) - L_t|           (Eq. 4-5, forward-backward check)
  M = s * D > 0.5 (D in [0, 1], i.e. s * D/255 > 0.5 in 8-bit units)   (Eq. 6)
  F_flow = warp(F_n, O_{t->n})
  F_att at masked positions = softmax(q k^T / sqrt(d)) v       (Eq. 7-8)
  out = Concat(F_flow, M, F_att)

Attention is computed only for the selected query positions: each query attends to a w x w
window of the neighbour feature around its flow-guided position (the window is taken from
F_flow, so a query looks where the flow points and searches +-w/2 around it). Gathering only the
window keeps the cost per query fixed, so the cost of the branch is proportional to the number
of queries, i.e. to the attention ratio R.

Key and value projections are folded into the query side, exactly:
  q . (W_k f + b_k) = (W_k^T q) . f + q . b_k, and the last term is constant over a query's
  window, so softmax ignores it; sum_j a_j (W_v f_j + b_v) = W_v (sum_j a_j f_j) + b_v because
  the weights sum to 1. Per query that is 3 C^2 + 2 w^2 C MACs and nothing per pixel, instead of
  projecting every key of every window (2 w^2 C^2).

Two mask policies select the queries, sharing everything else:
  `budget=None` (dynamic): exactly the masked positions; data-dependent count, for training and
    evaluation.
  `budget=K` (bucket): the K positions with the largest D (top-K), fixed shapes, for export.
    Selected positions outside M are computed but zeroed, so the output equals the dynamic one
    whenever |M| <= K; when |M| > K the least inconsistent masked positions fall back to flow.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .inputs import is_tracing
from .spynet import flow_warp

_NEG = -1e4  # "minus infinity" that stays finite in fp16


def consistency_difference(image_t: torch.Tensor, flow_t_to_n: torch.Tensor,
                           flow_n_to_t: torch.Tensor, mean_kernel: torch.Tensor | None = None,
                           ) -> torch.Tensor:
    """Eq. 4-5: D = |L_{t->n->t} - L_t|, averaged over colour channels, (N, 1, H, W) in [0, 1].

    image_t: (N, 3, H, W) guide image of the current frame, one copy per neighbour.
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
    monotone in s: a position masked at s is masked at every larger s.
    """
    if s < 0 or math.isnan(s):
        raise ValueError(f"sensitivity s must be >= 0, got {s}")
    if s == 0:
        return torch.zeros_like(d)
    if math.isinf(s):
        return torch.ones_like(d)
    return (d * s > 0.5).to(d.dtype)


def select_dynamic(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                torch.Tensor]:
    """Indices (n, y, x) of every masked position, and their validity (all ones)."""
    n, _, y, x = torch.nonzero(mask > 0, as_tuple=True)
    return n, y, x, torch.ones_like(n, dtype=mask.dtype)


def select_bucket(d: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """The k most inconsistent positions of every item (top-k on D), fixed shapes.

    Validity is the mask at the selected positions: an unmasked pick is computed but zeroed.
    """
    num, _, h, w = d.shape
    k = min(k, h * w)
    if k == h * w:  # everything is selected: no sort needed (s=inf buckets)
        pos = torch.arange(h * w, device=d.device).expand(num, -1)
    else:
        pos = torch.topk(d.flatten(1), k, dim=1, sorted=False).indices
    valid = torch.gather(mask.flatten(1), 1, pos)
    # item index per pick, computed from `pos` (an expanded arange is folded into a stored
    # (num, k) constant: 32 MB per Core ML function at 1080p). Not `pos * 0`: pt2e quantizers
    # lift the scalar 0 into a float constant, and an int64 * float product breaks the graph.
    items = torch.arange(num, device=d.device, dtype=torch.int32).view(num, 1)
    n = torch.zeros_like(pos, dtype=torch.int32) + items
    # Explicit int32: coremltools lowers // and % through fp32, and its gather/scatter refuse
    # float indices (int32 covers 1080p: 4 x 1088 x 1928 < 2^31).
    y, x = (pos // w).to(torch.int32), (pos % w).to(torch.int32)
    return n.reshape(-1), y.reshape(-1), x.reshape(-1), valid.reshape(-1)


class FGMA(nn.Module):
    """Flow-guided masked attention for one decoder level, all neighbours in one batch.

    Args:
        channels: feature channels C at this level (also the attention dimension d).
        window: side of the square neighbour window each query attends to (odd).
        query_chunk: queries processed at once in eager mode (bounds peak memory; no effect
            on the result). Exported graphs process all K queries of a bucket at once.
    """

    def __init__(self, channels: int, window: int, query_chunk: int = 16384) -> None:
        super().__init__()
        self.channels = channels
        self.window = window
        self.query_chunk = query_chunk
        self.proj_q = nn.Linear(channels, channels)
        self.proj_k = nn.Linear(channels, channels)
        self.proj_v = nn.Linear(channels, channels)
        self.register_buffer("mean_kernel", torch.full((1, 3, 1, 1), 1.0 / 3), persistent=False)

    @property
    def out_channels(self) -> int:
        return 2 * self.channels + 1

    def window_offsets(self, row: int) -> list[int]:
        """Flat offsets of a window's w*w keys from its top-left corner, in a map of `row` width."""
        return [ky * row + kx for ky in range(self.window) for kx in range(self.window)]

    def key_table(self, warped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded channels-last copy of the warped neighbour features, one key per row, and an
        additive bias that masks the padding. Gathering rows of C contiguous floats is ~2.3x
        faster on CPU than gathering strided channels from NCHW. This copy, the query rows and the
        two output maps are the branch's O(H*W) steps, a fixed overhead paid once per call
        whatever the number of queries."""
        num, c, h, w = warped.shape
        r = self.window // 2
        table = _rows(F.pad(warped, (r, r, r, r)))
        border = F.pad(_zeros(warped, 1), (r, r, r, r), value=_NEG).reshape(-1)
        return table, border

    def attend(self, current: torch.Tensor, warped: torch.Tensor, n: torch.Tensor,
               y: torch.Tensor, x: torch.Tensor, valid: torch.Tensor,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Windowed cross-attention at the selected positions, and the executed mask.

        current: (N, C, H, W) query features (one copy per neighbour); warped: (N, C, H, W)
        flow-warped neighbour features; n, y, x, valid: (Q,) selection. Returns F_att
        (N, C, H, W), zero where no query ran, and the executed mask (N, 1, H, W): `valid` at
        the selected positions. Beyond the key table and the two maps, every step is O(Q),
        with O(Q * (C + w*w)) floats alive (see `_attend_chunk`). Eager mode also processes
        queries in chunks of `query_chunk`; exported graphs take all K of a bucket at once.

        Every gather and scatter is a row operation on a channels-last map (`index_select` of
        C contiguous floats, one int32 scatter for the slot map): in the ExecuTorch portable
        kernels, advanced indexing `current[n, :, y, x]` and a 3-index `index_put` walk every
        element through generic index arithmetic. Measured at 256x256 (tiny, level 1, Q=52k,
        C=16): query gather 62 -> 2.9 ms, the two scatters 64+ -> 4.1 ms.
        """
        num, c, h, w = warped.shape
        r = self.window // 2
        total = n.numel()
        if total == 0:
            return _zeros(warped, c), _zeros(warped, 1)
        table, border = self.key_table(warped)
        flat = (n * h + y) * w + x                                     # query's own position
        corner = (n * (h + 2 * r) + y) * (w + 2 * r) + x              # window's top-left
        offsets = self.window_offsets(w + 2 * r)
        queries = _rows(current).index_select(0, flat)
        step = total if is_tracing() else self.query_chunk
        values = torch.cat([
            self._attend_chunk(queries[i:i + step], table, border, corner[i:i + step], offsets)
            for i in range(0, total, step)])
        return self._place(warped, flat, values * valid.unsqueeze(1), valid)

    @staticmethod
    def _place(like: torch.Tensor, flat: torch.Tensor, values: torch.Tensor,
               valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scatter (Q, C) rows and (Q,) validity into zero maps shaped like `like`, as a gather.

        A slot map holds, per position, 1 + the index of the query placed there, or 0; both
        maps are then one `index_select` from [zero row; rows]. That is one int32 scatter of
        Q entries instead of two scatters of Q * C floats, and it is out of place: an in-place
        write into a view is invisible to graph passes that copy the target (pt2e put a
        quantize/dequantize pair after the zero map, the write landed in the dropped original,
        and every int8 graph silently lost its attention branch: measured). Positions are
        unique in both policies, so no slot is written twice."""
        num, c, h, w = like.shape
        # Everything derived from tensors, nothing from `zeros`/`arange` of static shape: an
        # exporter folds those into stored constants (see `_zeros`). Int64 scatter indices:
        # torch and ONNX ScatterElements take no other type.
        empty = _zeros(like, 1).reshape(-1).to(torch.int32)
        ids = torch.cumsum(flat * 0 + 1, 0, dtype=torch.int32)           # 1..Q
        slot = empty.scatter(0, flat.long(), ids)
        rows = torch.cat((values[:1] * 0.0, values)).index_select(0, slot)
        executed = torch.cat((valid[:1] * 0.0, valid)).index_select(0, slot)
        return (rows.reshape(num, h, w, c).permute(0, 3, 1, 2),
                executed.reshape(num, 1, h, w))

    def _attend_chunk(self, queries: torch.Tensor, table: torch.Tensor, border: torch.Tensor,
                      corner: torch.Tensor, offsets: list[int]) -> torch.Tensor:
        """Attention of Q queries over their windows, one window position at a time: peak
        memory O(Q * (C + w*w)), where gathering whole windows at once is O(Q * w*w * C) (11 GB
        for `tiny` at 1080p, R=0.83, in an exported graph, which cannot chunk Q). Each key row
        is gathered twice (scores, then the weighted sum) so that only one position's keys are
        alive at a time; measured on CPU, as fast as one whole-window gather."""
        c = queries.shape[1]
        q = self.proj_q(queries)                                        # (Q, C)  Eq. 7, Proj_q
        qk = (q @ self.proj_k.weight) * (c ** -0.5)                     # (Q, C)  W_k folded in
        idx = [corner + o for o in offsets]
        scores = torch.stack([(table.index_select(0, i) * qk).sum(1) + border.index_select(0, i)
                              for i in idx], dim=1)                      # (Q, w*w)
        attn = torch.softmax(scores, dim=-1)                            # Eq. 8
        mixed = attn[:, :1] * table.index_select(0, idx[0])
        for j in range(1, len(idx)):
            mixed = mixed + attn[:, j:j + 1] * table.index_select(0, idx[j])
        return self.proj_v(mixed)                                       # W_v folded out

    def forward(self, current: torch.Tensor, neighbours: torch.Tensor,
                flow_t_to_n: torch.Tensor, flow_n_to_t: torch.Tensor, image_t: torch.Tensor,
                s: float, budget: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Align T' neighbours to the current frame.

        current: (B, C, H, W) decoder feature F_t^in. neighbours: (B*T', C, H, W) encoder
        features F_n^i, batch-major. flow_t_to_n / flow_n_to_t: (B*T', 2, H, W) at this level.
        image_t: (B, 3, H, W) guide image of frame t at this level. budget: None for the
        dynamic policy, K for the bucket policy. Returns Concat(F_flow, M, F_att) as
        (B*T', 2C+1, H, W) and the executed mask (B*T', 1, H, W).
        """
        per = neighbours.shape[0] // current.shape[0]
        current_rep = current.repeat_interleave(per, dim=0)
        warped = flow_warp(neighbours, flow_t_to_n)                 # Eq. 8, F_flow
        if s == 0 or budget == 0:
            mask = _zeros(warped, 1)
            return torch.cat((warped, mask, _zeros(warped, self.channels)), dim=1), mask
        d = consistency_difference(image_t.repeat_interleave(per, dim=0), flow_t_to_n,
                                   flow_n_to_t, self.mean_kernel)
        mask = attention_mask(d, s)
        if budget is None:
            n, y, x, valid = select_dynamic(mask)
        else:
            n, y, x, valid = select_bucket(d, mask, budget)
        attended, executed = self.attend(current_rep, warped, n, y, x, valid)
        return torch.cat((warped, executed, attended), dim=1), executed


def _zeros(like: torch.Tensor, channels: int) -> torch.Tensor:
    """Zeros shaped like the first `channels` channels of `like`, computed from it: an exporter
    folds a `zeros_like` of static shape into a stored constant (14.6 MB of zeros per Core ML
    function at 256x256 for the tiny variant), while `x * 0` costs one pass and no storage."""
    part = like if channels == like.shape[1] else like[:, :channels]  # a full slice exports
    return part * 0.0                                                  # as `alias` (rejected)


def _rows(fmap: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N*H*W, C): one row of C contiguous floats per position."""
    return fmap.permute(0, 2, 3, 1).reshape(-1, fmap.shape[1])
