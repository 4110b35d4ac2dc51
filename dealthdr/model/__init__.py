"""The DeAltHDR network: timm-style, one file per component, a config dataclass per variant.

The configs import eagerly; the network's names on first use, so code that only needs a
variant's config (record readers, the benchmark's summary) does not load torch."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .config import VARIANTS, DeAltHDRConfig, get_config

if TYPE_CHECKING:
    from .network import DeAltHDR

_NETWORK = ("DeAltHDR", "ForwardStats", "bucket_budget")
__all__ = ["DeAltHDR", "DeAltHDRConfig", "ForwardStats", "VARIANTS", "bucket_budget",
           "create_model", "get_config"]


def create_model(variant: str | DeAltHDRConfig = "default") -> DeAltHDR:
    """Build a variant by name ('default', 's', 'tiny') or from a config."""
    from .network import DeAltHDR  # noqa: F811  (lazy: see the module docstring)

    cfg = variant if isinstance(variant, DeAltHDRConfig) else get_config(variant)
    return DeAltHDR(cfg)


def __getattr__(name: str):
    if name in _NETWORK:
        from . import network
        return getattr(network, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
