"""HDR scenes sampled at the sub-frame rate, and the short/long exposure schedule over them.

A scene renders linear HDR sub-frames by index (`subframes` of them per exposure pair) and, when
its motion is known, the exact flow between two sub-frames. Exposures integrate sub-frames:
within each pair the first sub-frame is the short exposure and the remaining ones are averaged
into the long exposure (paper, Sec. 4.1, steps 1-2). Ground truth of a short frame is its own
sub-frame; of a long frame the middle sub-frame of its window (App. A, Fig. A).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .foreground import Sprite, composite, composite_flow
from .panorama import CameraPath, camera_flow, render_views

# Rendered pixels per batched sampling call (bounds memory at large sizes).
_CHUNK_PIXELS = 1_000_000


@dataclass(frozen=True)
class Exposure:
    """One output frame: sub-frames [start, start + count) and its ground-truth sub-frame."""
    long: bool
    start: int
    count: int

    @property
    def gt(self) -> int:
        return self.start + (self.count - 1) // 2


def exposure_schedule(frames: int, subframes: int, start_long: bool = False) -> list[Exposure]:
    """Alternating short/long exposures over consecutive `subframes`-long pairs.

    With `start_long` the clip begins with the long exposure of the first pair (its short
    sub-frame is simply not used), so the alternation and the timing stay those of the paper.
    """
    out = []
    for k in range(frames):
        pair, is_long = divmod(k + int(start_long), 2)
        base = pair * subframes
        out.append(Exposure(True, base + 1, subframes - 1) if is_long
                   else Exposure(False, base, 1))
    return out


class PanoramaScene:
    """A camera moving in a panorama, with sprites in front; exact flow."""

    def __init__(self, pano: torch.Tensor, camera: CameraPath, sprites: list[Sprite],
                 height: int, width: int, subframes: int) -> None:
        self.pano, self.camera, self.sprites = pano, camera, sprites
        self.h, self.w, self.subframes = height, width, subframes

    def render(self, idx: np.ndarray) -> torch.Tensor:
        """HDR sub-frames (N, 3, h, w) at sub-frame indices idx."""
        t = np.asarray(idx, np.float64) / self.subframes
        rot, f = self.camera.pose(t)
        return composite(render_views(self.pano, rot, f, self.h, self.w), self.sprites, t)

    def flow(self, a: int, b: int) -> np.ndarray:
        """O_{a->b} (2, h, w) between sub-frames a and b."""
        ta, tb = a / self.subframes, b / self.subframes
        (rot_a, rot_b), f = self.camera.pose(np.array([ta, tb]))
        flow = camera_flow(rot_a, f[0], rot_b, f[1], self.h, self.w)
        return composite_flow(flow, self.sprites, ta, tb)


class VideoScene:
    """Frames of an HDR video used directly as sub-frames (a crop at a temporal offset)."""

    def __init__(self, frames: np.ndarray, offset: int, y: int, x: int, height: int,
                 width: int) -> None:
        self.frames, self.offset, self.y, self.x = frames, offset, y, x
        self.h, self.w = height, width

    def render(self, idx: np.ndarray) -> torch.Tensor:
        sel = self.frames[np.asarray(idx) + self.offset, self.y:self.y + self.h,
                          self.x:self.x + self.w]
        return torch.from_numpy(np.ascontiguousarray(sel.transpose(0, 3, 1, 2)))

    flow = None  # no camera model: the video's motion is unknown


def render_exposures(scene: PanoramaScene | VideoScene, schedule: list[Exposure], height: int,
                     width: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Integrate every exposure of `schedule`: (mean HDR per frame, GT sub-frame per frame),
    each (H, W, 3) float64. Sub-frames are rendered once, in order, in batches."""
    owner: dict[int, int] = {}
    for k, e in enumerate(schedule):
        owner.update({s: k for s in range(e.start, e.start + e.count)})
    gt_of = {e.gt: k for k, e in enumerate(schedule)}
    idx = np.array(sorted(owner))
    sums = [np.zeros((height, width, 3)) for _ in schedule]
    gts: list[np.ndarray | None] = [None] * len(schedule)
    chunk = max(1, min(32, _CHUNK_PIXELS // (height * width)))
    for i in range(0, len(idx), chunk):
        part = idx[i:i + chunk]
        imgs = scene.render(part).permute(0, 2, 3, 1).numpy()
        for s, img in zip(part.tolist(), imgs):
            sums[owner[s]] += img  # sequential float64 sums: bit-reproducible
            if s in gt_of:
                gts[gt_of[s]] = img.astype(np.float64)
    means = [total / e.count for total, e in zip(sums, schedule)]
    return means, gts
