"""What one exported graph is: a sensitivity s, a centre exposure and an attention budget K
(FGMA tiles per neighbour at each decoder level).

A window's graph depends on which of its frames are long (each encoder runs once on its own
frames, so the batch split is structural): a phone running an alternating stream needs one graph
for short-centred windows and one for long-centred windows. Each s-bucket is therefore exported
for `--centre both` by default; `short` or `long` halves the set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dealthdr.calib.buckets import s_key
from dealthdr.model import DeAltHDR
from dealthdr.model.inputs import window_pattern
from dealthdr.model.network import level_tiles
from dealthdr.sensitivity import s_text


@dataclass(frozen=True)
class Bucket:
    s: float
    centre: str                                  # "short" or "long"
    ratio: tuple[float, float, float]            # tile-ratio budget per level (1, 2, 3)
    budget: tuple[int, int, int]                 # K tiles per level and neighbour
    tile: int                                    # FGMA tile side (the variant's attn_tile)

    @property
    def s_key(self) -> str:
        return s_text(self.s)

    @property
    def s_stem(self) -> str:
        """s in file and function names: s15, sinf, s0.5 -> s0p5."""
        return f"s{self.s_key.replace('.', 'p')}"

    @property
    def name(self) -> str:
        """Function / method / file stem: s15_short, sinf_long, s0.5_short -> s0p5_short."""
        return f"{self.s_stem}_{self.centre}"

    def record(self) -> dict:
        return {"s": self.s_key, "centre": self.centre, "bucket_k": list(self.budget),
                "tile": self.tile, "attention_ratio_budget": list(self.ratio)}


def make_buckets(calibration: dict, s_values: list[float], size: tuple[int, int],
                 centres: tuple[str, ...], tile: int) -> list[Bucket]:
    """Buckets for every (s, centre), with K from the calibrated tile ratio at this size."""
    if calibration.get("tile", tile) != tile:
        raise ValueError(f"the bucket calibration counts {calibration['tile']}x"
                         f"{calibration['tile']} tiles but the model runs FGMA in {tile}x{tile} "
                         "tiles; recalibrate with this checkpoint")

    by_s = {b["s"]: b for b in calibration["buckets"]}
    missing = [s_key(s) for s in s_values if s_key(s) not in by_s]
    if missing:
        raise ValueError(f"the bucket calibration has no entry for s={missing} "
                         f"(it has {sorted(by_s)}); recalibrate with these s")
    tiles = level_tiles(size, tile)
    out = []
    for s in s_values:
        ratio = tuple(float(r) for r in by_s[s_key(s)]["ratio"])
        budget = tuple(0 if s == 0 else n if math.isinf(s) else min(n, max(1, math.ceil(r * n)))
                       for r, n in zip(ratio, tiles))
        out.extend(Bucket(s, c, ratio, budget, tile) for c in centres)
    return out


def group_by_s(buckets: list[Bucket]) -> dict[str, list[Bucket]]:
    """{s_key: that s's buckets (one per centre)}, in the buckets' order: one program per s."""
    out: dict[str, list[Bucket]] = {}
    for b in buckets:
        out.setdefault(b.s_key, []).append(b)
    return out


class BucketGraph(nn.Module):
    """The network with s, K and the exposure pattern fixed: forward(frames, exposures) -> HDR.

    frames (1, T, 3, H, W) gamma LDR in [0, 1], T the model's `num_frames`; exposures (1, T)
    relative exposure times (an input, so auto-exposure may change the ratio at run time).
    Output (1, 3, H, W) linear HDR in the short exposure's units."""

    def __init__(self, model: DeAltHDR, bucket: Bucket) -> None:
        super().__init__()
        self.model = model
        self.bucket = bucket
        self.long_pattern = window_pattern(bucket.centre, model.cfg.num_frames)

    def forward(self, frames: torch.Tensor, exposures: torch.Tensor) -> torch.Tensor:
        return self.model(frames, exposures, s=self.bucket.s, budget=self.bucket.budget,
                          long_pattern=self.long_pattern)


def example_inputs(bucket: Bucket, size: tuple[int, int],
                   frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A window of `frames` frames (the model's `num_frames`) with the bucket's pattern."""
    return window_inputs(bucket.centre, size, frames)


def window_inputs(centre: str, size: tuple[int, int],
                  frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A window of `frames` frames with the exposure pattern of a `centre` exposure."""
    h, w = size
    gen = torch.Generator().manual_seed(0)
    window = torch.rand(1, frames, 3, h, w, generator=gen)
    exposures = torch.tensor([[8.0 if p else 1.0 for p in window_pattern(centre, frames)]])
    return window, exposures


def export_program(model: DeAltHDR, bucket: Bucket, size: tuple[int, int]):
    """torch.export of one bucket at a fixed shape (strict=False: the model reads Python
    config, not traced state)."""
    graph = BucketGraph(model.eval(), bucket).eval()
    with torch.no_grad():
        return torch.export.export(graph, example_inputs(bucket, size, model.cfg.num_frames),
                                   strict=False)
