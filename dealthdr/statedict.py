"""Reading foreign weight files (BasicSR SpyNet, torchvision VGG16) without running pickled code."""
from __future__ import annotations

from pathlib import Path

import torch


def read_state_dict(path: str | Path, what: str) -> dict:
    """A state dict from `.safetensors` (safetensors) or `.pth` (torch.load weights_only=True,
    which refuses pickled code, so an untrusted file cannot execute anything)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise ValueError(f"{path} is not a plain tensor state dict: {err}") from None
