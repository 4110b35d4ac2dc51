"""Small clip folders with exactly known flow, written in the dealthdr clip format for tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from dealthdr.data.io import write_exr, write_png16
from dealthdr.testclip import _texture


def write_translation_clip(path: Path, frames: int = 7, size: tuple[int, int] = (32, 32),
                           shift: tuple[int, int] = (2, 1), ratio: float = 8.0,
                           noise: float = 0.02, seed: int = 0) -> Path:
    """Frame t is the HDR texture moved by t * shift, so O_{t->t+k} = -k * shift everywhere."""
    h, w = size
    dx, dy = shift
    margin = 4 * frames * max(abs(dx), abs(dy)) + 4
    gen = torch.Generator().manual_seed(seed)
    bg = _texture(h + 2 * margin, w + 2 * margin, gen).permute(1, 2, 0).numpy()
    rng = np.random.default_rng(seed)
    offsets = (-2, -1, 1, 2)
    exposures = []
    for d in ("ldr", "hdr", "flow"):
        (path / d).mkdir(parents=True, exist_ok=True)
    for t in range(frames):
        y0, x0 = margin + t * dy, margin + t * dx
        hdr = bg[y0:y0 + h, x0:x0 + w]
        exposure = ratio if t % 2 else 1.0
        lin = hdr * exposure
        lin = lin + noise * np.sqrt(np.maximum(lin, 1e-4)) * rng.standard_normal(lin.shape)
        write_png16(path / "ldr" / f"{t:06d}.png", np.clip(lin, 0, 1) ** (1 / 2.2))
        write_exr(path / "hdr" / f"{t:06d}.exr", hdr)
        flow = np.full((4, 2, h, w), np.nan, dtype=np.float16)
        for j, k in enumerate(offsets):
            if 0 <= t + k < frames:
                flow[j, 0], flow[j, 1] = -k * dx, -k * dy
        np.save(path / "flow" / f"{t:06d}.npy", flow)
        exposures.append(exposure)
    meta = {"format": "dealthdr-clip/1", "frames": frames, "height": h, "width": w,
            "exposures": exposures, "long": [e > 1 for e in exposures], "exposure_ratio": ratio,
            "gt_units": "linear, short exposure", "flow_offsets": list(offsets), "seed": seed}
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def write_dataset(root: Path, clips: int = 2, **kwargs) -> Path:
    for i in range(clips):
        write_translation_clip(root / f"clip_{i:04d}", seed=i, **kwargs)
    return root
