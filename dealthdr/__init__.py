"""dealthdr: HDR video from degraded alternating-exposure frames (DeAltHDR), training to device.

The network's names are imported on first use, so `import dealthdr` (and commands that only read
records, such as `dealthdr bench summary`) does not load torch.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["DeAltHDR", "DeAltHDRConfig", "__version__", "create_model", "get_config"]


def __getattr__(name: str):
    if name in __all__:
        from . import model
        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
