"""Folding the norms' affine and the layer scales into convolutions (dealthdr.model.fold)."""
import math

import pytest
import torch

from dealthdr.export.buckets import window_inputs
from dealthdr.model.fold import fold_affine
from dealthdr.model.layers import LayerNorm2d
from tests.conftest import untrained_tiny


def _trained_like(seed: int = 0):
    """An untrained tiny whose layer scales (zero at init: every block the identity) and norm
    affines are random, so each folded step changes the output if it is folded wrongly."""
    model = untrained_tiny(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".scale"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            elif ".norm" in name and name.endswith(".weight"):
                p.copy_(1 + torch.randn(p.shape, generator=gen) * 0.3)
            elif ".norm" in name and name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


@pytest.mark.parametrize("centre", ["short", "long"])
@pytest.mark.parametrize("s,budget", [(0.0, None), (15.0, None), (15.0, (6, 3, 1)),
                                      (math.inf, None)])
def test_folded_model_computes_the_same_function(centre, s, budget):
    model = _trained_like()
    folded = fold_affine(model)
    frames, exposures = window_inputs(centre, (32, 48), model.cfg.num_frames)
    with torch.no_grad():
        ref, ref_stats = model.forward_with_stats(frames, exposures, s=s, budget=budget)
        out, stats = folded.forward_with_stats(frames, exposures, s=s, budget=budget)
        unscaled = model.__class__(model.cfg).eval()
        unscaled.load_state_dict(model.state_dict())
        for name, p in unscaled.named_parameters():
            if name.endswith(".scale"):
                p.data.zero_()
        other = unscaled(frames, exposures, s=s, budget=budget)
    assert (out - ref).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max()))
    assert stats.attention_ratio == ref_stats.attention_ratio
    # the scales matter, so an unfolded (dropped) scale would have been caught
    assert (other - ref).abs().max() > 1e-3


def test_fold_leaves_the_original_and_removes_every_affine_step():
    model = _trained_like()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_affine(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(m.weight is not None for m in model.modules() if isinstance(m, LayerNorm2d))
    norms = [m for m in folded.modules() if isinstance(m, LayerNorm2d)]
    assert norms and all(m.weight is None and m.bias is None for m in norms)
    assert not any(name.endswith(".scale") for name, _ in folded.named_parameters())
    assert folded.folded_steps > 0 and not folded.training


def test_fold_refuses_a_norm_it_has_no_rule_for():
    model = _trained_like()
    model.extra_norm = LayerNorm2d(8)
    with pytest.raises(ValueError, match="extra_norm"):
        fold_affine(model)


def test_folded_export_has_fewer_map_ops():
    """The point of folding: the exported graph loses a multiply per layer scale and a multiply
    and an add per norm."""
    from dealthdr.export.buckets import Bucket, export_program

    model = _trained_like()
    bucket = Bucket(s=15.0, centre="short", ratio=(1.0, 1.0, 1.0), budget=(6, 3, 1), tile=8)

    def count(m):
        ep = export_program(m, bucket, (32, 32))
        ops = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
        return ops.count("aten.mul.Tensor"), ops.count("aten.add.Tensor")

    muls, adds = count(model)
    folded = fold_affine(model)
    fmuls, fadds = count(folded)
    scales = sum(name.endswith(".scale") for name, _ in model.named_parameters())
    norms = sum(isinstance(m, LayerNorm2d) for m in model.modules())
    assert muls - fmuls == scales + norms
    assert adds - fadds == norms
