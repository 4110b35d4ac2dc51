"""Readers for HDR data in other layouts: a folder of HDR frames, and DeepHDRVideo scenes.

DeepHDRVideo (Chen et al., ICCV 2021) stores one scene per folder:
    Exposures.txt       EV of each position in the exposure cycle (e.g. "-3" and "0")
    img_hdr_list.txt    one line per LDR frame: "<ldr>.tif <hdr>.hdr" (the HDR may be absent);
                        or img_list.txt (LDR names only, no ground truth); or neither (*.tif)
    *.tif               16-bit LDR frames, gamma-encoded (linearised with ^2.2 / exposure)
    *.hdr               Radiance ground truth, in an arbitrary scale
`read_deephdrvideo_scene` turns a scene into a dealthdr `Clip` in memory, with the ground truth
rescaled into the short exposure's units (see `_gt_scale`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .clip import FORMAT, Clip
from .io import HDR_SUFFIXES, read_hdr, read_ldr

log = logging.getLogger(__name__)

# LDR pixels trusted when matching the ground truth's scale: away from noise and clipping.
_WELL_EXPOSED = (0.1, 0.85)


def list_hdr_frames(folder: str | Path) -> list[Path]:
    """HDR frames (.exr / .hdr) in `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"HDR video folder not found: {folder}")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in HDR_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise ValueError(f"no HDR frames ({', '.join(HDR_SUFFIXES)}) in {folder}")
    return files


def read_hdr_video(folder: str | Path) -> np.ndarray:
    """A folder of HDR frames as a video: float32 (F, H, W, 3), frames in name order."""
    frames = []
    for path in list_hdr_frames(folder):
        img = read_hdr(path)
        if frames and img.shape != frames[0].shape:
            raise ValueError(f"{path} is {img.shape[1]}x{img.shape[0]} but the first frame is "
                             f"{frames[0].shape[1]}x{frames[0].shape[0]}: an HDR video needs "
                             "frames of one size")
        frames.append(img)
    return np.stack(frames)


def _frame_lists(scene: Path) -> tuple[list[Path], list[Path | None]]:
    pairs = scene / "img_hdr_list.txt"
    names = scene / "img_list.txt"
    if pairs.is_file():
        rows = [line.split() for line in pairs.read_text().splitlines() if line.strip()]
        bad = [r for r in rows if len(r) != 2]
        if bad:
            raise ValueError(f"{pairs}: expected '<ldr> <hdr>' per line, got {' '.join(bad[0])!r}")
        return [scene / r[0] for r in rows], [scene / r[1] for r in rows]
    if names.is_file():
        ldr = [scene / line.split()[0] for line in names.read_text().splitlines() if line.strip()]
    else:
        ldr = sorted(p for p in scene.iterdir() if p.suffix.lower() in (".tif", ".tiff"))
    return ldr, [None] * len(ldr)


def _gt_scale(ldr: np.ndarray, hdr: np.ndarray, exposures: np.ndarray, gamma: float) -> float:
    """Factor that maps the scene's HDR into short-exposure units: the median over well-exposed
    pixels of linearised LDR / (relative exposure * HDR)."""
    ratios = []
    for img, gt, e in zip(ldr, hdr, exposures):
        if not np.isfinite(gt).all():
            continue
        ok = ((img > _WELL_EXPOSED[0]) & (img < _WELL_EXPOSED[1])).all(-1) & (gt > 1e-8).all(-1)
        if ok.any():
            ratios.append((img[ok] ** gamma / e / gt[ok]).ravel())
    if not ratios:
        log.warning("no well-exposed pixels to match the HDR scale; keeping the file's scale")
        return 1.0
    return float(np.median(np.concatenate(ratios)))


def read_deephdrvideo_scene(path: str | Path, gamma: float = 2.2) -> Clip:
    """Read one DeepHDRVideo scene folder as a `Clip` (no flow; `hdr` NaN where a frame has
    no ground truth, None when none has)."""
    scene = Path(path)
    if not scene.is_dir():
        raise FileNotFoundError(f"DeepHDRVideo scene not found: {scene}")
    expo_file = scene / "Exposures.txt"
    if not expo_file.is_file():
        raise FileNotFoundError(f"{scene}: no Exposures.txt (not a DeepHDRVideo scene)")
    try:
        ev = np.atleast_1d(np.loadtxt(expo_file, dtype=np.float64))
    except ValueError as err:
        raise ValueError(f"{expo_file}: expected one EV per line: {err}") from None
    if ev.size == 0:
        raise ValueError(f"{expo_file} is empty")
    ldr_paths, hdr_paths = _frame_lists(scene)
    if not ldr_paths:
        raise ValueError(f"{scene}: no LDR frames")
    ldr = np.stack([read_ldr(p) for p in ldr_paths])
    if len({img.shape for img in ldr}) > 1:
        raise ValueError(f"{scene}: LDR frames of mixed sizes")
    rel = np.power(2.0, ev - ev.min())  # relative exposure times, shortest = 1
    exposures = np.resize(rel, len(ldr_paths)).astype(np.float32)

    hdr = None
    have = [p is not None and p.is_file() for p in hdr_paths]
    if any(have):
        hdr = np.full(ldr.shape, np.nan, dtype=np.float32)
        for i, (p, ok) in enumerate(zip(hdr_paths, have)):
            if ok:
                img = read_hdr(p)
                if img.shape != ldr.shape[1:]:
                    raise ValueError(f"{p}: ground truth {img.shape[1]}x{img.shape[0]} does not "
                                     f"match the LDR frames {ldr.shape[2]}x{ldr.shape[1]}")
                hdr[i] = img
        scale = _gt_scale(ldr, hdr, exposures, gamma)
        hdr *= np.float32(scale)
    else:
        scale = None
    long = exposures / exposures.min() > 1.01
    meta = {"format": FORMAT, "frames": len(ldr), "height": int(ldr.shape[1]),
            "width": int(ldr.shape[2]), "exposures": exposures.tolist(), "long": long.tolist(),
            "exposure_ratio": float(rel.max()),
            "gt_units": "linear, short exposure (DeepHDRVideo HDR rescaled by gt_scale)",
            "gt_scale": scale, "gt_available": have,
            "source": {"kind": "deephdrvideo", "path": str(scene), "ev": ev.tolist()}}
    return Clip(ldr=ldr, exposures=exposures, hdr=hdr, flow=None, meta=meta)
