"""Develop RAW frames into the network's input convention, the way the synthesis does.

The synthetic LDR frames the network was trained on are made by dealthdr.data.degrade.process
from a RAW mosaic in [0, 1] (black 0, saturation 1): demosaic (OpenCV edge-aware), white-balance
gains, clip at 1, camera RGB -> linear sRGB, clip, gamma 1/2.2. A real RAW frame goes through the
same steps, with its own levels, CFA, as-shot white balance and colour matrix, so that a real
frame and a synthetic one of the same radiance look the same to the network:

    X = (code - black) / (white - black)                      per CFA position, clipped to [0, 1]
    rgb = clip(clip(demosaic(X) * wb, 0, 1) @ cam2rgb^T, 0, 1) ** (1 / 2.2)

cam2rgb is LibRaw's rgb_cam, which it derives from the file's ColorMatrix (XYZ -> camera) the way
degrade.sample_camera derives its own: rgb2cam = xyz2cam @ sRGB->XYZ with rows normalised to 1
(white stays white), inverted.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .degrade import SRGB_TO_XYZ, demosaic
from .dng import read_raw

log = logging.getLogger(__name__)

# Flips (rows, columns) that turn each 2x2 CFA into RGGB, the layout degrade.demosaic takes.
_TO_RGGB = {"RGGB": (False, False), "GRBG": (False, True), "GBRG": (True, False),
            "BGGR": (True, True)}


@dataclass(frozen=True)
class RawHeader:
    width: int
    height: int
    cfa: str
    exposure_time: float | None  # seconds
    iso: float | None

    @property
    def exposure(self) -> float | None:
        """What scales the recorded signal: exposure time x ISO gain (time alone without ISO)."""
        if self.exposure_time is None:
            return None
        return self.exposure_time * (self.iso or 1.0)


def raw_header(path: str | Path) -> RawHeader:
    """Size, CFA and exposure of a RAW file; reads the whole file, so a corrupt one fails here,
    before anything is written."""
    raw = read_raw(path)
    h, w = raw.mosaic.shape
    if h % 2 or w % 2:
        raise ValueError(f"{path}: RAW of {w}x{h}; whole 2x2 CFA tiles are needed")
    return RawHeader(w, h, raw.cfa, raw.exposure_time, raw.iso)


def _colour(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(white-balance gains (3,), green = 1; cam2rgb (3, 3)) from the file's metadata."""
    import rawpy

    try:
        with rawpy.imread(str(path)) as raw:
            wb = np.asarray(raw.camera_whitebalance, dtype=np.float64)
            # LibRaw's rgb_cam: camera RGB -> linear sRGB, built from the DNG ColorMatrix
            # the way degrade.sample_camera builds rgb2cam (rows of cam<-rgb sum to 1), inverted.
            rgb_cam = np.asarray(raw.color_matrix, dtype=np.float64)[:3, :3]
            xyz2cam = np.asarray(raw.rgb_xyz_matrix, dtype=np.float64)[:3]
    except (rawpy.LibRawError, OSError) as err:
        raise ValueError(f"{path} is not a RAW file LibRaw can read ({err})") from None
    gains = wb[:3] / wb[1] if wb[1] > 0 and (wb[:3] > 0).all() else None
    if gains is None:
        log.warning("%s: no as-shot white balance; using unit gains", path)
        gains = np.ones(3)
    if np.isfinite(rgb_cam).all() and abs(np.linalg.det(rgb_cam)) > 1e-12:
        return gains, rgb_cam
    if np.isfinite(xyz2cam).all() and abs(np.linalg.det(xyz2cam)) > 1e-12:
        rgb2cam = xyz2cam @ SRGB_TO_XYZ
        rgb2cam /= rgb2cam.sum(axis=1, keepdims=True)
        return gains, np.linalg.inv(rgb2cam)
    log.warning("%s: no usable colour matrix; treating camera RGB as linear sRGB", path)
    return gains, np.eye(3)


def demosaic_cfa(x: np.ndarray, cfa: str) -> np.ndarray:
    """Mosaic in [0, 1] (H, W) of any 2x2 Bayer layout -> (H, W, 3) camera RGB, by flipping it
    to RGGB and using the synthesis's own demosaicking."""
    if cfa not in _TO_RGGB:
        raise ValueError(f"unsupported CFA {cfa!r} (supported: {sorted(_TO_RGGB)})")
    fy, fx = _TO_RGGB[cfa]
    axes = tuple(a for a, f in ((0, fy), (1, fx)) if f)
    flipped = np.flip(x, axes) if axes else x
    rgb = demosaic(np.ascontiguousarray(flipped), bits=16)
    return np.flip(rgb, axes) if axes else rgb


def develop_mosaic(x: np.ndarray, cfa: str, gains: np.ndarray, cam2rgb: np.ndarray,
                   gamma: float = 2.2) -> np.ndarray:
    """Normalised mosaic (H, W) -> gamma-encoded RGB float32 (H, W, 3) in [0, 1]; the steps of
    degrade.process after its sensor model."""
    rgb = demosaic_cfa(np.clip(x, 0.0, 1.0), cfa) * gains
    rgb = np.clip(np.clip(rgb, 0.0, 1.0) @ cam2rgb.T, 0.0, 1.0)
    return (rgb ** (1.0 / gamma)).astype(np.float32)


def develop(path: str | Path, gamma: float = 2.2) -> np.ndarray:
    """A RAW file as the network's input frame (see the module docstring)."""
    path = Path(path)
    raw = read_raw(path)
    gains, cam2rgb = _colour(path)
    return develop_mosaic(raw.normalised(), raw.cfa, gains, cam2rgb, gamma)
