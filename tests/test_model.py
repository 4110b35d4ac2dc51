import json
import math

import pytest
import torch

from dealthdr import create_model
from dealthdr.model import VARIANTS, bucket_budget
from dealthdr.model.inputs import prepare_inputs
from dealthdr.testclip import make_clip
from tests.conftest import untrained_tiny

PATTERN = (False, True, False, True, False)


@pytest.fixture(scope="module")
def tiny():
    return untrained_tiny()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_runs_forward_and_backward(variant):
    model = create_model(variant)
    frames, exposures, hdr = make_clip(32, 40)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    # Two steps: a zero-initialised head (merge_base) passes no gradient upstream on the first.
    for _ in range(2):
        opt.zero_grad()
        out = model(frames, exposures, s=15.0)
        assert out.shape == (1, 3, 32, 40) and (out >= 0).all()
        (out - hdr).abs().mean().backward()
        opt.step()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None and g.abs().sum() > 0 for g in grads) > 0.5 * len(grads)


def test_input_preparation_eq1():
    frames = torch.full((1, 5, 3, 4, 4), 0.5)
    exposures = torch.tensor([[1.0, 8, 1, 8, 1]])
    x = prepare_inputs(frames, exposures)
    lin = 0.5 ** 2.2
    assert torch.allclose(x[0, 0, :3], torch.full((3, 4, 4), lin))
    assert torch.allclose(x[0, 1, :3], torch.full((3, 4, 4), lin / 8))   # long / ratio
    assert torch.allclose(x[0, 1, 3:], torch.full((3, 4, 4), (lin / 8) ** (1 / 2.2)))
    # the exposure ratio is an input: 4x instead of 8x
    x4 = prepare_inputs(frames, torch.tensor([[2.0, 8, 2, 8, 2]]))
    assert torch.allclose(x4[0, 1, :3], torch.full((3, 4, 4), lin / 4))


@pytest.mark.parametrize("size", [(37, 45), (8, 9), (64, 33)])
def test_odd_sizes_are_padded_and_cropped(tiny, size):
    frames, exposures, _ = make_clip(*size)
    with torch.no_grad():
        out = tiny(frames, exposures, s=15.0)
    assert out.shape == (1, 3, *size)


def test_centre_long_window_and_batches(tiny):
    f1, e1, _ = make_clip(24, 24, centre_long=True, seed=1)
    f2, e2, _ = make_clip(24, 24, centre_long=True, seed=2)
    with torch.no_grad():
        both = tiny(torch.cat((f1, f2)), torch.cat((e1, e2)), s=1.0)
        one = tiny(f2, e2, s=1.0)
    assert torch.allclose(both[1:], one, atol=1e-5)


def test_neighbours_influence_the_output(tiny):
    frames, exposures, _ = make_clip(32, 32)
    with torch.no_grad():
        base = tiny(frames, exposures, s=math.inf)
        changed = frames.clone()
        changed[:, 0] = changed[:, 0].flip(-1)
        assert (tiny(changed, exposures, s=math.inf) - base).abs().max() > 1e-6


def test_bad_inputs_raise_clear_errors(tiny):
    frames, exposures, _ = make_clip(16, 16)
    with pytest.raises(ValueError, match="expected 5 frames"):
        tiny(frames[:, :4], exposures[:, :4])
    with pytest.raises(ValueError, match="3 colour channels"):
        tiny(frames[:, :, :2], exposures)
    bad = frames.clone()
    bad[0, 1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        tiny(bad, exposures)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tiny(frames * 255, exposures)
    with pytest.raises(ValueError, match="floating point"):
        tiny((frames * 255).to(torch.uint8), exposures)
    with pytest.raises(ValueError, match="alternate"):
        tiny(frames, torch.tensor([[1.0, 8, 8, 1, 8]]))
    with pytest.raises(ValueError, match="exposures must be"):
        tiny(frames, torch.tensor([[1.0, 8, 1]]))
    with pytest.raises(ValueError, match="different short/long"):
        tiny(torch.cat((frames, frames)), torch.tensor([[1.0, 8, 1, 8, 1], [8.0, 1, 8, 1, 8]]))
    with pytest.raises(ValueError, match="s must be"):
        tiny(frames, exposures, s=-1.0)
    with pytest.raises(ValueError, match="5-D|\\(B, T, 3, H, W\\)"):
        tiny(frames[0], exposures)


def test_dynamic_and_bucket_agree_in_the_full_model(tiny):
    frames, exposures, _ = make_clip(32, 32)
    with torch.no_grad():
        dyn, stats = tiny.forward_with_stats(frames, exposures, s=15.0)
        full = bucket_budget(1.0, (32, 32), tiny.cfg.attn_tile)
        buck = tiny(frames, exposures, s=15.0, budget=full)
        assert torch.allclose(dyn, buck, atol=1e-5)
        small = tiny(frames, exposures, s=15.0, budget=(1, 1, 1))
        if stats.attention_ratio > 0:
            assert not torch.allclose(dyn, small, atol=1e-6)


def test_torch_export_with_bucket_policy(tiny):
    frames, exposures, _ = make_clip(32, 32)
    budget = bucket_budget(0.25, (32, 32), tiny.cfg.attn_tile)

    class Wrapped(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, f, e):
            return self.model(f, e, s=15.0, budget=budget, long_pattern=PATTERN)

    wrapped = Wrapped(tiny)
    program = torch.export.export(wrapped, (frames, exposures))
    with torch.no_grad():
        assert torch.allclose(program.module()(frames, exposures), wrapped(frames, exposures),
                              atol=1e-5)
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "aten.topk.default" in ops and "aten.grid_sampler.default" in ops

    class Dynamic(Wrapped):
        def forward(self, f, e):
            return self.model(f, e, s=15.0, long_pattern=PATTERN)

    with pytest.raises(Exception, match="bucket policy"):
        torch.export.export(Dynamic(tiny), (frames, exposures))


@pytest.mark.parametrize("exposures", [[1.0, 8, 1, 8, 1], [8.0, 1, 8, 1, 8]])
def test_consistency_difference_is_computed_on_the_captured_centre_frame(tiny, exposures):
    """Eq. 4-5 warp L_t itself: a long centre frame is not darkened to the short exposure first,
    so one s selects alike for short- and long-centred windows."""
    frames, _, _ = make_clip(32, 32)
    frames = frames.clamp(0.02, 1)
    seen = []
    hook = tiny.fgma[2].register_forward_hook(lambda m, args, out: seen.append(args[4]))
    try:
        with torch.no_grad():
            tiny(frames, torch.tensor([exposures]), s=15.0)
    finally:
        hook.remove()
    assert torch.allclose(seen[0], frames[:, 2], atol=1e-5)


def test_decoder_blocks_follow_app_c_and_old_configs_keep_theirs():
    from dealthdr.model.blocks import ChannelAttnBlock, ReducedAttnBlock
    from dealthdr.model.config import DeAltHDRConfig, get_config

    paper = create_model("s")
    assert all(isinstance(b, ChannelAttnBlock) for level in paper.decoder for b in level)
    assert isinstance(create_model("tiny").decoder[2][0], ReducedAttnBlock)
    old = {k: v for k, v in json.loads(get_config("default").to_json()).items()
           if k != "decoder_block"}                # written before the field existed
    assert DeAltHDRConfig.from_dict(old).decoder_block == "level"
    with pytest.raises(ValueError, match="decoder_block"):
        DeAltHDRConfig(decoder_block="dense")


@pytest.mark.parametrize("centre_long", [False, True])
def test_encoder_features_stay_in_time_order(tiny, centre_long):
    """Each encoder runs once on its exposure's frames; slot i of every level must hold frame
    i's features, or FGMA warps a neighbour's features with another frame's flow."""
    frames, exposures, _ = make_clip(32, 32, centre_long=centre_long)
    with torch.no_grad():
        x = tiny._padded_inputs(frames, exposures)
        pattern = tuple(bool(e > exposures.min()) for e in exposures[0])
        feats = tiny._encode(x, pattern)
        c = len(pattern) // 2
        for i in range(len(pattern)):
            own = (tiny.encoder_long if pattern[i] else tiny.encoder_short)(x[:, i])
            for level in range(4):
                centre, near = feats[level]
                got = centre if i == c else near[i if i < c else i - 1:][:1]
                assert torch.allclose(got, own[level], atol=1e-5), (i, level)


@pytest.mark.parametrize("centre_long", [False, True])
def test_the_centre_exposure_encoder_runs_first(tiny, centre_long):
    """Whatever the centre exposure, the encoder of the centre's frames (three of five) runs
    before the other (two): an exported graph's delegate calls downstream of the encoders then
    take their inputs in the same order in both centres' methods, and a program stores each of
    those calls once instead of once per method (int8, 64x64, s=0: 3.09 -> 2.99 MB)."""
    frames, exposures, _ = make_clip(32, 32, centre_long=centre_long)
    calls = []
    hooks = [enc.register_forward_pre_hook(lambda m, args, name=name: calls.append(
        (name, args[0].shape[0]))) for name, enc in (("short", tiny.encoder_short),
                                                    ("long", tiny.encoder_long))]
    try:
        with torch.no_grad():
            tiny(frames, exposures, s=0.0)
    finally:
        for h in hooks:
            h.remove()
    first, second = ("long", "short") if centre_long else ("short", "long")
    assert calls == [(first, 3), (second, 2)]
