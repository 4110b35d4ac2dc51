"""The DeAltHDR network: timm-style, one file per component, a config dataclass per variant."""
from .config import VARIANTS, DeAltHDRConfig, get_config
from .network import DeAltHDR, ForwardStats, bucket_budget


def create_model(variant: str | DeAltHDRConfig = "default") -> DeAltHDR:
    """Build a variant by name ('default', 's', 'tiny') or from a config."""
    cfg = variant if isinstance(variant, DeAltHDRConfig) else get_config(variant)
    return DeAltHDR(cfg)


__all__ = ["DeAltHDR", "DeAltHDRConfig", "ForwardStats", "VARIANTS", "bucket_budget",
           "create_model", "get_config"]
