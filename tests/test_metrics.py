"""Metrics against known values: identical inputs, analytic offsets, perfect warps."""
import math

import numpy as np
import pytest
import torch

from dealthdr import metrics
from tests.conftest import waves


def smooth(h: int = 40, w: int = 48, seed: int = 0, lo: float = 0.0) -> np.ndarray:
    """Smooth positive HDR image (H, W, 3) with max exactly 1 and min >= lo."""
    img = waves(h, w, seed, count=5, freq=0.3)
    img = (img - img.min()) / (img.max() - img.min())
    return lo + (1 - lo) * img


def test_mu_law_endpoints_inverse_and_torch():
    x = np.array([0.0, 1e-4, 0.01, 0.5, 1.0])
    y = metrics.mu_law(x)
    assert y[0] == 0 and y[-1] == pytest.approx(1.0)
    assert np.allclose(metrics.inverse_mu_law(y), x)
    assert np.allclose(metrics.mu_law(torch.from_numpy(x)).numpy(), y)
    assert metrics.mu_law(np.array([-1.0]))[0] == 0  # negative radiance counts as black


def test_identical_images():
    gt = smooth() * 7.3  # arbitrary scale: metrics normalise by the GT max
    assert metrics.psnr_mu(gt, gt) == math.inf
    assert metrics.psnr_linear(gt, gt) == math.inf
    assert metrics.ssim_mu(gt, gt) == pytest.approx(1.0)


def test_constant_offset_in_mu_law_domain_gives_analytic_psnr():
    c = 0.02
    gt = smooth(lo=0.01)  # T(0.01) = 0.46 > c, so nothing clips at 0
    pred = metrics.inverse_mu_law(metrics.mu_law(gt) - c)
    assert metrics.psnr_mu(pred, gt) == pytest.approx(-20 * math.log10(c), abs=1e-6)


def test_constant_offset_in_linear_domain_gives_analytic_psnr():
    gt = smooth(lo=0.2) * 4.0  # max 4: normalised to 1 first
    pred = gt - 0.05 * 4.0
    assert metrics.psnr_linear(pred, gt) == pytest.approx(-20 * math.log10(0.05), abs=1e-6)


def test_scale_invariance_torch_input_and_clipping():
    gt = smooth(seed=1)
    pred = np.clip(gt + np.random.default_rng(0).normal(0, 0.01, gt.shape), 0, None)
    ref = metrics.psnr_mu(pred, gt)
    assert metrics.psnr_mu(pred * 9, gt * 9) == pytest.approx(ref)
    assert metrics.psnr_mu(torch.from_numpy(pred).float(), torch.from_numpy(gt).float()) == \
        pytest.approx(ref, abs=1e-3)
    # Above the GT max everything is clipped to 1 (HDRFlow): a brighter highlight costs nothing.
    brighter = gt.copy()
    brighter[gt >= 1] = 5.0
    assert metrics.psnr_mu(brighter, gt) == math.inf


def test_bad_input():
    gt = smooth()
    with pytest.raises(ValueError, match="shape"):
        metrics.psnr_mu(gt[:-1], gt)
    with pytest.raises(ValueError, match="black"):
        metrics.psnr_mu(gt, gt * 0)
    with pytest.raises(ValueError, match="NaN"):
        metrics.psnr_mu(gt * np.nan, gt)


def shifted_sequence(n: int = 4, shift: tuple[int, int] = (2, 1), h: int = 32, w: int = 40):
    """Frame t = a big texture moved by t * shift, so O_{t->t+1} = -shift everywhere."""
    dx, dy = shift
    m = 4 * n
    big = smooth(h + 2 * m, w + 2 * m, seed=3, lo=0.01)
    seq = np.stack([big[m + t * dy:m + t * dy + h, m + t * dx:m + t * dx + w] for t in range(n)])
    fw = np.zeros((n - 1, 2, h, w))
    fw[:, 0], fw[:, 1] = -dx, -dy
    return seq, fw, -fw


def test_twe_zero_for_a_perfect_warp_and_positive_for_flicker():
    seq, fw, bw = shifted_sequence()
    assert metrics.twe(seq, fw, bw) == pytest.approx(0.0, abs=1e-9)
    flicker = seq.copy()
    flicker[1::2] *= 0.8
    assert metrics.twe(flicker, fw, bw, peak=seq.max()) > 0.01
    assert metrics.twe(seq, np.zeros_like(fw), None) > 0.01  # wrong (zero) flow


def test_flow_mask_drops_occlusions_borders_and_nan():
    _, fw, bw = shifted_sequence()
    bw = bw[0].copy()
    bw[:, 10:20, 10:20] = 5.0  # backward flow disagrees there: occluded
    fw0 = fw[0].copy()
    fw0[:, 25, 30] = np.nan
    mask = metrics.consistent_flow_mask(fw0, bw)
    assert not mask[12:18, 12:18].any()
    assert not mask[:, :2].any() and not mask[0].any()  # p + (-2, -1) leaves the frame
    assert mask[22:, 5:30].all()
    assert not mask[25, 30]


def test_tof_zero_for_identical_and_positive_for_frozen_output():
    seq, _, _ = shifted_sequence(n=3, shift=(3, 0))
    assert metrics.tof(seq, seq) == pytest.approx(0.0, abs=1e-9)
    frozen = np.repeat(seq[:1], 3, axis=0)
    assert metrics.tof(frozen, seq) > 0.2  # GT moves 3 px/frame, the output not at all


def test_fvvdp_identical_and_degraded():
    # pyfvvdp comes with the README's install (`.[all]`): a missing metric is a broken install.
    assert metrics.fvvdp_unavailable() is None, metrics.fvvdp_unavailable()
    gt = smooth(64, 64) * 3
    assert metrics.fvvdp_jod(gt, gt) == pytest.approx(10.0, abs=1e-3)
    noisy = np.clip(gt + np.random.default_rng(0).normal(0, 0.1, gt.shape), 0, None)
    assert metrics.fvvdp_jod(noisy, gt) < 9.9


def test_fvvdp_says_why_when_missing(monkeypatch):
    import sys

    metrics._fvvdp.cache_clear()
    monkeypatch.setitem(sys.modules, "pyfvvdp", None)  # import raises ImportError
    try:
        assert "not installed" in metrics.fvvdp_unavailable()
        assert metrics.fvvdp_jod(smooth(), smooth()) is None
        assert metrics.fvvdp_peak() is None
    finally:
        metrics._fvvdp.cache_clear()


def test_short_white_normalisation_ignores_what_no_input_can_hold():
    from dealthdr import metrics
    gt = np.full((16, 16, 3), 0.2, dtype=np.float32)
    gt[:2, :2] = 1500.0                      # a sun, far above the short exposure's white
    pred = gt.copy()
    pred[:2, :2] = 1.0                       # clipped at the short exposure's white
    assert metrics.psnr_mu(pred, gt, peak=1.0) == float("inf")
    assert metrics.psnr_mu(pred, gt) < 40    # GT-max normalisation is dominated by the sun


def test_hard_region_is_occlusion_border_and_fast_motion():
    h, w = 24, 32
    still = np.zeros((2, h, w), np.float32)
    fast = still.copy()
    fast[0, 4:8, 20:26] = 6.0                    # a sprite moving 6 px right
    occluded = still.copy()
    back = still.copy()
    back[:, 14:18, 4:8] = 3.0                    # the way back disagrees: occlusion
    hard = metrics.hard_region({-1: (still, still), 1: (fast, still), 2: (occluded, back)})
    assert hard[4:8, 20:26].all() and hard[14:18, 4:8].all()
    assert not hard[:, :2].any() and not hard[20:].any() and not hard[:12, :18].any()
    assert not metrics.hard_region({1: (still, still)}).any()
    slow = still + 2.0                            # everything moves 2.8 px: only the border leaves
    border = metrics.hard_region({1: (slow, -slow)}, motion_px=4.0)
    assert border[:, -2:].all() and border[-2:].all() and not border[:-2, :-2].any()
    assert metrics.hard_region({1: (slow, -slow)}, motion_px=2.0).all()
    with pytest.raises(ValueError):
        metrics.hard_region({})


def test_pooled_region_error_matches_psnr_mu():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 1, (16, 20, 3))
    pred = np.clip(gt + rng.normal(0, 0.05, gt.shape), 0, None)
    everywhere = np.ones((16, 20), bool)
    sse, n = metrics.mu_squared_error(pred, gt, everywhere, peak=1.0)
    assert n == gt.size
    assert 10 * np.log10(n / sse) == pytest.approx(metrics.psnr_mu(pred, gt, 1.0), abs=1e-6)
    part = np.zeros((16, 20), bool)
    part[:4] = True
    pred2 = pred.copy()
    pred2[4:] = 0                                 # errors outside the region do not count
    assert metrics.mu_squared_error(pred2, gt, part, 1.0) == \
        pytest.approx(metrics.mu_squared_error(pred, gt, part, 1.0))
