"""Quality and host latency of a quantized variant, as the report states them.

Quality is PSNR-mu against the synthetic ground truth, normalised at the short exposure's
white (peak 1), as `dealthdr evaluate` scores; averaged over the held-out windows of a bucket's
centre exposure. Latency is the median of timed runs after warm-up, on the same input for
every runtime (one process, nothing else scheduled by this tool).
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np
import torch

from dealthdr.metrics import psnr_mu


def quality(run: Callable, windows: list, centre: str) -> dict:
    """Mean PSNR-mu vs ground truth of `run(frames, exposures)` on the windows of `centre`."""
    mine = [w for w in windows if w.centre == centre]
    if not mine:
        raise ValueError(f"no held-out windows with a {centre}-exposure centre")
    scores = []
    with torch.no_grad():
        for w in mine:
            out = torch.as_tensor(np.asarray(run(w.frames, w.exposures)), dtype=torch.float32)
            if not torch.isfinite(out).all():
                raise FloatingPointError(f"output has NaN/Inf on {w.name}")
            scores.append(psnr_mu(out, w.hdr, peak=1.0))
    return {"psnr_mu": float(np.mean(scores)), "per_window": [round(s, 3) for s in scores],
            "windows": len(mine)}


def agreement(run: Callable, reference: Callable, windows: list, centre: str) -> dict:
    """PSNR-mu of `run` against `reference` (e.g. a .pte against its torch graph)."""
    out = {"psnr_mu_db": [], "max_abs": 0.0}
    with torch.no_grad():
        for w in (w for w in windows if w.centre == centre):
            a = torch.as_tensor(np.asarray(run(w.frames, w.exposures)), dtype=torch.float32)
            b = torch.as_tensor(np.asarray(reference(w.frames, w.exposures)),
                                dtype=torch.float32)
            out["psnr_mu_db"].append(psnr_mu(a, b, peak=1.0))
            out["max_abs"] = max(out["max_abs"], float((a - b).abs().max()))
    out["psnr_mu_db"] = min(out["psnr_mu_db"])
    return out


def latency_ms(run: Callable, inputs: tuple, warmup: int = 2, repeat: int = 7) -> dict:
    for _ in range(warmup):
        run(*inputs)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        run(*inputs)
        times.append((time.perf_counter() - t) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times),
            "max_ms": max(times), "repeat": repeat, "warmup": warmup}
