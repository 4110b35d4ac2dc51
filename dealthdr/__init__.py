"""dealthdr: HDR video from degraded alternating-exposure frames (DeAltHDR), training to device."""
from .model import DeAltHDR, DeAltHDRConfig, create_model, get_config

__version__ = "0.1.0"
__all__ = ["DeAltHDR", "DeAltHDRConfig", "__version__", "create_model", "get_config"]
