import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(2)
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
