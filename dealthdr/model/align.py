"""FGMA's output as its parts, and the 1x1 projection that reads it (Fig. 2: the aligned
neighbours enter the frame history router through a 1x1 convolution of Concat(F_flow, M, F_att)).

A 1x1 convolution of a concatenation is the sum of the convolutions of its parts, so eager
inference never builds the concatenation: at `tiny`'s level 1 at 256x256 (4 neighbours, one
thread) it is a 35 MB map, and concatenating then convolving took 22.9 ms against 5.8 ms for the
parts. Exported graphs and training keep the concatenation and one convolution (one op for a
delegate and for the quantizer; autograd through `torch.cat` and `conv2d`).

F_att arrives before FGMA's value projection (`Aligned.value`): W_v and b_v are linear and M is
a per-position scalar, so they fold into this projection's F_att and M weights as C x C
products, and the map never passes through W_v (at 256x256, one thread: the FGMA forward of
`tiny` at s=15 163 -> 151 ms, Table G's breakdown).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class Aligned(NamedTuple):
    """Concat(F_flow, M, F_att) as its parts: F_flow (N, C, H, W), M (N, 1, H, W) and F_att
    (N, C, H, W), or None where no attention ran (zeros). With `value`, `attended` is F_att
    before FGMA's value projection, M * sum_j a_j f_j, and F_att = W_v attended + b_v M: the
    projection below folds W_v into its own weights, so the map never goes through it."""
    flow: torch.Tensor
    mask: torch.Tensor
    attended: torch.Tensor | None
    value: nn.Linear | None = None


class AlignProjection(nn.Conv2d):
    """1x1 convolution of FGMA's output, 2C + 1 -> C channels; takes the concatenation as one
    tensor or its `Aligned` parts (the same weights, the same result up to float rounding)."""

    def __init__(self, channels: int) -> None:
        super().__init__(2 * channels + 1, channels, 1)

    def forward(self, x: torch.Tensor | Aligned) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            return super().forward(x)
        flow, mask, attended, value = x
        n, c, h, w = flow.shape
        weight = self.weight.view(self.out_channels, -1)
        w_att, w_mask = weight[:, c + 1:], weight[:, c]
        if value is not None:
            # W_att (W_v a + b_v M) = (W_att W_v) a + (W_att b_v) M: C x C products instead of
            # a pass of W_v over the map (at every position, masked or not).
            w_att, w_mask = w_att @ value.weight, w_mask + w_att @ value.bias
        # (N, C_out, HW) accumulated in place: bias + W_flow F_flow + W_att F_att + w_M M.
        # `out=` rather than `baddbmm_`: torch's FLOP counter (Table G) sees only the former.
        out = torch.baddbmm(self.bias.view(1, -1, 1), weight[:, :c].expand(n, -1, -1),
                            flow.reshape(n, c, h * w))
        if attended is not None:
            torch.baddbmm(out, w_att.expand(n, -1, -1), attended.reshape(n, c, h * w), out=out)
        out.addcmul_(w_mask.view(1, -1, 1), mask.reshape(n, 1, h * w))
        return out.view(n, -1, h, w)
