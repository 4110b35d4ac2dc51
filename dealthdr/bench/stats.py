"""Timing statistics and the latency-vs-attention-ratio fit, in plain Python (tested on known
numbers).

Trimmed statistics, in the spirit of Apple's ModelBench (which drops the 10 fastest and 10
slowest of 50 inferences a round): the `trim` share of the fastest and of the slowest samples
is dropped (a page fault, a scheduler hiccup, a turbo burst), then the median, p10 and p90 of
what is left are reported. Percentiles interpolate linearly between closest ranks (numpy's
default, Excel's PERCENTILE.INC).
"""
from __future__ import annotations

import math


def percentile(values: list[float], q: float) -> float:
    """q-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def trimmed(values: list[float], trim: float) -> list[float]:
    """The samples left after dropping floor(trim * n) from each end (at least one kept)."""
    if not 0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim}")
    xs = sorted(values)
    k = math.floor(trim * len(xs))
    return xs[k:len(xs) - k] if len(xs) - 2 * k >= 1 else xs


def latency_stats(samples_ms: list[float], trim: float = 0.1) -> dict:
    """{latency_ms_median, latency_ms_p10, latency_ms_p90, latency_ms_mean, samples_kept}."""
    if not samples_ms:
        raise ValueError("no timed samples")
    if any(not math.isfinite(v) or v <= 0 for v in samples_ms):
        raise ValueError(f"timings must be positive and finite, got {samples_ms}")
    kept = trimmed(samples_ms, trim)
    return {"latency_ms_median": percentile(kept, 50), "latency_ms_p10": percentile(kept, 10),
            "latency_ms_p90": percentile(kept, 90),
            "latency_ms_mean": sum(kept) / len(kept), "samples_kept": len(kept)}


def fit_line(xs: list[float], ys: list[float]) -> dict:
    """Least squares y = intercept + slope * x, with residuals.

    Returns intercept, slope, r2, rms_residual and max_abs_residual (in y's unit), and
    max_rel_residual (max |residual| / mean y). With one distinct x the slope is undefined:
    slope None, intercept the mean."""
    if len(xs) != len(ys) or not xs:
        raise ValueError("fit_line needs equally many x and y values, at least one")
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        res = [y - my for y in ys]
        return {"intercept": my, "slope": None, "r2": None, "points": n,
                "rms_residual": math.sqrt(sum(r * r for r in res) / n),
                "max_abs_residual": max(abs(r) for r in res),
                "max_rel_residual": max(abs(r) for r in res) / my if my else None}
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    res = [y - (intercept + slope * x) for x, y in zip(xs, ys)]
    ss_res = sum(r * r for r in res)
    ss_tot = sum((y - my) ** 2 for y in ys)
    return {"intercept": intercept, "slope": slope, "points": n,
            "r2": 1 - ss_res / ss_tot if ss_tot else 1.0,
            "rms_residual": math.sqrt(ss_res / n),
            "max_abs_residual": max(abs(r) for r in res),
            "max_rel_residual": max(abs(r) for r in res) / my if my else None}


def geometric_mean(values: list[float]) -> float:
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"geometric mean needs positive values, got {values}")
    return math.exp(sum(math.log(v) for v in values) / len(values))
