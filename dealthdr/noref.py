"""No-reference measures of an HDR video, for footage without ground truth (real captures).

All measures see what a viewer sees: the μ-law tonemap (μ = 5000) of the linear HDR clipped at
the short exposure's white, as the previews and the paper's figures use, reduced to grey
(Rec. 709 luma weights). None needs a learned model or a download.

- noise: Immerkær's fast noise estimate (CVIU 1996): sigma = sqrt(pi/2) / (6 (W-2)(H-2)) *
  sum |I * N| with N the difference of two Laplacians, which cancels smooth structure (lower is
  cleaner; in tonemapped units, 0..1).
- blur: Crete-Roffet et al.'s re-blur measure (SPIE 2007): how much of the image's
  neighbour-to-neighbour variation survives a 9-tap box blur; 0 = sharp, 1 = blurred. Noise
  reads as detail, so blur must be read together with noise.
- flicker: mean |mean(T_t) - mean(T_t+1)| over consecutive frames, the brightness pumping that
  alternating exposures cause when a method does not equalise them (lower is steadier).
- temporal_diff: mean over pairs of the median per-pixel |T_t - T_t+1|: on a static camera
  most pixels are background, so this is the temporal noise of the background.
"""
from __future__ import annotations

import math

import numpy as np

from .metrics import mu_law

_LUMA = np.array([0.2126, 0.7152, 0.0722])
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)


def tonemapped_grey(hdr: np.ndarray) -> np.ndarray:
    """(H, W, 3) linear HDR -> (H, W) float64 grey in [0, 1], as the previews show it."""
    return mu_law(np.clip(np.asarray(hdr, dtype=np.float64), 0, 1)) @ _LUMA


def noise_sigma(grey: np.ndarray) -> float:
    import cv2

    h, w = grey.shape
    conv = cv2.filter2D(grey, cv2.CV_64F, _IMMERKAER)[1:-1, 1:-1]
    return float(math.sqrt(math.pi / 2) * np.abs(conv).sum() / (6 * (w - 2) * (h - 2)))


def blur_crete(grey: np.ndarray, taps: int = 9) -> float:
    import cv2

    out = 0.0
    for axis in (0, 1):
        k = (taps, 1) if axis == 0 else (1, taps)
        blurred = cv2.blur(grey, (k[1], k[0]), borderType=cv2.BORDER_REFLECT)
        d_f = np.abs(np.diff(grey, axis=axis))
        d_b = np.abs(np.diff(blurred, axis=axis))
        s_f = d_f.sum()
        if s_f <= 0:
            return 1.0
        out = max(out, float((s_f - np.maximum(0, d_f - d_b).sum()) / s_f))
    return out


def measure(frames: list[np.ndarray]) -> dict:
    """The measures of a sequence of linear HDR frames (H, W, 3), in order."""
    greys = [tonemapped_grey(f) for f in frames]
    means = [g.mean() for g in greys]
    pairs = list(zip(greys, greys[1:]))
    return {
        "noise": float(np.mean([noise_sigma(g) for g in greys])),
        "blur": float(np.mean([blur_crete(g) for g in greys])),
        "flicker": float(np.mean(np.abs(np.diff(means)))) if pairs else None,
        "temporal_diff": float(np.mean([np.median(np.abs(a - b)) for a, b in pairs]))
        if pairs else None,
        "frames": len(frames),
    }


MEASURES = {"noise": "Immerkær noise sigma (tonemapped, lower = cleaner)",
            "blur": "Crete-Roffet re-blur measure (0 sharp .. 1 blurred)",
            "flicker": "mean |frame-mean difference| of consecutive frames (lower = steadier)",
            "temporal_diff": "median |pixel difference| of consecutive frames (static camera: "
                             "background temporal noise; lower = steadier)"}
