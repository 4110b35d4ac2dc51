import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dealthdr.model.align import Aligned, AlignProjection
from dealthdr.model.fgma import FGMA
from dealthdr.testclip import make_clip
from tests.conftest import untrained_tiny
from tests.test_fgma import _inputs


@pytest.mark.parametrize("s,budget", [(0.0, None), (2.0, None), (2.0, 5), (math.inf, None)])
def test_projection_of_parts_equals_projection_of_the_concatenation(s, budget):
    """FGMA's output as parts through `AlignProjection` is the 1x1 convolution of the
    concatenation it stands for, whichever F_att layout the policy leaves (none, selected
    tiles, every tile)."""
    fgma = FGMA(8, 5, tile=4, tile_chunk=3).eval()
    proj = AlignProjection(8)
    with torch.no_grad():
        proj.weight.normal_()
        proj.bias.normal_()
        args = _inputs(h=12, w=14)
        whole, mask = fgma(*args, s=s, budget=budget)
        parts, mask_parts = fgma(*args, s=s, budget=budget, parts=True)
        assert isinstance(parts, Aligned) and (parts.attended is None) == (s == 0)
        # where attention ran, F_att comes before W_v, which the projection folds in
        assert (parts.value is fgma.proj_v) == (s != 0)
        assert torch.equal(mask, mask_parts)
        assert torch.equal(torch.cat([parts.flow, parts.mask, whole[:, 9:]], 1), whole)
        assert torch.allclose(proj(parts), proj(whole), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(proj(parts._replace(mask=1 - parts.mask)), proj(whole),
                                  atol=1e-3)
        # FLOPs are counted for both paths (Table G): the parts' products are the convolution's
        # but for the mask channel, which is an element-wise multiply-add, plus folding W_v
        # into the F_att weights (a C x C product).
        counts = []
        for x in (parts, whole):
            with FlopCounterMode(display=False) as counter:
                proj(x)
            counts.append(counter.get_total_flops())
        channels = 8 if parts.attended is None else 16
        fold = 0 if parts.value is None else 2 * 8 ** 3
        assert counts[0] == counts[1] * channels // 17 + fold


def test_network_inference_matches_its_autograd_path():
    """The network hands FGMA's parts to the projection only without autograd; both paths give
    the same output."""
    model = untrained_tiny()
    with torch.no_grad():
        for p in model.align_proj.parameters():
            p.normal_(0, 0.3)
    frames, exposures, _ = make_clip(32, 40)
    with torch.no_grad():
        fast = model(frames, exposures, s=15.0)
    ref = model(frames, exposures, s=15.0)
    assert torch.allclose(fast, ref.detach(), atol=1e-5, rtol=1e-5)
