"""Degradation: noise statistics (Eq. A), noise levels (Eq. B), colour pipeline round trip."""
import math
from dataclasses import replace

import numpy as np
import pytest

from dealthdr.data.degrade import (CameraParams, DegradeConfig, degrade, demosaic,
                                   exposure_scale, mosaic, process, sample_camera, sample_noise,
                                   sensor, unprocess)


def _camera(shot: float, read: float, seed: int = 0) -> CameraParams:
    cam = sample_camera(np.random.default_rng(seed), DegradeConfig())
    return replace(cam, lambda_shot=shot, lambda_read=read)


@pytest.mark.parametrize("shot,read", [(3.23e-4, 2.67e-6), (4.52e-3, 4.04e-5)])
def test_raw_noise_variance_matches_eq_a(shot, read):
    """Flat grey HDR -> RAW: per-channel variance = lambda_read + lambda_shot * X within 10 %."""
    cam = _camera(shot, read)
    grey = np.full((128, 128, 3), 0.3)
    clean = mosaic(unprocess(grey, cam))
    noisy = sensor(clean, cam, np.random.default_rng(1), DegradeConfig())
    sites = {"R": (slice(0, None, 2), slice(0, None, 2)),
             "G": (slice(0, None, 2), slice(1, None, 2)),
             "B": (slice(1, None, 2), slice(1, None, 2))}
    for name, sl in sites.items():
        x = clean[sl].mean()
        assert np.allclose(clean[sl], x)
        expected = read + shot * x
        measured = noisy[sl].var()
        assert measured == pytest.approx(expected, rel=0.1), name
        assert noisy[sl].mean() == pytest.approx(x, abs=3 * math.sqrt(expected / clean[sl].size))


def test_eq_b_ranges():
    cfg = DegradeConfig()
    rng = np.random.default_rng(0)
    samples = [sample_noise(rng, cfg) for _ in range(2000)]
    for cond, lo, hi, (slope, icpt, std) in (("day", *cfg.shot_day, cfg.read_day),
                                             ("night", *cfg.shot_night, cfg.read_night)):
        shot = np.array([s[1] for s in samples if s[0] == cond])
        read = np.array([s[2] for s in samples if s[0] == cond])
        assert 800 < len(shot) < 1200  # day/night with probability 1/2
        assert shot.min() >= lo and shot.max() <= hi
        resid = np.log(read) - (slope * np.log(shot) + icpt)
        assert abs(resid.mean()) < 0.05 and resid.std() == pytest.approx(std, rel=0.1)


def test_demosaic_keeps_rggb_colours():
    raw = np.zeros((8, 8))
    raw[0::2, 0::2], raw[0::2, 1::2], raw[1::2, 0::2], raw[1::2, 1::2] = 0.8, 0.4, 0.4, 0.1
    rgb = demosaic(raw, 10)
    assert np.allclose(rgb[4, 4], [0.8, 0.4, 0.1], atol=2e-3)


def test_noise_free_round_trip_recovers_linear_hdr():
    """Without noise, (LDR)^2.2 / exposure equals the exposed HDR where nothing clips."""
    cfg = DegradeConfig(noise_scale=0.0)
    cam = sample_camera(np.random.default_rng(3), cfg)
    y, x = np.mgrid[0:64, 0:64] / 64.0
    hdr = np.stack([0.2 + 0.1 * np.sin(3 * x), 0.3 + 0.1 * np.cos(2 * y), 0.25 + 0.05 * x], -1)
    ldr = degrade(hdr, cam, np.random.default_rng(0), cfg)
    assert ldr.dtype == np.float32 and ldr.min() >= 0 and ldr.max() <= 1
    lin = ldr.astype(np.float64) ** cfg.gamma
    assert np.abs(lin - hdr)[2:-2, 2:-2].max() < 4e-3


def test_saturated_highlights_stay_white():
    cfg = DegradeConfig(noise_scale=0.0)
    cam = sample_camera(np.random.default_rng(4), cfg)
    ldr = process(sensor(mosaic(unprocess(np.full((16, 16, 3), 50.0), cam)), cam,
                         np.random.default_rng(0), cfg), cam, cfg)
    assert np.allclose(ldr, 1.0, atol=1e-6)


def test_ccm_rows_and_white_balance_ranges():
    cfg = DegradeConfig()
    for seed in range(20):
        cam = sample_camera(np.random.default_rng(seed), cfg)
        assert np.allclose(cam.rgb2cam.sum(1), 1)
        assert np.allclose(cam.ccm_weights.sum(), 1)
        assert cfg.red_gain[0] <= cam.wb[0] <= cfg.red_gain[1] and cam.wb[1] == 1
        assert cfg.blue_gain[0] <= cam.wb[2] <= cfg.blue_gain[1]


def test_exposure_scale_hits_the_saturation_share():
    cam = sample_camera(np.random.default_rng(0), DegradeConfig())
    rng = np.random.default_rng(1)
    frames = [np.exp(rng.normal(-2, 0.7, size=(64, 64, 1))) * np.ones(3) for _ in range(3)]
    scale, bound = exposure_scale(frames, cam, 0.02, ratio=8, long_clip_max=0.99)
    level = np.concatenate([np.max(f * scale @ cam.rgb2cam.T, -1).ravel() for f in frames])
    assert bound == "short" and np.mean(level >= 1) == pytest.approx(0.02, abs=0.002)
    # With a tight cap on long-frame clipping, the long frames decide.
    scale2, bound2 = exposure_scale(frames, cam, 0.02, ratio=8, long_clip_max=0.3)
    assert bound2 == "long" and scale2 < scale
    assert np.mean(level / scale * scale2 * 8 >= 1) == pytest.approx(0.3, abs=0.01)
