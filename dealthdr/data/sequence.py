"""Alternating-exposure footage as a user has it: image sequences, video files, RAW bursts and
`dealthdr synth` clip folders, read into the network's input convention.

`open_sequence(path)` returns a `Sequence`: frame names, exposures and which frames are long,
checked up front (sizes, bit depths, readability of headers, exposure information, alternation)
so that a command fails before it writes anything. Pixels are read lazily, frame by frame.
`Sequence.frame(i)` is what the network takes: gamma-encoded RGB float32 (H, W, 3) in [0, 1].
PNG/TIFF/video frames already are; RAW frames are developed by dealthdr.data.rawseq the way the
synthesis (dealthdr.data.degrade.process) develops its simulated RAW.

Exposures, first found wins:
    clip folder   meta.json "exposures"
    RAW           EXIF ExposureTime x ISO of each file (the gain scales the signal like time)
    TIFF          EXIF ExposureTime x ISO, when every file has them
    sidecar       exposures.json in the folder: {"frame_000.png": 1.0, "frame_001.png": 8.0};
                  for a video, {"clip.mp4": [1, 8]}: one value per frame, or a cycle repeated
    `exposure_cycle` argument (the CLI's --exposure-cycle) overrides all of them.
Long frames are those above the geometric mean of the shortest and longest exposure: found from
the exposures, never assumed from the position.
"""
from __future__ import annotations

import json
import logging
import re
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .clip import FORMAT as CLIP_FORMAT, frame_name, read_meta
from .exposure import MIN_FRAMES, classify_long
from .io import exr_size, read_hdr, read_ldr
from .rawseq import develop, raw_header

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
RAW_SUFFIXES = (".dng",)
VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".m4v", ".webm")
SIDECAR = "exposures.json"
_CACHE = 8  # frames kept decoded: a sliding 5-frame window plus reflections at the ends


@dataclass(eq=False)
class Sequence:
    """An alternating-exposure sequence; pixels are read on demand (`frame`)."""
    kind: str                          # "images", "video", "raw" or "clip"
    path: Path
    names: list[str]
    exposures: np.ndarray              # (F,) float64, any unit (seconds x ISO, relative, ...)
    height: int
    width: int
    loader: Callable[[int], np.ndarray]
    hdr_loader: Callable[[int], np.ndarray] | None = None  # ground truth (clip folders)
    info: dict = field(default_factory=dict)
    _cache: OrderedDict = field(default_factory=OrderedDict, repr=False)

    def __post_init__(self) -> None:
        self.long = classify_long(self.exposures, self.names)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def exposure_ratio(self) -> float:
        """Median long / median short exposure."""
        e = self.exposures
        return float(np.median(e[self.long]) / np.median(e[~self.long]))

    def frame(self, i: int) -> np.ndarray:
        """Frame i as the network takes it: gamma-encoded RGB float32 (H, W, 3) in [0, 1]."""
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        img = self.loader(i)
        if img.shape != (self.height, self.width, 3):
            raise ValueError(f"{self.names[i]} is {img.shape[1]}x{img.shape[0]}, the sequence "
                             f"is {self.width}x{self.height} (mixed resolutions)")
        self._cache[i] = img
        if len(self._cache) > _CACHE:
            self._cache.popitem(last=False)
        return img

    def describe(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "frames": len(self),
                "height": self.height, "width": self.width,
                "exposures": [float(v) for v in self.exposures],
                "long": [bool(v) for v in self.long],
                "exposure_ratio": self.exposure_ratio, **self.info}


def natural_key(name: str) -> list:
    """'f2.png' before 'f10.png'."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _png_header(path: Path) -> tuple[int, int, int]:
    """(width, height, bit depth) from a PNG's IHDR; ValueError unless it is 8/16-bit colour."""
    with path.open("rb") as f:
        head = f.read(29)
    if len(head) < 29 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a readable PNG file (bad or truncated header)")
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    if colour in (0, 4):
        raise ValueError(f"{path}: greyscale PNG; expected RGB frames")
    if depth not in (8, 16):
        raise ValueError(f"{path}: {depth}-bit PNG; expected 8- or 16-bit RGB")
    return width, height, depth


def _tiff_header(path: Path) -> tuple[int, int, int, float | None]:
    """(width, height, bit depth, exposure time x ISO or None) of a TIFF's first page."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            shape, dtype, tags = page.shape, page.dtype, page.tags
            exif = dict(tags["ExifTag"].value) if "ExifTag" in tags else {}
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError) as err:
        raise ValueError(f"{path} is not a readable TIFF file: {err}") from None
    if dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: {dtype} TIFF; expected 8- or 16-bit integer LDR frames "
                         "(a float TIFF is HDR already)")
    if len(shape) != 3 or shape[-1] not in (3, 4):
        raise ValueError(f"{path}: TIFF of shape {shape}; expected RGB frames")
    exposure = _exif_exposure(exif)
    return shape[1], shape[0], dtype.itemsize * 8, exposure


def _exif_exposure(exif: dict) -> float | None:
    t = exif.get("ExposureTime")
    if isinstance(t, tuple):
        t = t[0] / t[1] if len(t) == 2 and t[1] else None
    if not t:
        return None
    iso = exif.get("ISOSpeedRatings") or exif.get("ISOSpeed") or 1
    iso = iso[0] if isinstance(iso, (tuple, list)) else iso
    return float(t) * float(iso)


def read_sidecar(folder: Path, names: list[str]) -> np.ndarray | None:
    """Exposures of `names` from folder/exposures.json; None when there is no sidecar."""
    path = folder / SIDECAR
    if not path.is_file():
        return None
    doc = _read_json(path)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected an object mapping file names to exposures")
    missing = [n for n in names if n not in doc]
    if missing:
        raise ValueError(f"{path} gives no exposure for {len(missing)} of {len(names)} frames "
                         f"(first: {missing[0]})")
    if not all(_is_number(doc[n]) for n in names):  # json's true would read as 1.0
        raise ValueError(f"{path}: exposures must be numbers")
    return np.array([float(doc[n]) for n in names])


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: invalid JSON: {err}") from None


def _is_number(x) -> bool:
    return type(x) in (int, float)


def expand_cycle(values, count: int, source: str) -> np.ndarray:
    """One exposure per frame, or a shorter cycle repeated over `count` frames."""
    # a string would iterate as digits ("18" as [1, 8]), a bool read as 1.0
    if isinstance(values, (str, bytes, dict)) or not all(
            _is_number(x) or isinstance(x, np.number) for x in values):
        raise ValueError(f"{source}: exposures must be a list of numbers")
    v = np.array([float(x) for x in values])
    if v.size == 0 or v.size > count:
        raise ValueError(f"{source}: {v.size} exposures for {count} frames; give one per frame "
                         "or a cycle such as [1, 8]")
    if v.size < count and count % v.size:
        log.warning("%s: the %d-value cycle does not divide %d frames", source, v.size, count)
    return np.resize(v, count)


def _missing_exposures(path: Path, names: list[str], lacking: list[str] | None = None,
                       ) -> ValueError:
    example = json.dumps({n: e for n, e in zip(names[:2], (1.0, 8.0))})
    where = "no metadata in the files" if not lacking else \
        f"{len(lacking)} of {len(names)} files carry no exposure metadata, first {lacking[0]}"
    return ValueError(f"{path}: no exposure information ({where}, and no "
                      f"{SIDECAR}); write {path / SIDECAR} mapping each file name to its "
                      f"relative exposure, e.g. {example}, or pass --exposure-cycle 1,8")


def _open_clip(path: Path) -> Sequence:
    meta = read_meta(path)
    names = [frame_name(i, ".png") for i in range(meta["frames"])]
    ldr = path / "ldr"
    for n in names:  # every frame's header up front, as for image folders
        if not (ldr / n).is_file():
            raise FileNotFoundError(f"{path}: frame {ldr / n} is missing")
        width, height, depth = _png_header(ldr / n)
        if (height, width, depth) != (meta["height"], meta["width"], 16):
            raise ValueError(f"{ldr / n}: {height}x{width} {depth}-bit PNG, the clip's frames "
                             f"are {meta['height']}x{meta['width']} 16-bit")
    hdr = None
    if (path / "hdr").is_dir():  # the ground truth's sizes up front too, from the headers
        for i in range(meta["frames"]):
            gt = path / "hdr" / frame_name(i, ".exr")
            size = exr_size(gt)
            if size != (meta["height"], meta["width"]):
                raise ValueError(f"{gt}: ground truth of {size[0]}x{size[1]}, the clip's "
                                 f"frames are {meta['height']}x{meta['width']}")
        hdr = lambda i: read_hdr(path / "hdr" / frame_name(i, ".exr"))  # noqa: E731
    return Sequence("clip", path, names, np.asarray(meta["exposures"], dtype=np.float64),
                    meta["height"], meta["width"], lambda i: read_ldr(ldr / names[i], 16), hdr,
                    {"format": CLIP_FORMAT})


def _open_images(path: Path, files: list[Path]) -> Sequence:
    names = [p.name for p in files]
    sizes, depths, metadata = [], [], []
    for p in files:
        if p.suffix.lower() == ".png":
            w, h, d = _png_header(p)
            e = None
        else:
            w, h, d, e = _tiff_header(p)
        sizes.append((w, h))
        depths.append(d)
        metadata.append(e)
    _same_size(names, sizes)
    if len(set(depths)) > 1:
        i = next(j for j, d in enumerate(depths) if d != depths[0])
        raise ValueError(f"mixed bit depths: {names[0]} is {depths[0]}-bit, {names[i]} is "
                         f"{depths[i]}-bit")
    exposures, source = _exposures(path, names, metadata)
    return Sequence("images", path, names, exposures, sizes[0][1], sizes[0][0],
                    lambda i: read_ldr(files[i]), None,
                    {"bit_depth": depths[0], "exposure_source": source})


def _exposures(path: Path, names: list[str], metadata: list) -> tuple[np.ndarray, str]:
    """Every file's own exposure metadata, else the sidecar; (exposures, where from)."""
    if all(e is not None for e in metadata):
        return np.array(metadata, dtype=np.float64), "metadata"
    exposures = read_sidecar(path, names)
    if exposures is None:
        lacking = [n for n, e in zip(names, metadata) if e is None]
        raise _missing_exposures(path, names, lacking if len(lacking) < len(names) else None)
    return exposures, SIDECAR


def _same_size(names: list[str], sizes: list[tuple[int, int]]) -> None:
    for n, s in zip(names, sizes):
        if s != sizes[0]:
            raise ValueError(f"mixed resolutions: {names[0]} is {sizes[0][0]}x{sizes[0][1]}, "
                             f"{n} is {s[0]}x{s[1]}")


def _open_raw(path: Path, files: list[Path]) -> Sequence:
    names = [p.name for p in files]
    heads = [raw_header(p) for p in files]
    _same_size(names, [(h.width, h.height) for h in heads])
    metadata = [h.exposure for h in heads]
    exposures, source = _exposures(path, names, metadata)
    info = {"exposure_source": source, "exposure_time_s": [h.exposure_time for h in heads],
            "iso": [h.iso for h in heads], "cfa": heads[0].cfa}
    return Sequence("raw", path, names, exposures, heads[0].height, heads[0].width,
                    lambda i: develop(files[i]), None, info)


class _VideoReader:
    """Sequential decoding with re-opening for backward jumps (seeking is unreliable)."""

    def __init__(self, path: Path) -> None:
        self.path, self.cap, self.pos = path, None, 0

    def __call__(self, i: int) -> np.ndarray:
        import cv2

        if self.cap is None or i < self.pos:
            self.cap, self.pos = cv2.VideoCapture(str(self.path)), 0
        while True:
            ok, bgr = self.cap.read()
            if not ok:
                raise ValueError(f"{self.path}: could not decode frame {i}")
            self.pos += 1
            if self.pos - 1 == i:
                return _video_rgb(bgr, self.path)


def _video_rgb(bgr: np.ndarray, path: Path) -> np.ndarray:
    scale = 65535.0 if bgr.dtype == np.uint16 else 255.0
    if bgr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: decoded frames are {bgr.dtype}; expected 8- or 16-bit")
    return np.ascontiguousarray(bgr[..., ::-1], dtype=np.float32) / np.float32(scale)


def _open_video(path: Path, cycle) -> Sequence:
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"{path} is not a video file OpenCV can read")
    fps = float(cap.get(cv2.CAP_PROP_FPS)) or None
    count, size = 0, None
    while True:  # count by decoding: the container's frame count is often wrong
        ok, bgr = cap.read()
        if not ok:
            break
        if size is None:
            size = bgr.shape[:2]
        count += 1
    cap.release()
    if count == 0:
        raise ValueError(f"{path}: no decodable frames")
    names = [f"{path.name}#{i:06d}" for i in range(count)]
    source = where = "--exposure-cycle"  # recorded / named in errors
    if cycle is None:
        sidecar = path.parent / SIDECAR
        doc = _read_json(sidecar) if sidecar.is_file() else {}
        if not isinstance(doc, dict) or path.name not in doc:
            raise ValueError(f"{path}: a video carries no exposure metadata; write {sidecar} as "
                             f'{{"{path.name}": [1, 8]}} (a cycle, or one value per frame) or '
                             "pass --exposure-cycle 1,8")
        cycle, source, where = doc[path.name], SIDECAR, str(sidecar)
    exposures = expand_cycle(cycle, count, where)
    return Sequence("video", path, names, exposures, size[0], size[1], _VideoReader(path), None,
                    {"fps": fps, "exposure_source": source})


def open_sequence(path: str | Path, exposure_cycle=None) -> Sequence:
    """Open a clip folder, a folder of PNG/TIFF or DNG frames, or a video file (see module doc).
    `exposure_cycle`: exposures per frame or a cycle (e.g. [1, 8]) overriding any metadata."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    if path.is_file():
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise ValueError(f"{path}: a file input must be a video ({', '.join(VIDEO_SUFFIXES)})"
                             "; give the folder of an image sequence")
        return _open_video(path, exposure_cycle)
    if (path / "meta.json").is_file():
        seq = _open_clip(path)
    else:
        files = sorted((p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                        and p.suffix.lower() in IMAGE_SUFFIXES + RAW_SUFFIXES),
                       key=lambda p: natural_key(p.name))
        if not files:
            kinds = ", ".join(IMAGE_SUFFIXES + RAW_SUFFIXES)
            raise ValueError(f"{path}: no frames (expected {kinds} files, a clip folder with "
                             "meta.json, or a video file)")
        raws = [p for p in files if p.suffix.lower() in RAW_SUFFIXES]
        if raws and len(raws) != len(files):
            raise ValueError(f"{path} mixes RAW ({raws[0].name}) and image files; use one kind")
        if len(files) < MIN_FRAMES:
            raise ValueError(f"{path}: {len(files)} frames; a sequence needs at least "
                             f"{MIN_FRAMES}")
        seq = _open_raw(path, files) if raws else _open_images(path, files)
    if exposure_cycle is not None:
        seq.exposures = expand_cycle(exposure_cycle, len(seq), "--exposure-cycle")
        seq.long = classify_long(seq.exposures, seq.names)
        seq.info["exposure_source"] = "--exposure-cycle"
    return seq
