import os

import numpy as np
import pytest
import torch

# Under pytest-xdist (.ci/run uses -n 2) each worker owns one core: two OpenMP threads per
# worker on a 2-core machine spin-wait on each other (measured 15x slower in test_evaluate).
# The environment variable reaches the CLI subprocesses some tests start, too.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
THREADS = 1 if _WORKER else 2
if _WORKER:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    yield


def textured(n: int = 1, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth random texture in [0, 1] (band-limited, so bilinear warps are accurate)."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.arange(h, dtype=torch.float64).view(h, 1)
    xs = torch.arange(w, dtype=torch.float64).view(1, w)
    out = torch.zeros(n, c, h, w, dtype=torch.float64)
    for _ in range(6):
        f = (torch.rand(n, c, 2, generator=g, dtype=torch.float64) - 0.5) * 0.6
        ph = torch.rand(n, c, 1, 1, generator=g, dtype=torch.float64) * 6.28
        out += torch.sin(f[..., 0, None, None] * ys + f[..., 1, None, None] * xs + ph)
    return ((out - out.min()) / (out.max() - out.min())).float()


def waves(h: int, w: int, seed: int, count: int, freq: float) -> np.ndarray:
    """Sum of `count` random coloured sinusoids (H, W, 3), float64, >= 0; smooth test scenes."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    for _ in range(count):
        fy, fx = rng.uniform(-freq, freq, 2)
        wave = 1 + np.sin(fy * ys + fx * xs + rng.uniform(0, 6))
        img += rng.uniform(0.2, 1, 3) * wave[..., None]
    return img


def untrained_tiny(seed: int = 0):
    """A randomly initialised `tiny`, with its head randomised too. The merge-base head is
    zero at init (the output is then the fixed merge, whatever the decoder computes), which
    would let tests of the decoder path, FGMA policies or export parity pass vacuously."""
    from dealthdr.model import create_model

    torch.manual_seed(seed)
    model = create_model("tiny")
    model.head.reset_parameters()
    return model.eval()
