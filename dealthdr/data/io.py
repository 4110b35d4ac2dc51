"""Image I/O with clear errors and atomic writes: 16-bit PNG (OpenCV), OpenEXR, Radiance .hdr.

Arrays are float32 (H, W, 3) in RGB order everywhere in dealthdr; OpenCV's BGR stays in here.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ..fileio import default_file_mode

HDR_SUFFIXES = (".exr", ".hdr")


def _tmp_path(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    os.chmod(tmp, default_file_mode())
    return Path(tmp)


def _commit(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)


def write_png16(path: str | Path, rgb: np.ndarray) -> None:
    """Write RGB in [0, 1] as a 16-bit PNG (values rounded to 1/65535)."""
    import cv2
    path = Path(path)
    data = np.round(np.clip(rgb, 0, 1) * 65535).astype(np.uint16)[..., ::-1]
    tmp = _tmp_path(path)
    try:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(data)):
            raise OSError(f"OpenCV could not write {path}")
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_ldr(path: str | Path, depth: int | None = None) -> np.ndarray:
    """Read an 8- or 16-bit RGB image (PNG, TIFF, ...) as float32 in [0, 1]; `depth` (8 or
    16), where a format fixes it, refuses the other."""
    import cv2
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    if img is None:
        raise ValueError(f"{path} is not a readable image")
    if img.dtype == np.uint8:
        scale = 255.0
    elif img.dtype == np.uint16:
        scale = 65535.0
    else:
        raise ValueError(f"{path}: expected 8- or 16-bit integer pixels, got {img.dtype}")
    if depth is not None and img.itemsize * 8 != depth:
        raise ValueError(f"{path}: {img.itemsize * 8}-bit image, expected {depth}-bit")
    if img.ndim == 2 or img.shape[2] not in (3, 4):
        raise ValueError(f"{path}: expected an RGB image, got shape {img.shape}")
    return (img[..., 2::-1].astype(np.float32) / scale).copy()


def write_exr(path: str | Path, rgb: np.ndarray, half: bool = False) -> None:
    """Write linear RGB (H, W, 3) as OpenEXR (ZIP compression, lossless)."""
    import OpenEXR
    path = Path(path)
    data = np.ascontiguousarray(rgb, dtype=np.float16 if half else np.float32)
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    tmp = _tmp_path(path)
    try:
        with OpenEXR.File(header, {"RGB": data}) as f:
            f.write(str(tmp))
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def exr_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an OpenEXR file from its header alone (no pixels read)."""
    import OpenEXR
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HDR image not found: {path}")
    try:
        with OpenEXR.File(str(path), header_only=True) as f:
            lo, hi = f.header()["dataWindow"]
    except (RuntimeError, OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path} is not a readable OpenEXR file: {err}") from None
    return int(hi[1] - lo[1] + 1), int(hi[0] - lo[0] + 1)


def read_hdr(path: str | Path) -> np.ndarray:
    """Read a linear HDR image (.exr via OpenEXR, .hdr via OpenCV) as float32 RGB (H, W, 3).

    Lossy EXR codecs (DWA) leave a few small negative samples: they are clamped to 0.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HDR image not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".exr":
        import OpenEXR
        try:
            with OpenEXR.File(str(path), separate_channels=True) as f:
                ch = f.channels()
                names = {k.split(".")[-1]: k for k in ch}
                img = None
                if all(c in names for c in "RGB"):
                    img = np.stack([ch[names[c]].pixels for c in "RGB"], axis=-1)
        except (RuntimeError, OSError, ValueError) as err:  # a truncated file: ValueError
            raise ValueError(f"{path} is not a readable OpenEXR file: {err}") from None
        if img is None:
            raise ValueError(f"{path}: EXR without R, G, B channels ({sorted(ch)})")
    elif suffix == ".hdr":
        import cv2
        bgr = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"{path} is not a readable Radiance .hdr file")
        img = bgr[..., ::-1]
    else:
        raise ValueError(f"{path}: not an HDR image (expected one of {HDR_SUFFIXES})")
    img = np.asarray(img, dtype=np.float32)
    if not np.isfinite(img).all():
        raise ValueError(f"{path}: HDR image contains NaN or Inf")
    return np.maximum(img, 0).copy()
