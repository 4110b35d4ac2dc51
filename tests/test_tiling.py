"""Tiled inference: fixed aligned tile shapes, blending that is exact for local maps, frame-wide
attention statistics that sum over tiles (the network's agreement: tests/test_reconstruct.py)."""
import numpy as np
import pytest
import torch

from dealthdr.model import create_model
from dealthdr.model.framestats import frame_statistics
from dealthdr.tiling import ramp, run_tiled, tile_starts


def test_tile_starts_cover_with_fixed_aligned_tiles_and_overlap():
    for length, tile, overlap, align in [(1080, 256, 32, 8), (1920, 256, 32, 8), (304, 256, 0, 8),
                                         (256, 256, 8, 1), (1000, 100, 30, 1)]:
        starts = tile_starts(length, tile, overlap, align)
        assert starts[0] == 0 and starts[-1] + tile == max(length, tile)
        assert all(s % align == 0 for s in starts)
        assert all(overlap <= a + tile - b for a, b in zip(starts, starts[1:]))
    assert tile_starts(100, 256, 32) == [0]
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(500, 64, 64)
    with pytest.raises(ValueError, match="multiples of 8"):
        tile_starts(1001, 256, 32, 8)


def test_ramp_never_zero_and_flat_inside():
    w = ramp(64, 16, True, True)
    assert w.min() > 0 and w[16:48].min() == 1.0 and w[0] < w[15]
    assert ramp(64, 16, False, False).min() == 1.0


def test_run_tiled_feeds_one_shape_pads_and_blends_exactly_for_a_local_map():
    frames = torch.rand(1, 5, 3, 100, 170)
    exposures = torch.tensor([[1.0, 8, 1, 8, 1]])
    shapes = set()

    def local(t):  # a purely local map: any tiling must reproduce it
        shapes.add(tuple(t.frames.shape[-2:]))
        return (t.frames[:, 2] * 2 + t.frames[:, 1]).numpy(), []

    out = run_tiled(local, frames, exposures, tile=64, overlap=12, align=8)
    assert shapes == {(64, 64)}                   # what a fixed-shape program takes
    ref = (frames[0, 2] * 2 + frames[0, 1]).permute(1, 2, 0).numpy()
    assert out.hdr.shape == (100, 170, 3) and np.allclose(out.hdr, ref, atol=1e-6)
    assert out.frame_sums == [] and out.tiles == 2 * 4


def test_tile_shares_partition_the_frame():
    """Each position's shares over all tiles sum to 1, so summed partials are frame sums."""
    pos = torch.arange(96 * 160, dtype=torch.float32).reshape(1, 1, 1, 96, 160)
    frames = pos.expand(1, 5, 3, 96, 160).contiguous()

    def weighted(t):
        return np.zeros((1, 3, *t.frames.shape[-2:]), np.float32), \
            [((t.frames[:, 0, :1] * t.share).sum().reshape(1), t.share.sum().reshape(1))]

    res = run_tiled(weighted, frames, torch.ones(1, 5), tile=64, overlap=16, align=8)
    s_pos, s_share = res.frame_sums[0]
    assert res.tiles == 2 * 3
    assert torch.allclose(s_share, torch.tensor([96.0 * 160]), rtol=1e-5)
    assert torch.allclose(s_pos, pos.sum().reshape(1), rtol=1e-5)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    with torch.no_grad():  # untrained blocks start as identities; make every mixer act
        for name, p in model.named_parameters():
            if name.endswith("scale") or "head" in name:
                p.normal_(0, 0.3)
    return model


def test_frame_statistics_of_one_whole_tile_leave_the_forward_unchanged(net):
    frames, exposures = torch.rand(1, 5, 3, 64, 64), torch.tensor([[1.0, 8, 1, 8, 1]])
    with torch.no_grad():
        plain = net(frames, exposures, s=15.0)
        with frame_statistics(torch.ones(1, 1, 64, 64)) as rec:
            own = net(frames, exposures, s=15.0)
        with frame_statistics(torch.ones(1, 1, 64, 64), rec.partials) as again:
            given = net(frames, exposures, s=15.0)
    assert len(rec.partials) == len(again.partials) > 0
    assert torch.allclose(own, plain, atol=1e-5) and torch.allclose(given, plain, atol=1e-5)


def test_window_flows_are_the_forward_flows_on_the_flow_grid(net):
    """Frame-by-frame pooled guides (the lean whole-frame program) give the flows a plain
    forward computes, resized to the padded frame's 1/flow_scale grid."""
    from dealthdr.model.network import flow_grid
    from dealthdr.model.spynet import resize_flow

    exposures = torch.tensor([[1.0, 8, 1, 8, 1]])
    for h, w in ((64, 128), (100, 170)):
        frames = torch.rand(1, 5, 3, h, w)
        with torch.no_grad():
            got = net.window_flows(frames, exposures)
            x = net._padded_inputs(frames, exposures)
            ref = net._flows(x[:, :, 3:].clamp(0, 1), 2)
        grid = flow_grid(x.shape[-2:], net.cfg.flow_scale)
        assert all(g.shape[-2:] == grid for g in got)
        assert all(torch.allclose(g, resize_flow(r, grid), atol=1e-6) for g, r in zip(got, ref))
