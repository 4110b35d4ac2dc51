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
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{path} is not a readable safetensors file: {err}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        # torch's message is a page of advice on weights_only; the file is simply refused
        raise ValueError(f"{path} is not a plain tensor state dict ({what} weights): "
                         f"torch.load(weights_only=True) refused it "
                         f"({type(err).__name__})") from None
