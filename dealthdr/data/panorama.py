"""A virtual pinhole camera looking around an equirectangular HDR panorama.

Rotation and zoom about the centre of projection need no depth, so every rendered frame and
the exact optical flow between any two instants follow from the camera path alone: the image
mapping from time a to time b is the homography K_b R_b R_a^T K_a^-1.

Conventions (shared with dealthdr.model.spynet.flow_warp):
  * pixel centres sit at integer coordinates 0..W-1, 0..H-1; the principal point is the image
    centre ((W-1)/2, (H-1)/2);
  * camera axes: x right, y down, z forward; R maps world directions to camera directions;
  * panorama column j, row i cover longitude (j + 0.5)/Wp * 2pi - pi (0 = +z, increasing
    towards +x) and latitude pi/2 - (i + 0.5)/Hp * pi (up = -y);
  * flow O_{a->b}(p) = proj_b(unproj_a(p)) - p, channels (dx, dy), so that
    flow_warp(frame_b, O_{a->b}) ~ frame_a.
Time is measured in exposure pairs (one short + one long exposure, `subframes` sub-frames).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# Focal length (pixels) at which a rendered pixel at the image centre spans one panorama pixel
# is Wp / (2 pi); zoom is measured relative to it.


def unit_focal(pano_width: int) -> float:
    return pano_width / (2 * math.pi)


@dataclass(frozen=True)
class CameraMotionConfig:
    """Random camera paths (hand-held pan/tilt/roll/zoom), per clip.

    Args:
        zoom: range of the zoom (focal / unit focal). >= 1 keeps the render at or above the
            panorama's own resolution at the centre: no aliasing, at most a mild upsampling.
        pitch_limit: soft bound (radians) on |pitch|, keeps the view away from the poles where
            equirectangular panoramas are stretched.
        speed_px: log-uniform range of the RMS pan speed at the image centre, in rendered
            pixels per exposure pair; the long exposure integrates 63/64 of a pair, so this is
            about the length of its motion blur (up to ~2x at speed peaks and image corners).
        roll_ratio: roll speed relative to the pan speed (radians per radian).
        zoom_rate: RMS log-focal speed, per pair.
        zoom_limit: soft bound on |log(zoom / zoom_start)| during a clip.
        harmonics: sinusoids per degree of freedom (on top of a constant drift).
        freq: range of their frequencies in cycles per pair; below ~0.5 keeps paths smooth at
            the frame rate, so the blur kernels are mostly short curved strokes.
    """
    zoom: tuple[float, float] = (1.0, 1.5)
    pitch_limit: float = 0.45
    speed_px: tuple[float, float] = (0.5, 24.0)
    roll_ratio: float = 0.2
    zoom_rate: float = 0.02
    zoom_limit: float = 0.15
    harmonics: int = 3
    freq: tuple[float, float] = (0.05, 0.6)


@dataclass(frozen=True, eq=False)
class SmoothPath:
    """x_d(t) = offset_d + drift_d t + sum_k amp_dk sin(2 pi freq_dk t + phase_dk)."""
    offset: np.ndarray   # (D,)
    drift: np.ndarray    # (D,)
    amp: np.ndarray      # (D, K)
    freq: np.ndarray     # (D, K)
    phase: np.ndarray    # (D, K)

    def __call__(self, t: np.ndarray) -> np.ndarray:
        """Positions (T, D) at times t (T,), float64."""
        t = np.asarray(t, dtype=np.float64).reshape(-1, 1, 1)
        waves = self.amp * np.sin(2 * np.pi * self.freq * t + self.phase)
        return self.offset + self.drift * t[:, :, 0] + waves.sum(-1)

    def to_dict(self) -> dict:
        # + 0.0 turns -0.0 into 0.0 in the JSON of still paths.
        return {k: (np.round(getattr(self, k), 8) + 0.0).tolist()
                for k in ("offset", "drift", "amp", "freq", "phase")}


def sample_path(rng: np.random.Generator, offset: np.ndarray, speed: np.ndarray, harmonics: int,
                freq: tuple[float, float]) -> SmoothPath:
    """A random smooth path whose RMS speed along dimension d (over time) is `speed[d]`."""
    offset, speed = np.asarray(offset, np.float64), np.asarray(speed, np.float64)
    d = offset.shape[0]
    f = rng.uniform(freq[0], freq[1], size=(d, harmonics))
    phase = rng.uniform(0, 2 * np.pi, size=(d, harmonics))
    # Random velocity coefficients of the drift and of each harmonic, normalised so that the
    # mean squared velocity c0^2 + sum_k ck^2 / 2 is 1: the sampled speed is the realised one,
    # without the long tails of unnormalised Gaussian amplitudes.
    c = rng.normal(size=(d, 1 + harmonics))
    c /= np.sqrt(c[:, :1] ** 2 + 0.5 * (c[:, 1:] ** 2).sum(1, keepdims=True))
    drift = speed * c[:, 0]
    amp = speed[:, None] * c[:, 1:] / (2 * np.pi * f)
    return SmoothPath(offset, drift, amp, f, phase)


def rotation(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """World-to-camera rotations (T, 3, 3): yaw about the vertical, then pitch, then roll."""
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    o, z = np.ones_like(yaw), np.zeros_like(yaw)
    r_yaw = np.stack([cy, z, -sy, z, o, z, sy, z, cy], -1).reshape(-1, 3, 3)
    r_pitch = np.stack([o, z, z, z, cp, sp, z, -sp, cp], -1).reshape(-1, 3, 3)
    r_roll = np.stack([cr, -sr, z, sr, cr, z, z, z, o], -1).reshape(-1, 3, 3)
    return r_roll @ r_pitch @ r_yaw


@dataclass(frozen=True, eq=False)
class CameraPath:
    """Camera orientation and focal length over time (pair units)."""
    path: SmoothPath          # dims: yaw, pitch (raw), roll, log-zoom (raw)
    unit_focal: float
    log_zoom0: float
    pitch_limit: float
    zoom_limit: float

    def params(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """yaw, pitch, roll (radians) and focal (pixels) at times t."""
        x = self.path(t)
        # tanh keeps pitch and zoom bounded however long the clip; the flow stays exact since
        # it is computed from these very values.
        pitch = self.pitch_limit * np.tanh(x[:, 1] / self.pitch_limit)
        log_zoom = self.log_zoom0 + self.zoom_limit * np.tanh(x[:, 3] / self.zoom_limit)
        return x[:, 0], pitch, x[:, 2], self.unit_focal * np.exp(log_zoom)

    def pose(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        yaw, pitch, roll, f = self.params(t)
        return rotation(yaw, pitch, roll), f

    def to_dict(self) -> dict:
        return {"path": self.path.to_dict(), "unit_focal": self.unit_focal,
                "log_zoom0": self.log_zoom0, "pitch_limit": self.pitch_limit,
                "zoom_limit": self.zoom_limit}


def sample_camera_path(rng: np.random.Generator, cfg: CameraMotionConfig, pano_width: int,
                       still: bool = False) -> CameraPath:
    """A random hand-held camera path; `still` gives a tripod (fixed view, random orientation)."""
    f0 = unit_focal(pano_width)
    log_zoom0 = rng.uniform(math.log(cfg.zoom[0]), math.log(cfg.zoom[1]))
    speed_px = math.exp(rng.uniform(math.log(cfg.speed_px[0]), math.log(cfg.speed_px[1])))
    omega = speed_px / (f0 * math.exp(log_zoom0))  # rad per pair; centre speed = f * omega
    heading = rng.uniform(0, 2 * math.pi)
    speed = np.array([omega * abs(math.cos(heading)), omega * abs(math.sin(heading)),
                      omega * cfg.roll_ratio, cfg.zoom_rate])
    pitch0 = rng.uniform(-0.6, 0.6) * cfg.pitch_limit
    offset = np.array([rng.uniform(-math.pi, math.pi),
                       cfg.pitch_limit * math.atanh(pitch0 / cfg.pitch_limit),
                       rng.normal(0, 0.03), 0.0])
    path = sample_path(rng, offset, speed * (0.0 if still else 1.0), cfg.harmonics, cfg.freq)
    return CameraPath(path, f0, log_zoom0, cfg.pitch_limit, cfg.zoom_limit)


def pad_panorama(pano: np.ndarray) -> torch.Tensor:
    """(Hp, Wp, 3) float32 -> (1, 3, Hp, Wp + 2) with one wrapped column on each side, so that
    bilinear sampling is continuous across the +-180 degree seam."""
    t = torch.from_numpy(np.ascontiguousarray(pano, dtype=np.float32)).permute(2, 0, 1)
    return torch.cat([t[:, :, -1:], t, t[:, :, :1]], dim=2).unsqueeze(0).contiguous()


def _pixel_rays(f: np.ndarray, h: int, w: int) -> np.ndarray:
    """Camera-space rays K^-1 [x, y, 1] of every pixel, (T, h, w, 3) float64."""
    xs = (np.arange(w, dtype=np.float64) - (w - 1) / 2)[None, None, :] / f[:, None, None]
    ys = (np.arange(h, dtype=np.float64) - (h - 1) / 2)[None, :, None] / f[:, None, None]
    xs, ys = np.broadcast_arrays(xs, ys)
    return np.stack([xs, ys, np.ones_like(xs)], axis=-1)


def panorama_grid(rot: np.ndarray, f: np.ndarray, h: int, w: int, pano_hw: tuple[int, int]
                  ) -> torch.Tensor:
    """grid_sample coordinates (T, h, w, 2) into a `pad_panorama` tensor (align_corners=True)."""
    hp, wp = pano_hw
    # float64 torch: vectorised trig over T*h*w rays is the cost of a render.
    rays = torch.from_numpy(_pixel_rays(f, h, w)).reshape(len(f), h * w, 3)
    d = torch.bmm(rays, torch.from_numpy(np.ascontiguousarray(rot, np.float64)))  # R^T d_c
    x, y, z = d.unbind(-1)
    lon = torch.atan2(x, z)
    lat = torch.atan2(-y, torch.hypot(x, z))
    u = (lon + math.pi) * (wp / (2 * math.pi)) - 0.5 + 1.0   # + 1: the wrapped left column
    v = (math.pi / 2 - lat) * (hp / math.pi) - 0.5
    gx = u * (2.0 / (wp + 1)) - 1.0                          # padded width wp + 2, minus one
    gy = v * (2.0 / (hp - 1)) - 1.0
    return torch.stack([gx, gy], dim=-1).reshape(len(f), h, w, 2).float()


def render_views(pano: torch.Tensor, rot: np.ndarray, f: np.ndarray, h: int, w: int
                 ) -> torch.Tensor:
    """Render T views (T, 3, h, w) of a padded panorama (1, 3, Hp, Wp + 2)."""
    hp, wp = pano.shape[2], pano.shape[3] - 2
    grid = panorama_grid(rot, np.asarray(f, np.float64).reshape(-1), h, w, (hp, wp))
    t = grid.shape[0]
    # One sampling call for all views: stack them along the grid's height.
    out = F.grid_sample(pano, grid.reshape(1, t * h, w, 2), mode="bilinear",
                        padding_mode="border", align_corners=True)
    return out.reshape(3, t, h, w).permute(1, 0, 2, 3).contiguous()


def camera_flow(rot_a: np.ndarray, f_a: float, rot_b: np.ndarray, f_b: float, h: int, w: int
                ) -> np.ndarray:
    """Exact flow O_{a->b} (2, h, w) float32 of a rotating, zooming camera; NaN where the point
    seen at p in view a is behind camera b."""
    rays = _pixel_rays(np.array([f_a], np.float64), h, w)[0]
    d_b = rays @ (rot_b @ rot_a.T).T                       # R_b R_a^T K_a^-1 p
    z = d_b[..., 2]
    ok = z > 1e-6
    z = np.where(ok, z, 1.0)
    xb = f_b * d_b[..., 0] / z + (w - 1) / 2
    yb = f_b * d_b[..., 1] / z + (h - 1) / 2
    flow = np.stack([xb - np.arange(w)[None, :], yb - np.arange(h)[:, None]])
    flow[:, ~ok] = np.nan
    return flow.astype(np.float32)
