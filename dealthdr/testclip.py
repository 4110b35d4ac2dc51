"""A deterministic built-in clip: an alternating-exposure window with global and local motion.

Used by `dealthdr profile` and the tests, so they need no data on disk. It is procedural (not the
real-radiance synthesis of dealthdr.data): a smooth HDR texture with a bright light pans
globally while an occluding patch moves against it, rendered at short (1) and long (8) exposure
with clipping and noise.
"""
from __future__ import annotations

import math

import torch


def _texture(h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """Smooth random HDR texture (3, h, w): sum of random sinusoids plus a bright light."""
    ys = torch.arange(h, dtype=torch.float64).view(h, 1)
    xs = torch.arange(w, dtype=torch.float64).view(1, w)
    img = torch.zeros(3, h, w, dtype=torch.float64)
    for _ in range(12):
        fy, fx = (torch.rand(2, generator=gen, dtype=torch.float64) - 0.5) * 0.5
        phase = torch.rand(1, generator=gen, dtype=torch.float64) * 2 * math.pi
        colour = torch.rand(3, 1, 1, generator=gen, dtype=torch.float64)
        img += colour * (1 + torch.sin(fy * ys + fx * xs + phase))
    img = img / img.max() * 0.12
    cy, cx = h * 0.3, w * 0.7
    light = torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * (0.06 * min(h, w)) ** 2))
    return (img + 0.8 * light).float()


def make_clip(height: int = 256, width: int = 256, frames: int = 5, centre_long: bool = False,
              ratio: float = 8.0, noise: float = 0.01, seed: int = 0,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (ldr (1, T, 3, H, W) in [0, 1], exposures (1, T), hdr of the centre (1, 3, H, W)).

    HDR is in the short exposure's units; short frames see hdr, long frames hdr * ratio.
    """
    gen = torch.Generator().manual_seed(seed)
    margin = 4 * frames + 16
    bg = _texture(height + 2 * margin, width + 2 * margin, gen)
    fg = _texture(height // 3, width // 3, gen) * 0.5 + 0.02
    centre = frames // 2
    ldr, exposures, hdr_centre = [], [], None
    for t in range(frames):
        dy, dx = round(1.5 * (t - centre)), round(2.5 * (t - centre))
        hdr = bg[:, margin + dy:margin + dy + height, margin + dx:margin + dx + width].clone()
        oy, ox = height // 3 - 2 * (t - centre), width // 4 + 4 * (t - centre)
        y0, x0 = max(oy, 0), max(ox, 0)
        y1, x1 = min(oy + fg.shape[1], height), min(ox + fg.shape[2], width)
        if y1 > y0 and x1 > x0:  # the occluder moves against the pan (local motion)
            hdr[:, y0:y1, x0:x1] = fg[:, y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        is_long = (t % 2 == centre % 2) == centre_long
        exposure = ratio if is_long else 1.0
        linear = hdr * exposure
        linear = linear + noise * torch.randn(linear.shape, generator=gen) * linear.clamp_min(
            1e-4).sqrt()
        ldr.append(linear.clamp(0, 1) ** (1 / 2.2))
        exposures.append(exposure)
        if t == centre:
            hdr_centre = hdr
    return (torch.stack(ldr).unsqueeze(0), torch.tensor([exposures]), hdr_centre.unsqueeze(0))
