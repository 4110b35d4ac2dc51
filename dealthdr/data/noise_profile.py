"""Sensor noise profiles: per-ISO (lambda_shot, lambda_read), the Eq. B fit across ISOs, sampling
for `dealthdr synth --noise-profile`, and import/export of darktable's noiseprofiles.json.

Normalisation (the one of dealthdr.data.degrade, Eq. A): X = (code - black) / (white - black) per
CFA position, so X is in [0, 1] with 1 at saturation, and the noise variance of one RAW pixel is
    var(X) = lambda_read + lambda_shot * X.
lambda_shot is 1 / (electrons at saturation) for a photon-limited sensor; both are
dimensionless (units of the white-normalised RAW squared).

Fit across ISOs (the form of Eq. B):
    log(lambda_shot) = shot_slope * log(ISO) + shot_intercept
    log(lambda_read) | log(lambda_shot) ~ N(read_slope * log(lambda_shot) + read_intercept, read_std^2)
(natural logarithms, as in degrade.DegradeConfig). Sampling draws log(ISO) uniformly over the
profile's ISO range, the shot level from the first line, the read level from the second.

darktable (see calib/README.md for the derivation): its profiles fit sigma^2 = a x + b per RGB
channel of a demosaiced, white-balanced export (x = the same white-normalised RAW), with sigma
measured on the finest Haar HH wavelet band (median absolute value / 0.6745). That band holds
DARKTABLE_KAPPA of the per-pixel variance of RAW noise after PPG demosaicking, so
    lambda_shot = a_G / DARKTABLE_KAPPA,   lambda_read = b_G / DARKTABLE_KAPPA,
from the green channel (white-balance gain 1), as darktable's own denoiser does.
"""
from __future__ import annotations

import difflib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..fileio import atomic_write_bytes

log = logging.getLogger(__name__)

FORMAT = "dealthdr-noise-profile/1"
NORMALISATION = ("X = (code - black) / (white - black) per CFA position; "
                 "var(X) = lambda_read + lambda_shot * X (dealthdr.data.degrade, Eq. A)")
# Share of the per-pixel RAW noise variance that darktable's profiling statistic (Haar HH band,
# MAD / 0.6745) sees in the green channel after PPG demosaicking; red and blue see
# DARKTABLE_KAPPA_RB. Both derived by simulation: `python calib/darktable.py kappa`.
DARKTABLE_KAPPA = 0.0794
DARKTABLE_KAPPA_RB = 0.0974
DARKTABLE_ENV = "DEALTHDR_DARKTABLE_NOISEPROFILES"
DARKTABLE_DEFAULT = Path("/usr/share/darktable/noiseprofiles.json")
CHANNELS = ("R", "G", "B")


@dataclass
class IsoEntry:
    """Noise at one ISO: pooled over the CFA (`lambda_*`) and per channel (`channels`)."""
    iso: float
    lambda_shot: float
    lambda_read: float          # clamped to >= 0; `read_clamped` says when the fit was <= 0
    channels: dict = field(default_factory=dict)   # "R"/"G"/"B" -> {"lambda_shot", "lambda_read"}
    read_clamped: bool = False
    extra: dict = field(default_factory=dict)      # provenance (darktable a, b; residuals, ...)


@dataclass
class ProfileFit:
    shot_slope: float
    shot_intercept: float
    shot_residual_std: float
    read_slope: float
    read_intercept: float
    read_std: float
    isos_used_for_read: int

    def shot(self, iso: float) -> float:
        return math.exp(self.shot_slope * math.log(iso) + self.shot_intercept)

    def read(self, shot: float) -> float:
        """Median lambda_read given lambda_shot (the centre of the Eq. B normal)."""
        return math.exp(self.read_slope * math.log(shot) + self.read_intercept)


@dataclass
class NoiseProfile:
    camera: str
    entries: list[IsoEntry]
    fit: ProfileFit | None
    source: dict = field(default_factory=dict)

    @property
    def iso_range(self) -> tuple[float, float]:
        isos = [e.iso for e in self.entries]
        return min(isos), max(isos)

    def sample(self, rng: np.random.Generator) -> tuple[float, float, float]:
        """(iso, lambda_shot, lambda_read) for one clip, by the fitted Eq. B form."""
        if self.fit is None:
            raise ValueError(f"noise profile {self.camera!r} has no fit across ISOs (it needs "
                             "at least 2 ISOs with positive noise levels)")
        lo, hi = self.iso_range
        iso = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        shot = self.fit.shot(iso)
        f = self.fit
        read = math.exp(rng.normal(f.read_slope * math.log(shot) + f.read_intercept, f.read_std))
        return iso, shot, read

    def summary(self) -> dict:
        """What a clip's meta.json records about the profile it was drawn from."""
        return {"camera": self.camera, "source": self.source,
                "iso_range": list(self.iso_range), "fit": asdict(self.fit) if self.fit else None}

    def to_dict(self) -> dict:
        return {"format": FORMAT, "camera": self.camera, "normalisation": NORMALISATION,
                "source": self.source, "iso_range": list(self.iso_range),
                "fit": asdict(self.fit) if self.fit else None,
                "isos": [asdict(e) for e in self.entries]}

    @classmethod
    def from_dict(cls, data: dict, where: str = "profile") -> NoiseProfile:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{where}: not a dealthdr noise profile (format {got!r}, expected "
                             f"{FORMAT!r})")
        try:
            entries = [IsoEntry(**e) for e in data["isos"]]
            fit = ProfileFit(**data["fit"]) if data.get("fit") else None
            prof = cls(str(data["camera"]), entries, fit, dict(data.get("source", {})))
        except (KeyError, TypeError) as err:
            raise ValueError(f"{where}: malformed noise profile ({err})") from None
        _check_entries(prof.entries, where)
        return prof


def _check_entries(entries: list[IsoEntry], where: str) -> None:
    if not entries:
        raise ValueError(f"{where}: no ISO entries")
    for e in entries:
        vals = (e.iso, e.lambda_shot, e.lambda_read)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals) \
                or e.iso <= 0 or e.lambda_shot <= 0 or e.lambda_read < 0:
            raise ValueError(f"{where}: ISO entry {vals} needs iso > 0, lambda_shot > 0, "
                             "lambda_read >= 0")


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares y = slope x + intercept and the residual std (ddof 2 when possible)."""
    slope, intercept = np.polyfit(x, y, 1)
    res = y - (slope * x + intercept)
    dof = max(len(x) - 2, 1)
    return float(slope), float(intercept), float(math.sqrt(float(res @ res) / dof))


def fit_profile(entries: list[IsoEntry]) -> ProfileFit | None:
    """The Eq. B fit over ISO entries; None with fewer than 2 distinct ISOs to fit."""
    iso = np.array([e.iso for e in entries])
    shot = np.array([e.lambda_shot for e in entries])
    if len(np.unique(iso)) < 2:
        return None
    s_slope, s_int, s_std = _line(np.log(iso), np.log(shot))
    ok = np.array([e.lambda_read > 0 and not e.read_clamped for e in entries])
    if len(np.unique(shot[ok])) < 2:
        return None
    read = np.array([e.lambda_read for e in entries])[ok]
    r_slope, r_int, r_std = _line(np.log(shot[ok]), np.log(read))
    return ProfileFit(s_slope, s_int, s_std, r_slope, r_int, r_std, int(ok.sum()))


def make_profile(camera: str, entries: list[IsoEntry], source: dict) -> NoiseProfile:
    _check_entries(entries, camera)
    entries = sorted(entries, key=lambda e: e.iso)
    return NoiseProfile(camera, entries, fit_profile(entries), source)


def read_profile(path: str | Path) -> NoiseProfile:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"noise profile not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON noise profile ({err})") from None
    return NoiseProfile.from_dict(data, str(path))


def write_profile(path: str | Path, profile: NoiseProfile) -> Path:
    path = Path(path)
    atomic_write_bytes(path, (json.dumps(profile.to_dict(), indent=1) + "\n").encode())
    return path


# ---------------------------------------------------------------- darktable noiseprofiles.json

def darktable_path(path: str | Path | None = None) -> Path:
    """The darktable file: `path`, else $DEALTHDR_DARKTABLE_NOISEPROFILES, else Debian's."""
    p = Path(path or os.environ.get(DARKTABLE_ENV) or DARKTABLE_DEFAULT)
    if not p.is_file():
        raise FileNotFoundError(
            f"darktable noise profiles not found at {p}. Get the file from Debian's darktable "
            "package without installing it (apt-get download darktable; dpkg -x darktable_*.deb "
            f"DIR) and pass DIR/usr/share/darktable/noiseprofiles.json, or set ${DARKTABLE_ENV}")
    return p


def load_darktable(path: str | Path | None = None) -> tuple[dict, Path]:
    p = darktable_path(path)
    try:
        data = json.loads(p.read_text())
        makers = data["noiseprofiles"]
        assert isinstance(makers, list)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
            AssertionError) as err:
        raise ValueError(f"{p}: not a darktable noiseprofiles.json ({err!r})") from None
    return data, p


def darktable_cameras(data: dict) -> list[tuple[str, dict]]:
    """('Maker Model', model entry) for every camera in a darktable file."""
    out = []
    for maker in data["noiseprofiles"]:
        for model in maker.get("models", []):
            out.append((f"{maker['maker']} {model['model']}", model))
    return out


def find_darktable_camera(data: dict, name: str) -> tuple[str, dict]:
    """A camera by 'Maker Model' (or a unique model), case-insensitive."""
    cams = darktable_cameras(data)
    key = " ".join(name.lower().split())
    exact = [c for c in cams if c[0].lower() == key]
    if not exact:
        exact = [c for c in cams if c[1]["model"].lower() == key]
    if len(exact) == 1:
        return exact[0]
    if len(exact) > 1:
        raise ValueError(f"camera {name!r} is ambiguous: {', '.join(c[0] for c in exact)}")
    close = difflib.get_close_matches(name, [c[0] for c in cams], n=5, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise ValueError(f"camera {name!r} is not in the darktable profiles (list them with "
                     f"`python calib/darktable.py list`){hint}")


def from_darktable(camera: str, model: dict, source: str = "") -> NoiseProfile:
    """Convert one darktable camera (its model entry) to a NoiseProfile.

    Entries marked "skip" are dropped (darktable's superseded duplicates), as are entries with a
    non-positive green a. A second entry at an ISO already seen is dropped with a warning.
    A non-positive green b (14 % of darktable's entries) becomes lambda_read = 0, flagged
    `read_clamped` and left out of the read-noise fit.
    """
    entries, seen = [], set()
    for p in model.get("profiles", []):
        try:
            iso, a, b = float(p["iso"]), [float(v) for v in p["a"]], [float(v) for v in p["b"]]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{camera}: malformed darktable profile {p!r} ({err})") from None
        if p.get("skip") or len(a) != 3 or len(b) != 3:
            continue
        if a[1] <= 0 or iso <= 0:
            log.warning("%s ISO %g: green a = %g <= 0, entry dropped", camera, iso, a[1])
            continue
        if iso in seen:
            log.warning("%s: second entry at ISO %g dropped", camera, iso)
            continue
        seen.add(iso)
        shot, read = a[1] / DARKTABLE_KAPPA, b[1] / DARKTABLE_KAPPA
        # Red and blue carry the profiling shot's (unrecorded) white-balance gain g:
        # a_c = kappa_RB g a_raw, b_c = kappa_RB g^2 b_raw. Their implied gains are kept, as
        # darktable itself only uses green.
        gains = [a[c] * DARKTABLE_KAPPA / (a[1] * DARKTABLE_KAPPA_RB) for c in (0, 2)]
        entries.append(IsoEntry(
            iso, shot, max(read, 0.0), {"G": {"lambda_shot": shot, "lambda_read": max(read, 0.0)}},
            bool(read <= 0), {"darktable": {"name": p.get("name", ""), "a": a, "b": b},
                        "implied_wb_gains_rb": gains}))
    if not entries:
        raise ValueError(f"{camera}: no usable darktable profiles")
    return make_profile(camera, entries, {"kind": "darktable", "path": str(source),
                                          "kappa_green": DARKTABLE_KAPPA})


def to_darktable(profile: NoiseProfile) -> dict:
    """A darktable model entry ({"model", "profiles": [...]}) for a profile (inverse of
    from_darktable on the green channel; red and blue as for white-balance gains of 1 unless
    the entry came from darktable, whose own values are then kept)."""
    out = []
    for e in profile.entries:
        orig = e.extra.get("darktable")
        g = [e.lambda_shot * DARKTABLE_KAPPA, e.lambda_read * DARKTABLE_KAPPA]
        if orig and not e.read_clamped:
            a, b = [orig["a"][0], g[0], orig["a"][2]], [orig["b"][0], g[1], orig["b"][2]]
        elif orig:
            a, b = [orig["a"][0], g[0], orig["a"][2]], list(orig["b"])
        else:
            rb = [e.lambda_shot * DARKTABLE_KAPPA_RB, e.lambda_read * DARKTABLE_KAPPA_RB]
            a, b = [rb[0], g[0], rb[0]], [rb[1], g[1], rb[1]]
        out.append({"name": f"{profile.camera} iso {e.iso:g}", "iso": e.iso, "a": a, "b": b})
    return {"comment": f"{profile.camera} converted by dealthdr", "model": profile.camera,
            "profiles": out}


def resolve_profile(spec: str, darktable: str | Path | None = None) -> NoiseProfile:
    """`--noise-profile`: a profile JSON file, else a darktable camera name."""
    path = Path(spec)
    if path.is_file():
        return read_profile(path)
    if path.suffix.lower() == ".json" or os.sep in spec:
        raise FileNotFoundError(f"noise profile not found: {spec}")
    data, src = load_darktable(darktable)
    camera, model = find_darktable_camera(data, spec)
    return from_darktable(camera, model, str(src))
