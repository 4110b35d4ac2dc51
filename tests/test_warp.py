import torch

from dealthdr.model.fgma import consistency_difference
from dealthdr.model.spynet import flow_warp, resize_flow
from tests.conftest import textured


def test_warp_by_true_flow_reproduces_shifted_image():
    img = textured(h=40, w=48)
    dx, dy = 3, -2
    # frame n is frame t moved by (dx, dy): n(p) = t(p - d), so t(p) = n(p + d).
    n = torch.roll(img, shifts=(dy, dx), dims=(2, 3))
    flow = torch.zeros(1, 2, 40, 48)
    flow[:, 0], flow[:, 1] = dx, dy
    back = flow_warp(n, flow)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))
    assert torch.allclose(back[inner], img[inner], atol=1e-5)


def test_warp_subpixel_has_no_half_pixel_shift():
    # A linear ramp warped by 0.5 px must land exactly half-way between neighbours.
    ramp = torch.arange(16, dtype=torch.float32).view(1, 1, 1, 16).expand(1, 1, 8, 16)
    flow = torch.zeros(1, 2, 8, 16)
    flow[:, 0] = 0.5
    out = flow_warp(ramp.contiguous(), flow)
    assert torch.allclose(out[..., :-1], ramp[..., :-1] + 0.5, atol=1e-5)


def test_zero_flow_is_identity():
    img = textured(h=17, w=23)
    assert torch.allclose(flow_warp(img, torch.zeros(1, 2, 17, 23)), img, atol=1e-6)


def test_resize_flow_scales_vectors():
    flow = torch.ones(1, 2, 8, 8)
    flow[:, 1] = 2
    big = resize_flow(flow, (32, 16))
    assert big.shape == (1, 2, 32, 16)
    assert torch.allclose(big[:, 0], torch.full((1, 32, 16), 2.0))   # x: 16/8
    assert torch.allclose(big[:, 1], torch.full((1, 32, 16), 8.0))   # y: 2 * 32/8


def test_consistency_difference_small_for_consistent_flows_large_at_occlusion():
    img = textured(h=48, w=48)
    fwd = torch.zeros(1, 2, 48, 48)
    fwd[:, 0] = 4.0                 # O_{t->n}
    bwd = -fwd                      # O_{n->t}: the exact inverse of a translation
    d = consistency_difference(img, fwd, bwd)
    assert d[..., 8:-8, 8:-8].max() < 1e-5
    # Occlusion: inside a block the backward flow disagrees with the forward flow.
    bad = bwd.clone()
    bad[..., 16:32, 16:32] = 6.0
    d_occ = consistency_difference(img, fwd, bad)
    inside = d_occ[..., 18:30, 18:30].mean()
    outside = d_occ[..., 36:44, 8:-8].mean()
    assert inside > 0.05 and outside < 1e-5
