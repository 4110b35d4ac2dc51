"""Small layers shared by the blocks: channel LayerNorm, pixel (un)shuffle resampling, and
delegate-friendly forms of a step function and of replicate padding."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each pixel of an NCHW map (Turtle's norm, with bias).

    The channel means are computed as a 1x1 convolution with constant 1/C weights rather than
    `x.mean(1)`: XNNPACK has no LayerNorm rule and delegates `mean` only over dims (2, 3), so the
    usual forms fall back to slow portable kernels in ExecuTorch. The conv is exact in float
    (tested against nn.LayerNorm to 1e-5).
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("mean_kernel", torch.full((1, channels, 1, 1), 1.0 / channels),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = F.conv2d(x, self.mean_kernel)
        centred = x - mu
        var = F.conv2d(centred * centred, self.mean_kernel)
        y = centred * torch.rsqrt(var + self.eps)
        if self.weight is None:  # affine folded into the convs that read y (`model.fold`)
            return y
        return y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def positive_step(x: torch.Tensor) -> torch.Tensor:
    """1.0 where x > 0, else 0.0, in x's dtype, as min(ceil(relu(x)), 1).

    Equal to `(x > 0).to(x.dtype)` for every non-NaN float (ceil maps (0, 1] to 1), but without
    a bool tensor: XNNPACK delegates neither comparisons nor bool-to-float casts, and their
    portable kernels took 2 ms per 256x256x4 map in the exported graphs (measured), more than
    the rest of the merge. A threshold test `a > b` is `positive_step(a - b)`: float
    subtraction keeps the sign of a - b exactly, so the two agree bit for bit."""
    return torch.ceil(torch.relu(x)).clamp(max=1.0)


def replicate_pad(x: torch.Tensor, r: int) -> torch.Tensor:
    """`F.pad(x, (r, r, r, r), mode="replicate")` for an NCHW map as slices and concatenations.

    torch exports replicate padding as index gathers (portable kernels in ExecuTorch); slices
    and `cat` stay in the delegate. Exactly equal (tests/test_layers.py)."""
    if r == 0:
        return x
    x = torch.cat([x[..., :1]] * r + [x] + [x[..., -1:]] * r, dim=-1)
    return torch.cat([x[..., :1, :]] * r + [x] + [x[..., -1:, :]] * r, dim=-2)


class Downsample(nn.Module):
    """3x3 conv C -> C/2 then PixelUnshuffle(2): half the resolution, twice the channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels // 2, 3, padding=1, bias=False)
        self.shuffle = nn.PixelUnshuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


class Upsample(nn.Module):
    """3x3 conv C -> 2C then PixelShuffle(2): twice the resolution, half the channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels * 2, 3, padding=1, bias=False)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))
