"""Panorama camera and sprites: rendering conventions and exact ground-truth flow."""
import math

import numpy as np
import pytest
import torch

from dealthdr.data.foreground import SpriteConfig, composite_flow, sample_sprites
from dealthdr.data.io import read_hdr
from dealthdr.data.panorama import (CameraMotionConfig, camera_flow, pad_panorama, render_views,
                                    rotation, sample_camera_path, unit_focal)
from dealthdr.data.scene import PanoramaScene
from dealthdr.data.synth import BUNDLED_HDRI
from dealthdr.model.spynet import flow_warp


@pytest.fixture(scope="module")
def pano() -> torch.Tensor:
    return pad_panorama(read_hdr(BUNDLED_HDRI / "forest.exr"))


def _display(x: torch.Tensor, white: float) -> torch.Tensor:
    return (x / white).clamp(0, 1) ** (1 / 2.2)


def _psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    mse = ((a - b) ** 2).mean(1)[mask].mean().item()
    return 10 * math.log10(1 / max(mse, 1e-12))


def _warp_psnr(frame_a: torch.Tensor, frame_b: torch.Tensor, flow: np.ndarray,
               region: np.ndarray | None = None, margin: int = 3) -> float:
    """PSNR (display-referred) of flow_warp(frame_b, O_{a->b}) against frame_a over the pixels
    whose target lies inside frame b."""
    h, w = flow.shape[-2:]
    fl = torch.from_numpy(flow)[None]
    warped = flow_warp(frame_b[None], fl)
    xs = torch.arange(w).view(1, w) + fl[0, 0]
    ys = torch.arange(h).view(h, 1) + fl[0, 1]
    inside = (xs > margin) & (xs < w - 1 - margin) & (ys > margin) & (ys < h - 1 - margin)
    if region is not None:
        inside &= torch.from_numpy(region)
    white = torch.quantile(frame_a, 0.99).item()
    return _psnr(_display(warped, white), _display(frame_a[None], white), inside[None])


def test_render_looks_where_the_pose_says(pano):
    """The image centre of a view with yaw = lon, pitch = lat samples the panorama at (lon, lat)."""
    hp, wp = pano.shape[2], pano.shape[3] - 2
    j, i = 700, 200  # panorama column / row
    lon = (j + 0.5) / wp * 2 * math.pi - math.pi
    lat = math.pi / 2 - (i + 0.5) / hp * math.pi
    rot = rotation(np.array([lon]), np.array([lat]), np.array([0.3]))
    out = render_views(pano, rot, np.array([unit_focal(wp)]), 5, 5)
    assert torch.allclose(out[0, :, 2, 2], pano[0, :, i, j + 1], rtol=1e-4, atol=1e-6)


def test_seam_is_continuous(pano):
    """Looking across the +-180 degree seam gives no discontinuity (longitude wraps)."""
    wp = pano.shape[3] - 2
    f = np.array([unit_focal(wp)])
    out = render_views(pano, rotation(np.array([math.pi]), np.array([0.0]), np.array([0.0])),
                       f, 16, 33)[0]
    row_diffs = (out[:, :, 1:] - out[:, :, :-1]).abs().mean((0, 1))
    assert row_diffs[15:17].max() < 3 * row_diffs.median() + 1e-3


def test_same_time_flow_is_zero():
    rot = rotation(np.array([0.4]), np.array([0.1]), np.array([0.05]))[0]
    flow = camera_flow(rot, 200.0, rot, 200.0, 20, 30)
    assert np.abs(flow).max() < 1e-3


def test_pure_yaw_flow_is_horizontal_at_centre():
    r0 = rotation(np.array([0.0]), np.array([0.0]), np.array([0.0]))[0]
    r1 = rotation(np.array([0.01]), np.array([0.0]), np.array([0.0]))[0]
    flow = camera_flow(r0, 300.0, r1, 300.0, 21, 21)
    # Turning right moves the scene left by about f * dyaw pixels at the centre.
    assert flow[0, 10, 10] == pytest.approx(-300 * math.tan(0.01), rel=1e-4)
    assert abs(flow[1, 10, 10]) < 1e-4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_camera_flow_warps_frame_b_onto_frame_a(pano, seed):
    rng = np.random.default_rng(seed)
    h, w = 48, 64
    cam = sample_camera_path(rng, CameraMotionConfig(speed_px=(8.0, 12.0)), pano.shape[3] - 2)
    scene = PanoramaScene(pano, cam, [], h, w, subframes=8)
    a, b = 4, 20  # two pairs apart: several pixels of rotation and zoom
    frames = scene.render(np.array([a, b]))
    flow = scene.flow(a, b)
    assert np.nanmax(np.abs(flow)) > 2  # the test moves the camera
    assert _warp_psnr(frames[0], frames[1], flow) > 30
    # A wrong flow is clearly worse: the test is sensitive.
    assert _warp_psnr(frames[0], frames[1], np.zeros_like(flow)) < _warp_psnr(
        frames[0], frames[1], flow) - 5


def test_sprite_flow_warps_sprite_pixels(pano):
    rng = np.random.default_rng(5)
    h, w = 48, 64
    cfg = SpriteConfig(count=(1, 1), radius=(0.3, 0.3), speed_px=(6.0, 8.0))
    cam = sample_camera_path(rng, CameraMotionConfig(), pano.shape[3] - 2, still=True)
    sprites = sample_sprites(rng, cfg, [pano], ["forest"], h, w, 1)
    scene = PanoramaScene(pano, cam, sprites, h, w, subframes=8)
    a, b = 0, 8
    frames = scene.render(np.array([a, b]))
    flow = scene.flow(a, b)
    alpha_a = sprites[0].render(np.array([a / 8]), h, w)[0, 3].numpy()
    on = alpha_a > 0.99
    assert on.sum() > 50
    assert np.abs(flow[:, on]).mean() > 1  # the sprite moved
    assert _warp_psnr(frames[0], frames[1], flow, region=on) > 30
    # Off the sprite the camera flow (zero: tripod) stays.
    assert np.abs(flow[:, alpha_a < 0.01]).max() < 1e-3
    # The composite flow is the sprite's own motion where it covers the pixel.
    flat = composite_flow(np.zeros_like(flow), sprites, a / 8, b / 8)
    assert np.allclose(flat[:, on], sprites[0].flow(a / 8, b / 8, h, w)[:, on])
