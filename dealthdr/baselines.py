"""Non-learned baselines for `dealthdr evaluate`, on the model's own input window.

Both take a window of 5 gamma-encoded LDR frames (5, 3, H, W) in [0, 1] with their exposure
times (5,), and return the centre frame's linear HDR (3, H, W) in the short exposure's units,
like the network.

- `reference`: the centre frame alone, linearised and exposure-normalised (Eq. 1). What the
  network adds to (its output is this plus a learned residual).
- `classical`: the centre frame merged with its 4 neighbours after classical optical-flow
  alignment (OpenCV DIS), with exposure-aware per-pixel weights.
"""
from __future__ import annotations

import numpy as np
import torch

GAMMA = 2.2
# Well-exposedness: LDR values above SAT_LO lose weight linearly, at SAT_HI they have none
# (a clipped long frame says only "brighter than this").
SAT_LO, SAT_HI = 0.85, 0.97
# Noise model in each frame's own linear units: variance = v * SHOT + READ. Only the ratio
# matters: read noise dominates below v = READ / SHOT, where a long frame (r = 8) is worth
# r² = 64 short frames; above it, shot noise, worth r = 8 short frames.
SHOT, READ = 1.0, 2e-3
# Consistency: an aligned neighbour whose (smoothed, gamma-domain) difference to the centre
# exceeds a few CONSISTENCY_SIGMA is a misalignment (occlusion, flow failure), not noise.
CONSISTENCY_SIGMA = 0.04
SMOOTH_SIGMA = 1.5  # pixels; smoothing before the consistency test, so noise is not "motion"
CENTRE_FLOOR = 1e-6  # the centre always keeps some weight: the fallback where all else fails


def _window(frames: np.ndarray | torch.Tensor, exposures: np.ndarray | torch.Tensor,
            ) -> tuple[np.ndarray, np.ndarray]:
    """Check and convert to float32 (T, H, W, 3) LDR and relative exposures (T,)."""
    if torch.is_tensor(frames):
        frames = frames.detach().cpu().numpy()
    if torch.is_tensor(exposures):
        exposures = exposures.detach().cpu().numpy()
    frames = np.asarray(frames, dtype=np.float32)
    exposures = np.asarray(exposures, dtype=np.float64).reshape(-1)
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[0] % 2 == 0:
        raise ValueError(f"frames must be (T, 3, H, W) with T odd, got {frames.shape}")
    if exposures.shape != (frames.shape[0],):
        raise ValueError(f"{frames.shape[0]} frames but exposures of shape {exposures.shape}")
    if not np.isfinite(exposures).all() or (exposures <= 0).any():
        raise ValueError("exposures must be finite and positive")
    return frames.transpose(0, 2, 3, 1).clip(0, 1), exposures / exposures.min()


def _linear(ldr: np.ndarray, rel: float) -> np.ndarray:
    """Eq. 1: inverse gamma, then divide by the exposure relative to the shortest."""
    return ldr ** GAMMA / rel


def reference(frames: np.ndarray | torch.Tensor, exposures: np.ndarray | torch.Tensor,
              ) -> np.ndarray:
    """The exposure-normalised linearised centre frame, (3, H, W) float32."""
    ldr, rel = _window(frames, exposures)
    c = len(ldr) // 2
    return _linear(ldr[c], rel[c]).transpose(2, 0, 1).astype(np.float32)


def _dis_flow(ref: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """DIS flow O_{ref->moving} (H, W, 2): ref(p) ~ moving(p + flow(p)). Grey uint8 inputs."""
    import cv2

    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return dis.calc(ref, moving, None)


def _remap(img: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample img (H, W, C) at p + flow(p), bilinear; returns (warped, in-bounds mask)."""
    import cv2

    h, w = img.shape[:2]
    mx = (np.arange(w, dtype=np.float32)[None, :] + flow[..., 0]).astype(np.float32)
    my = (np.arange(h, dtype=np.float32)[:, None] + flow[..., 1]).astype(np.float32)
    out = cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
    return out.reshape(img.shape), inside


def _blur(img: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(img, (0, 0), SMOOTH_SIGMA)


def _grey_u8(img: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(np.round(img.clip(0, 1) * 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)


def _well_exposed(ldr: np.ndarray) -> np.ndarray:
    """1 below SAT_LO, falling linearly to 0 at SAT_HI, on the brightest channel (H, W)."""
    top = ldr.max(axis=-1)
    return np.clip((SAT_HI - top) / (SAT_HI - SAT_LO), 0, 1)


def classical(frames: np.ndarray | torch.Tensor, exposures: np.ndarray | torch.Tensor,
              ) -> np.ndarray:
    """Align every neighbour to the centre with DIS flow and merge, (3, H, W) float32.

    Flow is computed on exposure-normalised gamma images (the network's guide images), where a
    short and a long frame of the same scene look alike except for clipping and noise. Each
    frame i contributes its linear image with weight
        well-exposedness(ldr_i) * noise weight(r_i) * consistency(i, centre) * in-bounds,
    where the noise weight is the inverse variance of the exposure-normalised value,
    r² / (SHOT * r * x + READ) at the centre's smoothed radiance x (a long frame collects r
    times the light), and consistency drops pixels whose aligned neighbour disagrees with
    the centre (checked against the centre's clipping level, since a saturated centre only
    says "at least this bright").
    """
    ldr, rel = _window(frames, exposures)
    c = len(ldr) // 2
    lin = [_linear(ldr[i], rel[i]) for i in range(len(ldr))]
    guide = [np.clip(x, 0, 1) ** (1 / GAMMA) for x in lin]
    x_c = _blur(lin[c]).max(axis=-1)  # radiance estimate for the noise model, (H, W)
    centre_clip = 1.0 / rel[c]  # the centre frame's saturation level in short units
    g_c = _blur(guide[c])
    grey_c = _grey_u8(guide[c])

    def noise_weight(r: float) -> np.ndarray:
        return r * r / (SHOT * r * x_c + READ)

    w_c = _well_exposed(ldr[c]) * noise_weight(rel[c]) + CENTRE_FLOOR
    num = w_c[..., None] * lin[c]
    den = w_c.copy()
    for i in range(len(ldr)):
        if i == c:
            continue
        flow = _dis_flow(grey_c, _grey_u8(guide[i]))
        warped, inside = _remap(np.concatenate((lin[i], ldr[i]), axis=-1), flow)
        lin_i, ldr_i = warped[..., :3], warped[..., 3:]
        # Compare where the centre can tell: clip the neighbour at the centre's saturation.
        g_i = _blur(np.clip(np.minimum(lin_i, centre_clip), 0, 1) ** (1 / GAMMA))
        diff = np.abs(g_i - g_c).max(axis=-1)
        consistency = np.exp(-(diff / CONSISTENCY_SIGMA) ** 2)
        w = _well_exposed(ldr_i) * noise_weight(rel[i]) * consistency * inside
        num += w[..., None] * lin_i
        den += w
    return (num / den[..., None]).transpose(2, 0, 1).astype(np.float32)


BASELINES = {"reference": reference, "classical": classical}
