"""The on-disk clip format written by `dealthdr synth` and read by training and evaluation.

A clip is a folder:
    meta.json          {"format": "dealthdr-clip/1", "frames", "height", "width", "exposures",
                        "long", "exposure_ratio", "gt_units", "flow_offsets", "noise", ...}
    ldr/000000.png     16-bit RGB, gamma-encoded LDR input in [0, 1]
    hdr/000000.exr     linear HDR ground truth of that frame, in the short exposure's units
    flow/000000.npy    float16 (K, 2, H, W): O_{t->t+k} for k in flow_offsets, (dx, dy) pixels,
                       NaN where t+k lies outside the clip (optional)
Ground truth of a short frame is the HDR frame at its instant; of a long frame, the middle HDR
frame of its exposure window (paper, App. A, Fig. A).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .exposure import classify_long
from .io import read_hdr, read_ldr

FORMAT = "dealthdr-clip/1"


@dataclass
class Clip:
    """A clip in memory. Images are float32 (F, H, W, 3); flow float32 (F, K, 2, H, W)."""
    ldr: np.ndarray
    exposures: np.ndarray
    hdr: np.ndarray | None = None
    flow: np.ndarray | None = None
    flow_offsets: tuple[int, ...] = (-2, -1, 1, 2)
    meta: dict = field(default_factory=dict)

    @property
    def long(self) -> np.ndarray:
        return self.exposures / self.exposures.min() > 1.01

    def __len__(self) -> int:
        return self.ldr.shape[0]


def frame_name(i: int, suffix: str) -> str:
    return f"{i:06d}{suffix}"


def read_meta(path: str | Path) -> dict:
    meta_path = Path(path) / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not a dealthdr clip: no meta.json")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{meta_path}: invalid JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{meta_path}: format {found!r}, expected {FORMAT!r}")
    for key in ("frames", "height", "width", "exposures"):
        if key not in meta:
            raise ValueError(f"{meta_path}: missing {key!r}")
    for key in ("frames", "height", "width"):
        if type(meta[key]) is not int or meta[key] < 1:
            raise ValueError(f"{meta_path}: {key!r} must be a positive integer, got "
                             f"{meta[key]!r}")
    exposures = meta["exposures"]
    if not isinstance(exposures, list) or len(exposures) != meta["frames"] or not all(
            type(e) in (int, float) for e in exposures):
        raise ValueError(f"{meta_path}: 'exposures' must be a list of {meta['frames']} "
                         f"numbers, got {exposures!r}")
    try:
        classify_long(np.asarray(exposures, np.float64),
                      [f"frame {i}" for i in range(meta["frames"])])
    except ValueError as err:
        raise ValueError(f"{meta_path}: {err}") from None
    return meta


def read_clip(path: str | Path, frames: slice | None = None, with_flow: bool = True) -> Clip:
    """Read a clip folder (optionally a slice of its frames) with checks on every file."""
    path = Path(path)
    meta = read_meta(path)
    idx = range(meta["frames"])[frames or slice(None)]
    shape = (meta["height"], meta["width"], 3)
    ldr = np.stack([_checked(read_ldr(path / "ldr" / frame_name(i, ".png"), depth=16), shape,
                             path, i) for i in idx])
    hdr = None
    if (path / "hdr").is_dir():
        hdr = np.stack([_checked(read_hdr(path / "hdr" / frame_name(i, ".exr")), shape, path, i)
                        for i in idx])
    flow = None
    offsets = tuple(meta.get("flow_offsets", (-2, -1, 1, 2)))
    if with_flow and (path / "flow").is_dir():
        want = (len(offsets), 2, shape[0], shape[1])
        flow = np.stack([_flow(path / "flow" / frame_name(i, ".npy"), want)
                         for i in idx]).astype(np.float32)
    exposures = np.asarray(meta["exposures"], dtype=np.float32)[list(idx)]
    return Clip(ldr=ldr, exposures=exposures, hdr=hdr, flow=flow, flow_offsets=offsets,
                meta=meta)


def _flow(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    try:
        flow = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:  # missing, truncated, or pickled objects
        why = "it holds pickled objects" if "pickle" in str(err) else str(err)
        raise ValueError(f"{path} is not a readable flow array ({why})") from None
    if flow.shape != shape or not np.issubdtype(flow.dtype, np.floating):
        raise ValueError(f"{path}: flow of shape {flow.shape} ({flow.dtype}), expected float "
                         f"{shape}")
    return flow


def _checked(img: np.ndarray, shape: tuple[int, int, int], clip: Path, i: int) -> np.ndarray:
    if img.shape != shape:
        raise ValueError(f"{clip}: frame {i} is {img.shape[1]}x{img.shape[0]}, "
                         f"expected {shape[1]}x{shape[0]} (mixed sizes)")
    return img


def list_clips(root: str | Path) -> list[Path]:
    """Clip folders under `root` (itself, or its sub-folders with a meta.json), sorted."""
    root = Path(root)
    if (root / "meta.json").is_file():
        return [root]
    clips = sorted(p.parent for p in root.glob("*/meta.json"))
    if not clips:
        raise FileNotFoundError(f"no dealthdr clips (folders with meta.json) under {root}")
    return clips
