"""Moving foreground objects: HDR sprites composited over the background at every sub-frame.

A sprite is a premultiplied RGBA texture (an HDR patch rendered from a panorama at another view,
cut out by a soft random shape) moved by a smooth similarity transform over time:
    p = c(t) + s(t) Rot(theta(t)) q,     q = sprite coordinates in texture pixels about its centre.
Since the transform is known, so is its flow: O_{a->b}(p) = A_b(A_a^-1(p)) - p. Sprites are
composited back to front at every sub-frame, so long exposures blur them (and what they cover
or reveal) the way a real exposure does, and they occlude the background and each other.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .panorama import SmoothPath, render_views, rotation, sample_path, unit_focal


@dataclass(frozen=True)
class SpriteConfig:
    """Random foreground sprites, per clip.

    Args:
        count: inclusive range of the number of sprites when a clip has local motion.
        radius: range of the sprite radius as a fraction of min(H, W).
        speed_px: log-uniform range of the sprite's RMS speed in pixels per exposure pair.
        scale_rate: RMS log-scale speed per pair (approach / recede).
        scale_limit: soft bound on |log scale|.
        spin_rate: RMS rotation speed in radians per pair.
        gain: log-uniform range of a brightness gain on the texture (objects brighter or darker
            than their surroundings; they are cut from other views with other levels anyway).
        exponent: range of the superellipse exponent (2 = ellipse, large = rounded box).
        wobble: largest relative amplitude of the random low-order radial perturbation.
        edge_px: range of the soft edge width in pixels (anti-aliased silhouettes).
    """
    count: tuple[int, int] = (1, 3)
    radius: tuple[float, float] = (0.1, 0.3)
    speed_px: tuple[float, float] = (1.0, 24.0)
    scale_rate: float = 0.05
    scale_limit: float = 0.3
    spin_rate: float = 0.05
    gain: tuple[float, float] = (0.5, 2.0)
    exponent: tuple[float, float] = (1.5, 5.0)
    wobble: float = 0.15
    edge_px: tuple[float, float] = (0.7, 2.0)
    harmonics: int = 3
    freq: tuple[float, float] = (0.05, 0.6)


@dataclass(frozen=True, eq=False)
class Sprite:
    rgba: torch.Tensor   # (1, 4, T, T) premultiplied: rgb * alpha, alpha
    path: SmoothPath     # dims: centre x, centre y (pixels), log-scale (raw), angle (radians)
    scale_limit: float
    info: dict           # the sampled parameters, for meta.json

    def transform(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """centre (T, 2), scale (T,), angle (T,) at times t."""
        x = self.path(t)
        scale = np.exp(self.scale_limit * np.tanh(x[:, 2] / self.scale_limit))
        return x[:, :2], scale, x[:, 3]

    def _to_sprite(self, t: np.ndarray, h: int, w: int) -> torch.Tensor:
        """Sprite coordinates q (T, h, w, 2) float64 of every image pixel at times t."""
        c, s, a = (torch.from_numpy(v) for v in self.transform(t))
        px = torch.arange(w, dtype=torch.float64).view(1, 1, w) - c[:, 0].view(-1, 1, 1)
        py = torch.arange(h, dtype=torch.float64).view(1, h, 1) - c[:, 1].view(-1, 1, 1)
        cos, sin = (torch.cos(a) / s).view(-1, 1, 1), (torch.sin(a) / s).view(-1, 1, 1)
        return torch.stack([cos * px + sin * py, cos * py - sin * px], dim=-1)

    def render(self, t: np.ndarray, h: int, w: int) -> torch.Tensor:
        """Premultiplied RGBA (T, 4, h, w) of the sprite at times t; zero outside it."""
        size = self.rgba.shape[-1]
        grid = ((self._to_sprite(t, h, w) + (size - 1) / 2) * (2.0 / (size - 1)) - 1.0).float()
        n = grid.shape[0]
        out = F.grid_sample(self.rgba, grid.reshape(1, n * h, w, 2), mode="bilinear",
                            padding_mode="zeros", align_corners=True)
        return out.reshape(4, n, h, w).permute(1, 0, 2, 3)

    def flow(self, ta: float, tb: float, h: int, w: int) -> np.ndarray:
        """O_{a->b} (2, h, w) of points on the sprite (defined everywhere; masked by the caller)."""
        q = self._to_sprite(np.array([ta]), h, w)[0].numpy()
        c, s, a = self.transform(np.array([tb]))
        cos, sin = math.cos(a[0]) * s[0], math.sin(a[0]) * s[0]
        xb = c[0, 0] + cos * q[..., 0] - sin * q[..., 1]
        yb = c[0, 1] + sin * q[..., 0] + cos * q[..., 1]
        return np.stack([xb - np.arange(w)[None, :], yb - np.arange(h)[:, None]]).astype(
            np.float32)


def shape_alpha(rng: np.random.Generator, cfg: SpriteConfig, size: int, radius: float
                ) -> tuple[np.ndarray, dict]:
    """A soft random blob (size, size) in [0, 1]: superellipse with a wobbly radius."""
    aspect = rng.uniform(0.5, 1.0)
    n = rng.uniform(*cfg.exponent)
    tilt = rng.uniform(0, math.pi)
    harm = rng.uniform(-cfg.wobble, cfg.wobble, size=3) / np.arange(1, 4)
    phases = rng.uniform(0, 2 * math.pi, size=3)
    edge = rng.uniform(*cfg.edge_px)
    c = (size - 1) / 2
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) - c
    xr = (math.cos(tilt) * x + math.sin(tilt) * y) / radius
    yr = (-math.sin(tilt) * x + math.cos(tilt) * y) / (radius * aspect)
    rho = (np.abs(xr) ** n + np.abs(yr) ** n) ** (1 / n)   # 1 on the superellipse
    theta = np.arctan2(yr, xr)
    bound = 1 + sum(harm[k] * np.cos((k + 2) * theta + phases[k]) for k in range(3))
    # (bound - rho) * radius * aspect approximates the distance to the edge in pixels (exact
    # on the minor axis of an ellipse; the soft edge needs no more).
    alpha = np.clip(0.5 + (bound - rho) * radius * aspect / edge, 0.0, 1.0)
    info = {"radius": radius, "aspect": aspect, "exponent": n, "tilt": tilt,
            "wobble": harm.tolist(), "wobble_phase": phases.tolist(), "edge_px": edge}
    return alpha.astype(np.float32), info


def sample_sprites(rng: np.random.Generator, cfg: SpriteConfig, panoramas: list[torch.Tensor],
                   names: list[str], h: int, w: int, count: int) -> list[Sprite]:
    """`count` random sprites, textures rendered from random views of `panoramas` (padded with
    `pad_panorama`)."""
    sprites = []
    for _ in range(count):
        radius = rng.uniform(*cfg.radius) * min(h, w)
        # Margin for the wobble, the soft edge and the bilinear footprint.
        size = 2 * int(math.ceil(radius * (1 + cfg.wobble) + 2 * cfg.edge_px[1])) + 3
        k = int(rng.integers(len(panoramas)))
        pano = panoramas[k]
        yaw, pitch = rng.uniform(-math.pi, math.pi), rng.uniform(-0.4, 0.4)
        focal = unit_focal(pano.shape[3] - 2) * rng.uniform(1.0, 2.0)
        rot = rotation(np.array([yaw]), np.array([pitch]), np.array([0.0]))
        tex = render_views(pano, rot, np.array([focal]), size, size)[0]
        gain = math.exp(rng.uniform(math.log(cfg.gain[0]), math.log(cfg.gain[1])))
        alpha, info = shape_alpha(rng, cfg, size, radius)
        a = torch.from_numpy(alpha)[None]
        rgba = torch.cat([tex * gain * a, a])[None].contiguous()
        speed = math.exp(rng.uniform(math.log(cfg.speed_px[0]), math.log(cfg.speed_px[1])))
        offset = np.array([rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h, 0.0,
                           rng.uniform(-math.pi, math.pi)])
        path = sample_path(rng, offset, np.array([speed / math.sqrt(2), speed / math.sqrt(2),
                                                   cfg.scale_rate, cfg.spin_rate]),
                           cfg.harmonics, cfg.freq)
        info.update({"texture": names[k], "view_yaw": yaw, "view_pitch": pitch,
                     "view_focal": focal, "gain": gain, "speed_px": speed,
                     "path": path.to_dict()})
        sprites.append(Sprite(rgba, path, cfg.scale_limit, info))
    return sprites


def composite(background: torch.Tensor, sprites: list[Sprite], t: np.ndarray) -> torch.Tensor:
    """Composite sprites (back to front, list order) over `background` (T, 3, h, w)."""
    h, w = background.shape[-2:]
    out = background
    for sprite in sprites:
        rgba = sprite.render(t, h, w)
        out = out * (1 - rgba[:, 3:]) + rgba[:, :3]
    return out


def composite_flow(flow: np.ndarray, sprites: list[Sprite], ta: float, tb: float) -> np.ndarray:
    """Replace the background flow (2, h, w) by a sprite's own motion where that sprite is the
    front-most one covering the pixel at time a (alpha >= 0.5)."""
    h, w = flow.shape[-2:]
    flow = flow.copy()
    for sprite in sprites:  # back to front: later sprites overwrite earlier ones
        alpha = sprite.render(np.array([ta]), h, w)[0, 3].numpy()
        on = alpha >= 0.5
        if on.any():
            flow[:, on] = sprite.flow(ta, tb, h, w)[:, on]
    return flow
