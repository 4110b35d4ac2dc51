"""Bayer RAW as DNG: a writer (tests, synthesis, calibration targets) and a rawpy reader.

`write_dng` writes an uncompressed 16-bit CFA DNG 1.4 (TIFF/EP structure, the raw image in IFD0)
with the tags a raw converter needs: CFA pattern, per-position black level, white level,
ColorMatrix1 (XYZ -> camera, D65), AsShotNeutral, and an EXIF IFD with ExposureTime and ISO.
LibRaw (rawpy) opens these files: raw_image, black_level_per_channel, white_level,
camera_whitebalance, raw_pattern, other.shutter_speed and other.iso_speed all come back.

`read_raw` opens any RAW that LibRaw reads (DNG, CR2, NEF, ...) and returns the visible Bayer
mosaic with its levels, CFA and exposure metadata; where LibRaw leaves ExposureTime or ISO unset
on a TIFF-based file, they are read from its EXIF IFD with tifffile.
"""
from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..fileio import atomic_write_bytes
from .degrade import SRGB_TO_XYZ

log = logging.getLogger(__name__)

CFA_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
MIN_SIDE = 22  # LibRaw's identify() treats images under 22 x 22 as not RAW
_CFA_CODE = {"R": 0, "G": 1, "B": 2}  # TIFF/EP CFAPattern colour codes
# tifffile refuses to write the EXIF IFD pointer (34665) itself. A placeholder LONG tag with the
# code just below it is written instead (so IFD0 stays sorted), then renamed and pointed at an
# EXIF IFD appended to the file.
_EXIF_POINTER = 34665
_PLACEHOLDER = 34664
_TIFF_SHORT, _TIFF_LONG, _TIFF_RATIONAL, _TIFF_UNDEFINED = 3, 4, 5, 7


def _rational(x: float, max_den: int = 1_000_000) -> tuple[int, int]:
    f = Fraction(float(x)).limit_denominator(max_den)
    if f == 0 and x != 0:  # tiny values: keep the magnitude rather than writing 0
        f = Fraction(1, max_den)
    return f.numerator, f.denominator


def _srational_flat(m: np.ndarray) -> tuple[int, ...]:
    # A fixed denominator of 10000, as Adobe's matrices use: 4 decimals, readable in a dump.
    return tuple(v for x in m.ravel() for v in (int(round(x * 10_000)), 10_000))


def _per_position(value, name: str) -> list[int]:
    vals = np.broadcast_to(np.asarray(value), (4,)) if np.ndim(value) == 0 else np.asarray(value)
    if vals.shape != (4,):
        raise ValueError(f"{name} must be one number or 4 (one per 2x2 CFA position), got "
                         f"shape {np.shape(value)}")
    return [int(v) for v in vals]


def _short(v: int) -> bytes:
    """A SHORT in a 4-byte IFD value field (left-justified)."""
    return struct.pack("<HH", v, 0)


def _exif_ifd(offset: int, exposure_time: float | None, iso: float | None) -> bytes:
    """A little-endian EXIF IFD placed at file `offset`: ExposureTime, ISO, ExifVersion."""
    entries = [(36864, _TIFF_UNDEFINED, 4, b"0230")]  # tag, type, count, 4-byte value field
    if iso is not None:
        # EXIF 2.3: ISOSpeedRatings is a SHORT; above 65535 it saturates and ISOSpeed (LONG,
        # SensitivityType 3 = ISO speed) carries the value.
        entries += [(34855, _TIFF_SHORT, 1, _short(min(int(iso), 65535))),
                    (34864, _TIFF_SHORT, 1, _short(3)),
                    (34867, _TIFF_LONG, 1, struct.pack("<I", int(iso)))]
    payload = b""
    if exposure_time is not None:  # a RATIONAL does not fit the value field: it follows the IFD
        data_at = offset + 2 + 12 * (len(entries) + 1) + 4
        entries.append((33434, _TIFF_RATIONAL, 1, struct.pack("<I", data_at)))
        payload = struct.pack("<II", *_rational(exposure_time))
    head = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", t, ty, c) + v for t, ty, c, v in sorted(entries)) + b"\0\0\0\0"
    return head + payload


def dng_bytes(mosaic: np.ndarray, black_level=0, white_level: int | None = None,
              cfa: str = "RGGB", exposure_time: float | None = None, iso: float | None = None,
              wb_gains=(1.0, 1.0, 1.0), color_matrix: np.ndarray | None = None,
              make: str = "dealthdr", model: str = "synthetic") -> bytes:
    """The DNG file of `write_dng` as bytes (see there)."""
    import tifffile

    mosaic = np.asarray(mosaic)
    if mosaic.ndim != 2 or min(mosaic.shape) < MIN_SIDE or mosaic.shape[0] % 2 \
            or mosaic.shape[1] % 2:
        raise ValueError(f"mosaic must be a 2-D array with even sides (whole 2x2 CFA tiles) of "
                         f"at least {MIN_SIDE} (LibRaw rejects smaller images), got shape "
                         f"{mosaic.shape}")
    if mosaic.dtype != np.uint16:
        raise ValueError(f"mosaic must be uint16 sensor codes, got {mosaic.dtype}")
    if cfa not in CFA_PATTERNS:
        raise ValueError(f"cfa must be one of {CFA_PATTERNS}, got {cfa!r}")
    black = _per_position(black_level, "black_level")
    white = int(white_level) if white_level is not None else 65535
    if not 0 < white <= 65535 or max(black) >= white or min(black) < 0:
        raise ValueError(f"need 0 <= black_level < white_level <= 65535, got black {black}, "
                         f"white {white}")
    if exposure_time is not None and not exposure_time > 0:
        raise ValueError(f"exposure_time must be > 0 seconds, got {exposure_time}")
    if iso is not None and not 0 < iso < 2 ** 32:
        raise ValueError(f"iso must be > 0, got {iso}")
    gains = np.asarray(wb_gains, dtype=np.float64)
    if gains.shape != (3,) or not (gains > 0).all():
        raise ValueError(f"wb_gains must be 3 positive gains (R, G, B), got {wb_gains}")
    # by default ColorMatrix1 is sRGB's own: the "camera" records linear sRGB
    cm = np.linalg.inv(SRGB_TO_XYZ) if color_matrix is None else np.asarray(color_matrix, float)
    if cm.shape != (3, 3) or not np.isfinite(cm).all():
        raise ValueError(f"color_matrix must be a finite 3x3 XYZ -> camera matrix, got {cm.shape}")
    neutral = gains[1] / gains  # DNG stores the camera's neutral, the inverse of the WB gains

    tags = [
        (33421, "H", 2, (2, 2), True),                                  # CFARepeatPatternDim
        (33422, "B", 4, bytes(_CFA_CODE[c] for c in cfa), True),        # CFAPattern
        (50706, "B", 4, bytes((1, 4, 0, 0)), True),                     # DNGVersion
        (50707, "B", 4, bytes((1, 1, 0, 0)), True),                     # DNGBackwardVersion
        (50708, "s", 0, f"{make} {model}", True),                       # UniqueCameraModel
        (50713, "H", 2, (2, 2), True),                                  # BlackLevelRepeatDim
        (50714, "I", 4, tuple(black), True),                            # BlackLevel
        (50717, "I", 1, (white,), True),                                # WhiteLevel
        (50721, "2i", 9, _srational_flat(cm), True),                    # ColorMatrix1
        (50728, "2I", 3, tuple(v for x in neutral for v in _rational(x)), True),  # AsShotNeutral
        (50778, "H", 1, (21,), True),                                   # CalibrationIlluminant1=D65
        (271, "s", 0, make, True), (272, "s", 0, model, True),
        (_PLACEHOLDER, "I", 1, 0, True),
    ]
    buf = io.BytesIO()
    tifffile.imwrite(buf, mosaic, photometric=32803, subfiletype=0, extratags=tags,
                     byteorder="<", metadata=None, software="dealthdr")
    data = bytearray(buf.getvalue())
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        tag = tif.pages[0].tags[_PLACEHOLDER]
        entry, value_at = tag.offset, tag.valueoffset
    if len(data) % 2:  # TIFF offsets are word-aligned
        data += b"\0"
    exif_at = len(data)
    data += _exif_ifd(exif_at, exposure_time, iso)
    struct.pack_into("<H", data, entry, _EXIF_POINTER)
    struct.pack_into("<I", data, value_at, exif_at)
    return bytes(data)


def write_dng(path: str | Path, mosaic: np.ndarray, black_level=0, white_level: int | None = None,
              cfa: str = "RGGB", exposure_time: float | None = None, iso: float | None = None,
              wb_gains=(1.0, 1.0, 1.0), color_matrix: np.ndarray | None = None,
              make: str = "dealthdr", model: str = "synthetic") -> Path:
    """Write a Bayer mosaic as a DNG that LibRaw (rawpy) opens; atomic (temp file + rename).

    Args:
        mosaic: (H, W) uint16 sensor codes, H and W even and >= 22, CFA phase `cfa` at the
            top-left.
        black_level: one code, or four in the 2x2 CFA order (row-major).
        white_level: saturation code (default 65535).
        cfa: "RGGB", "BGGR", "GRBG" or "GBRG".
        exposure_time: seconds (EXIF ExposureTime); None leaves it out.
        iso: ISO speed (EXIF ISOSpeedRatings, plus ISOSpeed above 65535); None leaves it out.
        wb_gains: as-shot white-balance gains (R, G, B); stored as AsShotNeutral = G / gains,
            so rawpy's camera_whitebalance reads back the gains (green-normalised).
        color_matrix: ColorMatrix1, XYZ (D65) -> camera RGB; default: camera = linear sRGB.
        make, model: Make / Model; UniqueCameraModel is "make model".
    """
    path = Path(path)
    data = dng_bytes(mosaic, black_level, white_level, cfa, exposure_time, iso, wb_gains,
                     color_matrix, make, model)
    atomic_write_bytes(path, data)
    log.info("wrote %s (%dx%d %s, black %s, white %s, %s s, ISO %s)", path, mosaic.shape[1],
             mosaic.shape[0], cfa, black_level, white_level, exposure_time, iso)
    return path


@dataclass(frozen=True, eq=False)
class RawImage:
    """The visible Bayer mosaic of a RAW file and what calibration needs to normalise it."""
    path: Path
    mosaic: np.ndarray          # (H, W) uint16 codes, visible area
    cfa: str                    # e.g. "RGGB": colours of the 2x2 tile at the top-left
    black_level: np.ndarray     # (2, 2) black code of each CFA position
    white_level: int
    exposure_time: float | None  # seconds
    iso: float | None

    def normalised(self) -> np.ndarray:
        """(mosaic - black) / (white - black), per CFA position, float64: the X of Eq. A."""
        black = np.tile(self.black_level, (self.mosaic.shape[0] // 2 + 1,
                                           self.mosaic.shape[1] // 2 + 1))
        black = black[:self.mosaic.shape[0], :self.mosaic.shape[1]]
        return (self.mosaic.astype(np.float64) - black) / (self.white_level - black)


def _tiff_exif(path: Path) -> tuple[float | None, float | None]:
    """(ExposureTime, ISO) from a TIFF-based RAW's IFD0 / EXIF IFD; (None, None) otherwise."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            tags = tif.pages[0].tags
            exif = dict(tags["ExifTag"].value) if "ExifTag" in tags else {}
            for name in ("ExposureTime", "ISOSpeedRatings", "ISOSpeed"):
                if name not in exif and name in tags:
                    exif[name] = tags[name].value
    except (tifffile.TiffFileError, OSError, ValueError, KeyError):
        return None, None
    exposure = exif.get("ExposureTime")
    if isinstance(exposure, tuple):
        exposure = exposure[0] / exposure[1] if exposure[1] else None
    iso = exif.get("ISOSpeed") or exif.get("ISOSpeedRatings")
    if isinstance(iso, (tuple, list)):
        iso = iso[0] if iso else None
    return (float(exposure) if exposure else None), (float(iso) if iso else None)


def read_raw(path: str | Path) -> RawImage:
    """Open a RAW file with rawpy; ValueError with the reason if it is not a Bayer RAW."""
    import rawpy

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"RAW file not found: {path}")
    try:
        with rawpy.imread(str(path)) as raw:
            colors = raw.raw_colors_visible
            mosaic = np.array(raw.raw_image_visible, dtype=np.uint16)
            desc = raw.color_desc.decode("ascii", "replace")
            pattern = raw.raw_pattern
            black = np.asarray(raw.black_level_per_channel)
            white = int(raw.white_level)
            shutter, iso = float(raw.other.shutter_speed), float(raw.other.iso_speed)
    except (rawpy.LibRawError, OSError) as err:
        raise ValueError(f"{path} is not a RAW file LibRaw can read "
                         f"({type(err).__name__}: {err or 'no detail'})") from None
    if pattern is None or pattern.shape != (2, 2) or len(set(desc.upper())) != 3:
        raise ValueError(f"{path}: not a 2x2 Bayer RAW (CFA {desc!r}, pattern "
                         f"{None if pattern is None else pattern.tolist()}); X-Trans, "
                         "monochrome and linear DNGs are not supported")
    if mosaic.shape[0] < 2 or mosaic.shape[1] < 2:
        raise ValueError(f"{path}: RAW image has no pixels ({mosaic.shape})")
    tile = colors[:2, :2]
    cfa = "".join(desc[c] for c in tile.ravel()).upper()  # 'RGBG' descs name the 2nd green G
    if cfa not in CFA_PATTERNS:
        raise ValueError(f"{path}: unsupported CFA {cfa!r} (supported: {CFA_PATTERNS})")
    black_2x2 = black[tile].astype(np.float64)
    if not white > black_2x2.max():
        raise ValueError(f"{path}: white level {white} not above black level {black.tolist()}")
    exposure = shutter if shutter > 0 else None
    # LibRaw reads only the SHORT ISOSpeedRatings, which saturates at 65535 (EXIF 2.3).
    iso_val = iso if 0 < iso < 65535 else None
    if exposure is None or iso_val is None:
        t_exp, t_iso = _tiff_exif(path)
        exposure = exposure or t_exp
        iso_val = iso_val or t_iso or (iso if iso > 0 else None)
    return RawImage(path, mosaic, cfa, black_2x2, white, exposure, iso_val)

