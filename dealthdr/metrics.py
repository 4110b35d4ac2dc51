"""Evaluation metrics (paper §5.2): PSNR/SSIM in the μ-law domain, PSNR on linear HDR,
FovVideoVDP as the offline stand-in for HDR-VDP-2, and the temporal metrics TWE and tOF.

Conventions (HDRFlow's evaluation): prediction and ground truth are both divided by the
ground truth's maximum and clipped to [0, 1] before any metric, so a metric never depends on the
arbitrary scale of our relative linear units (short-exposure units). The μ-law tonemap
T(x) = log(1 + μx) / log(1 + μ), μ = 5000, is the one the training loss uses (Eq. 9).

Images are (H, W, 3) numpy arrays or torch tensors, channels last (as `read_clip` returns them);
sequences are (N, H, W, 3). Flow is (2, H, W) in pixels (dx, dy) as in the clip format.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import warnings
from typing import Iterator, TypeVar

import numpy as np
import torch

from .model.spynet import flow_warp

log = logging.getLogger(__name__)

MU = 5000.0
Array = TypeVar("Array", np.ndarray, torch.Tensor)

# FovVideoVDP display: a 1500 cd/m² HDR monitor with a linear EOTF (absolute luminance in).
FVVDP_DISPLAY = "standard_hdr_linear"
# Forward-backward consistency test of Sundaram et al. (ECCV 2010), the usual occlusion mask.
FB_ALPHA, FB_BETA = 0.01, 0.5
# Farneback parameters used by TecoGAN's tOF (the OpenCV documentation's defaults).
FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2,
                 flags=0)


def mu_law(x: Array, mu: float = MU) -> Array:
    """T(x) = log(1 + μx) / log(1 + μ) for x >= 0 (negative values count as 0)."""
    if torch.is_tensor(x):
        return torch.log1p(mu * x.clamp_min(0)) / math.log1p(mu)
    return np.log1p(mu * np.maximum(x, 0)) / math.log1p(mu)


def inverse_mu_law(y: Array, mu: float = MU) -> Array:
    """The inverse of `mu_law`: x = ((1 + μ)^y − 1) / μ."""
    if torch.is_tensor(y):
        return torch.expm1(y * math.log1p(mu)) / mu
    return np.expm1(y * math.log1p(mu)) / mu


def _np(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """float64 numpy copy-free view where possible (metrics are computed in double)."""
    if torch.is_tensor(x):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    if not (np.isfinite(pred).all() and np.isfinite(gt).all()):
        raise ValueError("prediction or ground truth contains NaN or Inf")


def normalise(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor,
              peak: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Divide both by `peak` (default: the GT's max) and clip to [0, 1] (HDRFlow)."""
    p, g = _np(pred), _np(gt)
    _check_pair(p, g)
    peak = float(g.max()) if peak is None else float(peak)
    if peak <= 0:
        raise ValueError("ground truth is black (max <= 0): metrics are undefined")
    return np.clip(p / peak, 0, 1), np.clip(g / peak, 0, 1)


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """PSNR in dB; inf for identical inputs."""
    mse = float(np.mean((_np(a) - _np(b)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(data_range ** 2 / mse)


def psnr_mu(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor,
            peak: float | None = None) -> float:
    """PSNR-μ (the paper's PSNR): on μ-law tonemapped, GT-max-normalised images."""
    p, g = normalise(pred, gt, peak)
    return psnr(mu_law(p), mu_law(g))


def psnr_linear(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor,
                peak: float | None = None) -> float:
    """PSNR-L: on the linear GT-max-normalised images (dominated by highlights)."""
    p, g = normalise(pred, gt, peak)
    return psnr(p, g)


def ssim_mu(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor,
            peak: float | None = None) -> float:
    """SSIM-μ (the paper's SSIM): scikit-image SSIM over colour, data range 1, μ-law domain."""
    from skimage.metrics import structural_similarity

    p, g = normalise(pred, gt, peak)
    if min(p.shape[:2]) < 7:
        raise ValueError(f"SSIM needs images of at least 7x7 pixels, got {p.shape[:2]}")
    return float(structural_similarity(mu_law(p), mu_law(g), channel_axis=-1, data_range=1.0))


# --------------------------------------------------------------------------- FovVideoVDP

@contextlib.contextmanager
def _quiet_pyfvvdp() -> Iterator[None]:
    """pyfvvdp 1.2.2 reads its CSF tables through a SciPy namespace deprecated since SciPy 1.8:
    a DeprecationWarning per table that is not ours to fix."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


@functools.lru_cache(maxsize=1)
def _fvvdp():
    """The FovVideoVDP metric object, or the reason it cannot run (a str)."""
    try:
        import pyfvvdp
    except ImportError as err:
        return f"pyfvvdp is not installed ({err}); pip install 'dealthdr[eval]'"
    try:
        with _quiet_pyfvvdp():
            return pyfvvdp.fvvdp(display_name=FVVDP_DISPLAY, heatmap=None, quiet=True,
                                 device=torch.device("cpu"))
    except Exception as err:  # a broken install must not abort an evaluation  # noqa: BLE001
        return f"pyfvvdp failed to initialise: {type(err).__name__}: {err}"


def fvvdp_unavailable() -> str | None:
    """None when FovVideoVDP can run here, else why not."""
    metric = _fvvdp()
    return metric if isinstance(metric, str) else None


def fvvdp_peak() -> float | None:
    """Peak luminance (cd/m²) of the display model the GT maximum is mapped to."""
    metric = _fvvdp()
    return None if isinstance(metric, str) else float(
        metric.display_photometry.get_peak_luminance())


def fvvdp_jod(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor,
              peak: float | None = None) -> float | None:
    """FovVideoVDP quality in JOD (10 = identical), HDR display model, image mode.

    Units: our HDR is relative (short-exposure units), FovVideoVDP wants absolute luminance.
    Both images are divided by the GT's max and clipped to [0, 1], as for the other metrics,
    then multiplied by the display's peak (1500 cd/m² for 'standard_hdr_linear'): the GT's
    brightest pixel is shown at the display's peak, and the display model clips everything
    below 0.005 cd/m² (a 3e5:1 range). Returns None where pyfvvdp cannot run
    (`fvvdp_unavailable` says why).
    """
    metric = _fvvdp()
    if isinstance(metric, str):
        return None
    p, g = normalise(pred, gt, peak)
    display = fvvdp_peak()
    # pyfvvdp only accepts float32 ("HWC": one colour image, no frame axis -> image mode).
    test = torch.from_numpy((p * display).astype(np.float32))
    ref = torch.from_numpy((g * display).astype(np.float32))
    with torch.no_grad(), _quiet_pyfvvdp():
        jod, _ = metric.predict(test, ref, dim_order="HWC")
    return float(jod)


# --------------------------------------------------------------------------- temporal

def warp(img: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample `img` (H, W, C) at p + flow(p); returns (warped, in-bounds mask (H, W)).

    The project's convention (dealthdr.model.spynet.flow_warp): warp(img_b, O_{a->b}) ~ img_a.
    """
    h, w = img.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
    f = torch.from_numpy(np.ascontiguousarray(flow))[None].to(x.dtype)
    out = flow_warp(x, f)[0].numpy().transpose(1, 2, 0)
    xs = np.arange(w)[None, :] + flow[0]
    ys = np.arange(h)[:, None] + flow[1]
    inside = (xs >= 0) & (xs <= w - 1) & (ys >= 0) & (ys <= h - 1)
    return out, inside


def consistent_flow_mask(flow_fw: np.ndarray, flow_bw: np.ndarray | None) -> np.ndarray:
    """Pixels of frame t whose motion to t+1 is trustworthy (H, W) bool.

    flow_fw = O_{t->t+1}, flow_bw = O_{t+1->t}. Occluded pixels fail the forward-backward test
    |fw + bw(p + fw)|² < α(|fw|² + |bw(p + fw)|²) + β; pixels leaving the frame and NaN flow
    (outside the clip) are masked too. Without flow_bw only the last two apply.
    """
    fw = _np(flow_fw)
    valid = np.isfinite(fw).all(axis=0)
    fw = np.nan_to_num(fw)
    _, inside = warp(np.zeros(fw.shape[1:] + (1,)), fw)
    valid &= inside
    if flow_bw is not None:
        bw = _np(flow_bw)
        valid &= np.isfinite(bw).all(axis=0)
        bw_at, _ = warp(np.nan_to_num(bw).transpose(1, 2, 0), fw)
        bw_at = bw_at.transpose(2, 0, 1)
        err = ((fw + bw_at) ** 2).sum(0)
        valid &= err < FB_ALPHA * ((fw ** 2).sum(0) + (bw_at ** 2).sum(0)) + FB_BETA
    return valid


HARD_MOTION_PX = 4.0  # "moves more than a few pixels": past SpyNet's easy range at 1/4 scale


def hard_region(flows: dict[int, tuple[np.ndarray, np.ndarray | None]],
                motion_px: float = HARD_MOTION_PX) -> np.ndarray:
    """Positions of frame t where alignment is hard (H, W) bool: for any neighbour k of its
    window, the ground-truth flow O_{t->t+k} fails the forward-backward check against
    O_{t+k->t} (occlusion, sprite edges), leaves the frame, is unknown, or moves more than
    `motion_px` pixels. flows: {k: (O_{t->t+k}, O_{t+k->t} or None)}."""
    hard = None
    for fw, bw in flows.values():
        moving = np.sqrt((np.nan_to_num(_np(fw)) ** 2).sum(0)) > motion_px
        bad = ~consistent_flow_mask(fw, bw) | moving
        hard = bad if hard is None else hard | bad
    if hard is None:
        raise ValueError("hard_region needs the flow to at least one neighbour")
    return hard


def mu_squared_error(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor,
                     region: np.ndarray, peak: float | None = None) -> tuple[float, int]:
    """Sum of squared μ-law errors over the (H, W) `region` (all channels) and the number of
    values summed, for PSNR-μ pooled over many frames' regions: 10 log10(count / sum)."""
    p, g = normalise(pred, gt, peak)
    err = (mu_law(p) - mu_law(g))[region]
    return float((err.astype(np.float64) ** 2).sum()), int(err.size)


def twe_pair(cur: np.ndarray | torch.Tensor, nxt: np.ndarray | torch.Tensor,
             flow_fw: np.ndarray, flow_bw: np.ndarray | None, peak: float) -> float | None:
    """Temporal warping error of one pair of output frames t, t+1 (linear HDR, (H, W, 3)).

    Frame t+1 is warped to t with the ground-truth flow O_{t->t+1}; the error is the mean
    absolute difference in the μ-law domain (after dividing by `peak`, the GT's max over the
    sequence, and clipping) over the non-occluded pixels. None when no pixel is valid.
    """
    a, b = normalise(cur, nxt, peak)
    mask = consistent_flow_mask(flow_fw, flow_bw)
    if not mask.any():
        return None
    warped, _ = warp(mu_law(b), np.nan_to_num(_np(flow_fw)))
    return float(np.abs(mu_law(a) - warped)[mask].mean())


def _grey_u8(img: np.ndarray, peak: float) -> np.ndarray:
    import cv2

    t = mu_law(np.clip(_np(img) / peak, 0, 1))
    rgb = np.round(t * 255).astype(np.uint8)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def tof_pair(out_t: np.ndarray | torch.Tensor, out_t1: np.ndarray | torch.Tensor,
             gt_t: np.ndarray | torch.Tensor, gt_t1: np.ndarray | torch.Tensor,
             peak: float) -> float:
    """tOF (TecoGAN) of one pair: mean |Farneback(out_t, out_t1) − Farneback(gt_t, gt_t1)|
    over pixels and both flow components, in pixels, on 8-bit grey μ-law frames."""
    import cv2

    flows = [cv2.calcOpticalFlowFarneback(_grey_u8(a, peak), _grey_u8(b, peak), None,
                                          **FARNEBACK)
             for a, b in ((out_t, out_t1), (gt_t, gt_t1))]
    return float(np.mean(np.abs(flows[0].astype(np.float64) - flows[1])))


def _seq_peak(gt: np.ndarray) -> float:
    peak = float(_np(gt).max())
    if peak <= 0:
        raise ValueError("ground truth is black (max <= 0): metrics are undefined")
    return peak


def twe(frames: np.ndarray | torch.Tensor, flows_fw: np.ndarray,
        flows_bw: np.ndarray | None = None, peak: float | None = None) -> float | None:
    """Mean TWE over the N-1 consecutive pairs of a sequence (N, H, W, 3).

    flows_fw[i] = O_{i->i+1}, flows_bw[i] = O_{i+1->i}, each (N-1, 2, H, W). `peak` defaults to
    the frames' own max (pass the GT sequence's max when evaluating). None without a valid pair.
    """
    frames = _np(frames)
    peak = _seq_peak(frames) if peak is None else peak
    vals = [twe_pair(frames[i], frames[i + 1], flows_fw[i],
                     None if flows_bw is None else flows_bw[i], peak)
            for i in range(len(frames) - 1)]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def tof(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> float | None:
    """Mean tOF over the consecutive pairs of a predicted and a GT sequence (N, H, W, 3)."""
    p, g = _np(pred), _np(gt)
    _check_pair(p, g)
    if len(p) < 2:
        return None
    peak = _seq_peak(g)
    return float(np.mean([tof_pair(p[i], p[i + 1], g[i], g[i + 1], peak)
                          for i in range(len(p) - 1)]))
