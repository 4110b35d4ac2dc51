"""Tiled inference: fixed tile shapes, blending that is exact for local maps, bad overlaps."""
import numpy as np
import pytest
import torch

from dealthdr.tiling import ramp, run_tiled, tile_starts


def test_tile_starts_cover_with_fixed_tiles_and_overlap():
    for length, tile, overlap in [(1080, 256, 32), (1920, 256, 32), (300, 256, 0), (256, 256, 8)]:
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == max(length, tile)
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
    assert tile_starts(100, 256, 32) == [0]
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(500, 64, 64)


def test_ramp_never_zero_and_flat_inside():
    w = ramp(64, 16, True, True)
    assert w.min() > 0 and w[16:48].min() == 1.0 and w[0] < w[15]
    assert ramp(64, 16, False, False).min() == 1.0


def test_run_tiled_feeds_one_shape_and_blends_exactly_for_a_local_map():
    frames = torch.rand(1, 5, 3, 100, 170)
    exposures = torch.tensor([[1.0, 8, 1, 8, 1]])
    shapes = set()

    def local(f, e):  # a purely local map: any tiling must reproduce it
        shapes.add(tuple(f.shape[-2:]))
        return (f[:, 2] * 2 + f[:, 1]).numpy()

    out = run_tiled(local, frames, exposures, tile=64, overlap=12)
    assert shapes == {(64, 64)}                   # what a fixed-shape program takes
    ref = (frames[0, 2] * 2 + frames[0, 1]).permute(1, 2, 0).numpy()
    assert out.shape == (100, 170, 3) and np.allclose(out, ref, atol=1e-6)
