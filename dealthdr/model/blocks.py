"""Transformer blocks of the encoders, the middle and the decoder (Turtle's, App. C).

Levels 1-2 use the cheap ReducedAttn + FFW block; level 3 and the latent use channel
("transposed") attention + gated FFW. All are pre-norm residual blocks:
x = x + mixer(LN(x)); x = x + ffn(LN(x)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import framestats
from .layers import LayerNorm2d


class ReducedAttention(nn.Module):
    """Conv token mixer: 1x1 C->2C, depthwise 3x3, GELU, 1x1 2C->C, per-channel scale (init 0)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = channels * 2
        self.expand = nn.Conv2d(channels, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.project = nn.Conv2d(hidden, channels, 1)
        # Zero-initialised scale: every block starts as the identity, which keeps deep stacks
        # trainable from scratch. Non-zero after any training step.
        self.scale = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _scaled(self.project(F.gelu(self.dwconv(self.expand(x)))), self.scale)


class FeedForward(nn.Module):
    """FFW: 1x1 C->2C, GELU, 1x1 2C->C, per-channel scale (init 0)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.expand = nn.Conv2d(channels, channels * 2, 1)
        self.project = nn.Conv2d(channels * 2, channels, 1)
        self.scale = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _scaled(self.project(F.gelu(self.expand(x))), self.scale)


def _scaled(x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """x times the layer scale, or x where the scale was folded into the projection."""
    return x if scale is None else x * scale


class GatedFeedForward(nn.Module):
    """Gated FFW: 1x1 C->2h, depthwise 3x3, GELU(x1) * x2, 1x1 h->C with h = expansion * C.

    The two halves come from two separate 1x1 convs rather than one conv and a channel split:
    a quantized channel slice whose output scale differs from its input's is rejected by
    XNNPACK at load time (executorch #21829), and two convs cost exactly the same MACs.
    """

    def __init__(self, channels: int, expansion: float) -> None:
        super().__init__()
        hidden = int(channels * expansion)
        self.value_in = nn.Conv2d(channels, hidden, 1)
        self.gate_in = nn.Conv2d(channels, hidden, 1)
        self.value_dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.gate_dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.project = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = F.gelu(self.gate_dw(self.gate_in(x)))
        return self.project(gate * self.value_dw(self.value_in(x)))


def inverse_norms_hw(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 1, 1): 1 / the L2 norm of each channel over H, W.

    The sum of squares is H*W times a mean over dims (2, 3) of the map as it stands: XNNPACK
    delegates `mean` in that form (4-D, dims (2, 3), keepdim) and runs it on the channels-last
    map a convolution left, where `sum(-1)` of a (.., H*W) view fell back to a portable kernel
    and the mean of a (B*heads, d, H*W, 1) view made the delegate transpose the map first."""
    n = x.shape[-2] * x.shape[-1]
    return torch.rsqrt((x * x).mean(dim=(2, 3), keepdim=True) * n + eps * eps)


def channel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                      temperature: torch.Tensor, k_scale: torch.Tensor | None = None,
                      ) -> torch.Tensor:
    """Restormer-style transposed attention between channel rows.

    q: (B, C, H, W); k, v: (B, Ck, H, W) with Ck a multiple of C/heads. The attention matrix per
    head is (C/heads) x (Ck/heads), so its cost is linear in H*W. Rows are L2-normalised over
    H*W by scaling that matrix, (q_i/|q_i|) . (k_j/|k_j|) = (q_i . k_j) / (|q_i| |k_j|), not the
    maps: no map-sized multiply. k_scale: k's `inverse_norms_hw` where the caller has them from
    before rearranging k (the router's keys are a head-major reshuffle of a convolution's output;
    their mean taken there needs no transpose).
    """
    b, c, h, w = q.shape
    ck = k.shape[1]
    record = framestats.active()
    if record is not None:  # tiled inference: the frame's statistics, not the tile's
        attn = framestats.attend(record, q.reshape(b * heads, c // heads, h * w),
                                 k.reshape(b * heads, ck // heads, h * w), temperature)
        return torch.bmm(attn, v.reshape(b * heads, ck // heads, h * w)).reshape(b, c, h, w)
    k_scale = inverse_norms_hw(k) if k_scale is None else k_scale
    q_scale = inverse_norms_hw(q).reshape(b, heads, c // heads, 1) * temperature
    # 3-D batched matmuls: a 4-D `@` exports as expand + view + bmm, and the expands run as
    # portable copies outside the XNNPACK delegate.
    scores = torch.bmm(q.reshape(b * heads, c // heads, h * w),
                       k.reshape(b * heads, ck // heads, h * w).transpose(1, 2))
    scores = (scores * q_scale.reshape(b * heads, c // heads, 1)
              * k_scale.reshape(b * heads, 1, ck // heads))
    attn = torch.softmax(scores, dim=-1)
    return torch.bmm(attn, v.reshape(b * heads, ck // heads, h * w)).reshape(b, c, h, w)


class ChannelAttention(nn.Module):
    """Multi-head channel attention: q, k, v = depthwise 3x3(1x1 C->C) each, attention over channels.

    Three convs instead of one C->3C conv and a split, for the same quantized-slice reason as
    GatedFeedForward; same MACs.
    """

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} heads")
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.to_q = _pointwise_depthwise(channels)
        self.to_k = _pointwise_depthwise(channels)
        self.to_v = _pointwise_depthwise(channels)
        self.project = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        return self.project(channel_attention(q, k, v, self.heads, self.temperature))


def _pointwise_depthwise(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 1),
                         nn.Conv2d(channels, channels, 3, padding=1, groups=channels))


class ReducedAttnBlock(nn.Module):
    """Levels 1-2 block: x + ReducedAttn(LN(x)), then x + FFW(LN(x))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(channels)
        self.mixer = ReducedAttention(channels)
        self.norm2 = LayerNorm2d(channels)
        self.ffn = FeedForward(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class ChannelAttnBlock(nn.Module):
    """Level 3 / latent block: x + ChannelAttention(LN(x)), then x + GatedFFW(LN(x))."""

    def __init__(self, channels: int, heads: int, expansion: float) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(channels)
        self.mixer = ChannelAttention(channels, heads)
        self.norm2 = LayerNorm2d(channels)
        self.ffn = GatedFeedForward(channels, expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def make_level(level: int, channels: int, depth: int, heads: int,
               expansion: float) -> nn.Sequential:
    """The block stack of one level (1-based; 4 is the latent)."""
    if level <= 2:
        return nn.Sequential(*[ReducedAttnBlock(channels) for _ in range(depth)])
    return nn.Sequential(*[ChannelAttnBlock(channels, heads, expansion) for _ in range(depth)])
