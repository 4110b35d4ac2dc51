"""The parity gate every exporter runs on its own artifacts before it keeps them.

An artifact's output is compared with the eager torch model running the same bucket (same s, K,
exposure pattern) on held-out windows: PSNR in the mu-law domain (normalised at the short
exposure's white, as `dealthdr evaluate` scores) and max-abs error. Below the threshold the
export fails and leaves nothing behind. Where a window's masked set fits the bucket (every item
has |M| <= K at every level), the artifact is also compared with the dynamic-policy model: the
bucket policy is exact there, so this checks the whole fixed-shape construction.
"""
from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np
import torch

from dealthdr.calib.buckets import item_ratios
from dealthdr.calib.windows import Window
from dealthdr.export.buckets import Bucket, BucketGraph
from dealthdr.metrics import psnr_mu
from dealthdr.model.fgma import bucket_tiles
from dealthdr.model.network import level_tiles

log = logging.getLogger(__name__)

THRESHOLD_DB = {"fp32": 45.0, "fp16": 35.0, "int8": 30.0}


class GateFailed(RuntimeError):
    """An artifact's output is too far from the torch model's."""


def fits_bucket(model, window: Window, bucket: Bucket) -> bool:
    if bucket.s == 0 or math.isinf(bucket.s):
        return True
    size = tuple(window.frames.shape[-2:])
    for ratios, n, k in zip(item_ratios(model, window, bucket.s), level_tiles(size, bucket.tile),
                            bucket.budget):
        if np.round(ratios * n).max() > bucket_tiles(k, n):  # a dense bucket fits everything
            return False
    return True


def _compare(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    return psnr_mu(out, ref, peak=1.0), float((out - ref).abs().max())


def run_gate(run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], model,
             bucket: Bucket, windows: list[Window], precision: str, ran_on: str,
             threshold_db: float | None = None, reference: Callable | None = None) -> dict:
    """Gate one artifact (its `run` maps frames, exposures -> HDR). Raises GateFailed.

    `reference`: the function the artifact must reproduce, when it is not the float model
    (an int8 program is gated against its converted torch graph, whose int8 arithmetic it
    runs; its distance to fp32 is a quality figure, reported apart)."""
    threshold = THRESHOLD_DB[precision] if threshold_db is None else threshold_db
    mine = [w for w in windows if w.centre == bucket.centre]
    if not mine:
        raise ValueError(f"no parity windows with a {bucket.centre}-exposure centre")
    graph = BucketGraph(model, bucket).eval() if reference is None else reference
    psnrs, max_abs, dyn = [], 0.0, []
    for w in mine:
        with torch.no_grad():
            ref = graph(w.frames, w.exposures)
        out = torch.as_tensor(np.asarray(run(w.frames, w.exposures)), dtype=torch.float32)
        if out.shape != ref.shape:
            raise GateFailed(f"{bucket.name}: artifact output shape {tuple(out.shape)} != "
                             f"{tuple(ref.shape)}")
        if not torch.isfinite(out).all():
            raise GateFailed(f"{bucket.name}: artifact output has NaN/Inf on {w.name}")
        p, m = _compare(out, ref)
        psnrs.append(p)
        max_abs = max(max_abs, m)
        if reference is None and fits_bucket(model, w, bucket):
            with torch.no_grad():
                dynamic = model(w.frames, w.exposures, s=bucket.s)
            dyn.append(_compare(out, dynamic)[1])
    result = {"psnr_mu_db": min(psnrs), "max_abs": max_abs, "windows": len(mine),
              "threshold_db": threshold, "ran_on": ran_on,
              "vs_dynamic": {"windows_fitting_bucket": len(dyn),
                             "max_abs": max(dyn) if dyn else None}}
    result["passed"] = result["psnr_mu_db"] >= threshold
    log.info("gate %s: PSNR-mu %.2f dB (threshold %.0f), max-abs %.2e, vs dynamic %s",
             bucket.name, result["psnr_mu_db"], threshold, max_abs, result["vs_dynamic"])
    if not result["passed"]:
        raise GateFailed(f"{bucket.name}: parity {result['psnr_mu_db']:.2f} dB PSNR-mu < "
                         f"{threshold:.0f} dB threshold (max-abs {max_abs:.3g}); nothing written")
    return result


def pending_gate(reason: str, precision: str) -> dict:
    """The record of a gate that could not run here (Core ML prediction needs macOS)."""
    return {"psnr_mu_db": None, "max_abs": None, "threshold_db": THRESHOLD_DB[precision],
            "ran_on": None, "passed": None, "pending": reason}
