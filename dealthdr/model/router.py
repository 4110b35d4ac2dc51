"""Frame history router (Turtle's fusion, §3.2): channel attention whose keys and values span the
current frame and every aligned neighbour, so each output channel is an input-dependent mix of
all frames' channels. Used at the start of the middle block and after FGMA in each decoder level.
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import GatedFeedForward, _pointwise_depthwise, channel_attention, inverse_norms_hw
from .layers import LayerNorm2d


class FrameHistoryRouter(nn.Module):
    """x = x + Route(LN(x), LN(frames)); x = x + GatedFFW(LN(x)).

    Per head the attention matrix is (C/h) x ((T'+1) C/h): the current frame's query channels
    against the key channels of all T'+1 frames. Norm, key and value projections run once on the
    batch of all frames.
    """

    def __init__(self, channels: int, heads: int, expansion: float) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} heads")
        self.heads = heads
        self.norm = LayerNorm2d(channels)
        self.to_q = _pointwise_depthwise(channels)
        self.to_k = _pointwise_depthwise(channels)
        self.to_v = _pointwise_depthwise(channels)
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.project = nn.Conv2d(channels, channels, 1)
        self.norm_ffn = LayerNorm2d(channels)
        self.ffn = GatedFeedForward(channels, expansion)

    def forward(self, x: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) current feature; others: (B*T', C, H, W) neighbours, batch-major."""
        b, c, h, w = x.shape
        per = others.shape[0] // b
        # One window (every export) stacks and picks its frames along the batch as 4-D maps:
        # a 5-D reshape between convolutions makes XNNPACK transpose the maps to NCHW and back.
        if b == 1:
            normed = self.norm(torch.cat((x, others)))
            q = self.to_q(normed[:1])
        else:
            frames = torch.cat((x.unsqueeze(1), others.reshape(b, per, c, h, w)), dim=1)
            normed = self.norm(frames.reshape(b * (per + 1), c, h, w))
            q = self.to_q(normed.reshape(b, per + 1, c, h, w)[:, 0])
        k = self.to_k(normed)
        k_scale = self._head_major(inverse_norms_hw(k), b, per + 1)
        k = self._head_major(k, b, per + 1)
        v = self._head_major(self.to_v(normed), b, per + 1)
        x = x + self.project(channel_attention(q, k, v, self.heads, self.temperature, k_scale))
        return x + self.ffn(self.norm_ffn(x))

    def _head_major(self, t: torch.Tensor, b: int, frames: int) -> torch.Tensor:
        """(B*F, C, H, W) -> (B, heads*F*C/heads, H, W), each head's rows from every frame."""
        _, c, h, w = t.shape
        if self.heads == 1:  # already head-major: a transpose of a unit dim still exports as
            return t.reshape(b, frames * c, h, w)  # a copy of the map (a 6-D XNNPACK transpose)
        t = t.reshape(b, frames, self.heads, c // self.heads, h, w).transpose(1, 2)
        return t.reshape(b, self.heads * frames * (c // self.heads), h, w)
