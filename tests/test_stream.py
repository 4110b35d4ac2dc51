"""Streaming inference (`dealthdr.stream`) against the window path it replaces."""
import math

import pytest
import torch

from dealthdr.reconstruct import window_indices
from dealthdr.stream import FrameStream
from dealthdr.testclip import make_clip
from tests.conftest import untrained_tiny


@pytest.fixture(scope="module")
def model():
    return untrained_tiny(seed=3)


def _sequence(n=9, size=24, exposures=None):
    frames, _, _ = make_clip(size, size, frames=n, seed=5)
    if exposures is None:
        exposures = [8.0 if i % 2 else 1.0 for i in range(n)]
    return frames[0], torch.tensor(exposures)


def _run_both(model, frames, exposures, s):
    n = frames.shape[0]
    stream = FrameStream(model, s)
    worst = 0.0
    for t in range(n):
        idx = window_indices(t, n)
        with torch.no_grad():
            ref = model(frames[idx][None], exposures[idx][None], s=s)
        got, _ = stream(idx, frames[idx][None], exposures[idx][None])
        worst = max(worst, float((got - ref).abs().max()))
    return worst, stream


@pytest.mark.parametrize("s", [0.0, 2.0, math.inf])
def test_stream_equals_windows_at_both_centres_and_the_ends(model, s):
    frames, exposures = _sequence()
    worst, stream = _run_both(model, frames, exposures, s)
    assert worst <= 1e-5
    # every frame through its encoder once (not 5x), every directed pair through SpyNet once:
    # 2 * (pairs at distance 1 and 2) = 2 * (8 + 7) for 9 frames, plus the self-pairs (1, 1)
    # and (7, 7) that reflection puts in the windows of frames 1 and 7
    assert stream.encoded == 9 and stream.estimated == 32
    assert len(stream.features) <= 5                       # a ring of one window


def test_auto_exposure_change_recomputes_the_affected_frames(model):
    # Auto exposure lengthens both exposures by 0.5 % from frame 5 on (the network reads a
    # frame more than 1 % above its window's shortest as long, so larger steps within one
    # window are refused by the window path too): windows reaching past frame 5 normalise to
    # another shortest exposure, and frames seen before must be encoded again
    exposures = [1.0, 8.0, 1.0, 8.0, 1.0, 8.04, 1.005, 8.04, 1.005, 8.04, 1.005]
    frames, exp = _sequence(n=11, exposures=exposures)
    worst, stream = _run_both(model, frames, exp, 2.0)
    assert worst <= 1e-5
    assert stream.encoded > 11                             # some frames were encoded again


def test_stream_refuses_what_the_network_refuses(model):
    frames, exposures = _sequence()
    stream = FrameStream(model, 1.0)
    with pytest.raises(ValueError):
        stream([0, 1, 2, 3], frames[:4][None], exposures[:4][None])
    same = torch.ones(5)
    with pytest.raises(ValueError):
        stream([0, 1, 2, 3, 4], frames[:5][None], same[None])   # no alternation
