"""Which frames of an alternating short/long sequence are long, from their exposures: the one
rule every reader (image folders, RAW sets, videos, clip folders) applies."""
from __future__ import annotations

import math

import numpy as np

MIN_FRAMES = 3  # a reflected 5-frame window needs t +- 2 to exist after one reflection
SAME_EXPOSURE = 1.05  # longest / shortest below this: there is no long exposure


def classify_long(exposures: np.ndarray, names: list[str]) -> np.ndarray:
    """Which frames are long, from the exposures; ValueError unless they alternate."""
    e = np.asarray(exposures, dtype=np.float64)
    if e.ndim != 1 or len(e) != len(names):
        raise ValueError(f"{len(e)} exposures for {len(names)} frames")
    if not np.isfinite(e).all() or (e <= 0).any():
        bad = int(np.flatnonzero(~(np.isfinite(e) & (e > 0)))[0])
        raise ValueError(f"exposure of {names[bad]} is {e[bad]}: exposures must be positive")
    if len(e) < MIN_FRAMES:
        raise ValueError(f"{len(e)} frames: an alternating-exposure sequence needs at least "
                         f"{MIN_FRAMES}")
    if e.max() / e.min() < SAME_EXPOSURE:
        raise ValueError(f"all {len(e)} frames have the same exposure ({e.min():g}): not an "
                         "alternating short/long sequence")
    long = e > math.sqrt(e.min() * e.max())
    same = np.flatnonzero(long[1:] == long[:-1])
    if same.size:
        i = int(same[0])
        kind = "long" if long[i] else "short"
        raise ValueError(f"the sequence does not alternate short/long exposures: {names[i]} "
                         f"and {names[i + 1]} are both {kind} ({e[i]:g}, {e[i + 1]:g})")
    return long
