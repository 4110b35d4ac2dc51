"""Encoder of one exposure domain. DeAltHDR has two with independent weights (short, long) at
all three levels: sharing any level costs 0.15-0.59 dB (Table 5)."""
from __future__ import annotations

import torch
from torch import nn

from .blocks import make_level
from .config import DeAltHDRConfig
from .layers import Downsample


class Encoder(nn.Module):
    """Embed (3x3, 6 -> C), then three levels each followed by a pixel-unshuffle Downsample.
    Returns the level 1-3 features and the latent (8C at 1/8 resolution)."""

    def __init__(self, cfg: DeAltHDRConfig) -> None:
        super().__init__()
        dims = [cfg.dim * 2 ** i for i in range(4)]
        self.embed = nn.Conv2d(6, dims[0], 3, padding=1)
        self.levels = nn.ModuleList([
            make_level(i + 1, dims[i], cfg.encoder_blocks[i], cfg.heads[i], cfg.ffn_expansion)
            for i in range(3)])
        self.downs = nn.ModuleList([Downsample(dims[i]) for i in range(3)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        x = self.embed(x)
        for level, down in zip(self.levels, self.downs):
            x = level(x)
            feats.append(x)
            x = down(x)
        feats.append(x)
        return feats
