"""Degradation of linear HDR frames into noisy 10-bit LDR frames (paper, Sec. 4.1 and App. A).

Per clip: day or night, the noise levels of Eq. B, a camera colour pipeline (CCM + white
balance) and a global exposure scale. Per frame, on HDR already multiplied by that scale (and by
the exposure ratio for long frames):
    unprocess (UPI, Brooks et al. 2019): RGB -> camera RGB (inverse CCM) -> inverse white balance
    -> RGGB mosaic -> clip at saturation -> + N(0, lambda_read + lambda_shot X) (Eq. A)
    -> clip to [0, 1] -> 10-bit quantisation
    process back: edge-aware demosaic -> white balance -> highlight clip -> CCM -> clip
    -> gamma 1/2.2 -> LDR in [0, 1].
UPI's inverse sRGB curve and inverse tone curve are not applied: our HDR sources are already
linear radiance. The processing uses the very CCM and gains of the unprocessing (the camera knows
its own pipeline), so where nothing clips, (LDR)^2.2 / exposure equals the scaled HDR up to noise,
quantisation and demosaicking: that is why ground truth is stored in the short exposure's units.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# XYZ(D65) -> camera matrices (x 1e-4) of cameras with 1-inch sensors, the sensor class of the
# paper's DJI Pocket 3, as listed in darktable 4.2.1's rawspeed/cameras.xml (Adobe DNG values).
# A clip's camera is a random convex mix of them, as UPI does with its own set.
XYZ_TO_CAM = {
    "Sony DSC-RX100": ((8651, -2754, -1057), (-3464, 12207, 1373), (-568, 1398, 4434)),
    "Sony DSC-RX100M3": ((6596, -2079, -562), (-4782, 13016, 1933), (-970, 1581, 5181)),
    "Sony DSC-RX100M6": ((7325, -2321, -596), (-3494, 11674, 2055), (-668, 1562, 5031)),
    "Sony DSC-RX100M7": ((10315, -4390, -937), (-4859, 12734, 2365), (-734, 1537, 5997)),
    "Canon PowerShot G7 X": ((9602, -3823, -937), (-2984, 11495, 1675), (-407, 1415, 5049)),
    "Panasonic DMC-TZ100": ((7790, -2736, -755), (-3452, 11870, 1769), (-628, 1647, 4898)),
}
# Linear sRGB / Rec. 709 primaries -> XYZ, D65 white (IEC 61966-2-1).
SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])


@dataclass(frozen=True)
class DegradeConfig:
    """Parameters of the degradation; defaults are the paper's (Sec. 4.1, App. A).

    Args:
        exposure_ratio: long / short exposure time (EV+1 vs EV-2: 3 stops).
        subframes: HDR sub-frames per short + long pair; the first is the short exposure, the
            other subframes - 1 are averaged into the long one (paper: 64-frame chunks).
        night_prob: probability that a clip uses the night noise distribution (paper: 100 of
            200 scenes are night scenes).
        shot_day, shot_night: log-uniform ranges of lambda_shot (Eq. B).
        read_day, read_night: (slope, intercept, std) of log(lambda_read) given log(lambda_shot)
            (Eq. B; natural logarithms, as in UPI whose form Eq. B follows). Kept as published,
            although the lines miss the paper's own measured points (day: shot 3.23e-4 gives a
            mean read of 3.5e-5, measured 2.67e-6; night: 4.52e-3 gives 1.6e-4, measured
            4.04e-5); base-10 logarithms would miss them further.
        bits: RAW quantisation depth.
        gamma: display gamma of the LDR output (and of the network's linearisation, Eq. 1).
        red_gain, blue_gain: uniform ranges of the white-balance gains (green = 1), BracketIRE's
            unprocessing ranges.
        saturation_share: log-uniform range of the share of short-exposure pixels at or above
            saturation; it sets the clip's global exposure scale ...
        long_clip_max: ... unless the long exposures would then clip in more than this share.
        noise_scale: multiplies both noise variances (1 = paper; 0 = noise-free, for tests).
    """
    exposure_ratio: float = 8.0
    subframes: int = 64
    night_prob: float = 0.5
    shot_day: tuple[float, float] = (0.00014, 0.00066)
    shot_night: tuple[float, float] = (0.0021, 0.0086)
    read_day: tuple[float, float, float] = (1.428, 1.215, 0.28)
    read_night: tuple[float, float, float] = (1.692, 0.418, 0.25)
    bits: int = 10
    gamma: float = 2.2
    red_gain: tuple[float, float] = (1 / 0.91, 1 / 0.40)
    blue_gain: tuple[float, float] = (1 / 0.75, 1 / 0.39)
    saturation_share: tuple[float, float] = (0.002, 0.03)
    long_clip_max: float = 0.5
    noise_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.subframes < 2:
            raise ValueError(f"subframes must be >= 2 (1 short + >= 1 long), got {self.subframes}")
        if self.subframes % 2:
            # A long frame's ground truth is the middle of the subframes - 1 sub-frames it
            # averages; with an even count there is none, and the ground truth (and the flow
            # stored for it) would sit half a sub-frame off the centre of the frame's blur.
            raise ValueError(f"subframes must be even (the long exposure then averages an odd "
                             f"number, whose middle one is its ground truth), got "
                             f"{self.subframes}")
        if self.exposure_ratio <= 1:
            raise ValueError(f"exposure_ratio must be > 1, got {self.exposure_ratio}")
        if not 1 <= self.bits <= 16:
            raise ValueError(f"bits must be in 1..16, got {self.bits}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class CameraParams:
    """One clip's sensor and colour pipeline."""
    condition: str          # "day" or "night"
    lambda_shot: float
    lambda_read: float
    rgb2cam: np.ndarray     # (3, 3), rows sum to 1 (white stays white)
    ccm_weights: np.ndarray  # convex weights over XYZ_TO_CAM
    wb: np.ndarray          # (3,) gains (red, 1, blue) applied by the processing
    iso: float | None = None      # set when the noise came from a sensor profile
    profile: dict | None = None   # that profile's summary (NoiseProfile.summary())

    @property
    def cam2rgb(self) -> np.ndarray:
        return np.linalg.inv(self.rgb2cam)

    def noise_dict(self) -> dict:
        out = {"model": "heteroscedastic Gaussian, var = lambda_read + lambda_shot * X "
                        "(X = RAW in [0, 1], before quantisation)",
               "condition": self.condition, "lambda_shot": self.lambda_shot,
               "lambda_read": self.lambda_read}
        if self.profile is not None:  # absent otherwise: Eq. B clips keep their exact bytes
            out.update(iso=self.iso, profile=self.profile)
        return out

    def pipeline_dict(self) -> dict:
        return {"rgb2cam": np.round(self.rgb2cam, 8).tolist(),
                "ccm_cameras": list(XYZ_TO_CAM),
                "ccm_weights": np.round(self.ccm_weights, 8).tolist(),
                "wb_gains": np.round(self.wb, 8).tolist(), "cfa": "RGGB"}


def sample_noise(rng: np.random.Generator, cfg: DegradeConfig) -> tuple[str, float, float]:
    """(condition, lambda_shot, lambda_read) by Eq. B."""
    night = rng.random() < cfg.night_prob
    lo, hi = cfg.shot_night if night else cfg.shot_day
    slope, intercept, std = cfg.read_night if night else cfg.read_day
    log_shot = rng.uniform(math.log(lo), math.log(hi))
    log_read = rng.normal(slope * log_shot + intercept, std)
    return ("night" if night else "day"), math.exp(log_shot), math.exp(log_read)


def sample_camera(rng: np.random.Generator, cfg: DegradeConfig, noise_profile=None
                  ) -> CameraParams:
    """A clip's camera; its noise by Eq. B, or drawn from `noise_profile` (a
    dealthdr.data.noise_profile.NoiseProfile: ISO log-uniform over its range, lambdas by its
    fit)."""
    iso = summary = None
    if noise_profile is None:
        condition, shot, read = sample_noise(rng, cfg)
    else:
        iso, shot, read = noise_profile.sample(rng)
        condition, summary = f"profile ISO {iso:.0f}", noise_profile.summary()
    mats = np.array(list(XYZ_TO_CAM.values()), dtype=np.float64) / 1e4
    weights = rng.uniform(1e-8, 1.0, size=len(mats))
    weights /= weights.sum()
    rgb2cam = np.einsum("k,kij->ij", weights, mats) @ SRGB_TO_XYZ
    rgb2cam /= rgb2cam.sum(axis=1, keepdims=True)
    wb = np.array([rng.uniform(*cfg.red_gain), 1.0, rng.uniform(*cfg.blue_gain)])
    return CameraParams(condition, shot, read, rgb2cam, weights, wb, iso, summary)


def unprocess(rgb: np.ndarray, cam: CameraParams) -> np.ndarray:
    """Linear RGB (..., 3) -> camera RAW colour (..., 3): inverse CCM, inverse white balance."""
    # Colours outside the camera's gamut map to negative responses; a sensor records none.
    return np.maximum(rgb @ cam.rgb2cam.T, 0.0) / cam.wb


def mosaic(raw: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> RGGB Bayer mosaic (H, W)."""
    out = raw[..., 1].copy()
    out[0::2, 0::2] = raw[0::2, 0::2, 0]
    out[1::2, 1::2] = raw[1::2, 1::2, 2]
    return out


def sensor(raw: np.ndarray, cam: CameraParams, rng: np.random.Generator, cfg: DegradeConfig
           ) -> np.ndarray:
    """Clean mosaic -> saturated, noisy (Eq. A), quantised mosaic in [0, 1].

    Noise is added to the saturated signal and quantised afterwards, the order of a real
    readout (the ADC digitises the noisy charge), as in BracketIRE's unprocessing.
    """
    x = np.clip(raw, 0.0, 1.0)
    var = (cam.lambda_read + cam.lambda_shot * x) * cfg.noise_scale
    noisy = np.clip(x + np.sqrt(var) * rng.standard_normal(x.shape), 0.0, 1.0)
    levels = 2 ** cfg.bits - 1
    return np.round(noisy * levels) / levels


def demosaic(raw: np.ndarray, bits: int) -> np.ndarray:
    """Quantised RGGB mosaic in [0, 1] -> (H, W, 3) with OpenCV's edge-aware demosaicking.

    The codes are shifted to the top of 16 bits so that OpenCV's integer interpolation rounds
    at 1/65535, well below the RAW quantisation step.
    """
    import cv2
    levels = 2 ** bits - 1
    shift = 16 - bits
    codes = (np.round(raw * levels).astype(np.uint16) << shift)
    # OpenCV >= 5 names CFAs by their first row (BayerRGGB); older names are offset by one
    # row and column, where "BG" means an RGGB sensor.
    code = getattr(cv2, "COLOR_BayerRGGB2RGB_EA", None) or cv2.COLOR_BayerBG2RGB_EA
    rgb = cv2.cvtColor(codes, code)
    return rgb.astype(np.float64) / (levels << shift)


def process(raw: np.ndarray, cam: CameraParams, cfg: DegradeConfig) -> np.ndarray:
    """Quantised mosaic -> gamma-encoded LDR RGB (H, W, 3) float32 in [0, 1]."""
    rgb = demosaic(raw, cfg.bits) * cam.wb
    # Clip after white balance, as raw converters do: a pixel saturated in all channels then
    # stays white instead of turning magenta through the gains.
    rgb = np.clip(np.clip(rgb, 0.0, 1.0) @ cam.cam2rgb.T, 0.0, 1.0)
    return (rgb ** (1.0 / cfg.gamma)).astype(np.float32)


def degrade(rgb: np.ndarray, cam: CameraParams, rng: np.random.Generator, cfg: DegradeConfig
            ) -> np.ndarray:
    """Exposed linear HDR frame (H, W, 3) -> LDR frame (H, W, 3) float32 in [0, 1]."""
    return process(sensor(mosaic(unprocess(rgb, cam)), cam, rng, cfg), cam, cfg)


def exposure_scale(short_frames: list[np.ndarray], cam: CameraParams, share: float,
                   ratio: float, long_clip_max: float) -> tuple[float, str]:
    """Global exposure scale of a clip and which bound set it ("short" or "long").

    A pixel clips when any white-balanced camera channel (rgb2cam @ rgb) reaches 1: the RAW
    saturates at 1 and the processing clips after the white-balance gains (>= 1). The scale puts
    a `share` of short-exposure pixels there, unless that would clip more than `long_clip_max`
    of the long exposures (estimated on the short frames x ratio): very high-contrast views
    (the sun in frame) are then exposed for the long frame, as an auto-exposure would.
    """
    level = np.concatenate([np.max(f @ cam.rgb2cam.T, axis=-1).ravel() for f in short_frames])
    hi, lo = np.quantile(level, [1.0 - share, 1.0 - long_clip_max])
    if hi <= 1e-12:
        return 1.0, "short"
    if ratio * lo > hi:
        return 1.0 / (ratio * float(lo)), "long"
    return 1.0 / float(hi), "short"
