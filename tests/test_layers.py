import torch
import torch.nn.functional as F

from dealthdr.model.layers import LayerNorm2d, positive_step, replicate_pad
from dealthdr.model.router import FrameHistoryRouter


def test_layernorm2d_matches_layer_norm_over_channels():
    ln = LayerNorm2d(12)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = torch.randn(3, 12, 7, 9) * 5 + 2
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (12,), ln.weight, ln.bias, ln.eps)
    assert torch.allclose(ln(x), ref.permute(0, 3, 1, 2), atol=1e-5)


def test_router_mixes_information_from_neighbours():
    router = FrameHistoryRouter(16, heads=2, expansion=2.5).eval()
    x = torch.randn(2, 16, 8, 8)
    others = torch.randn(2 * 4, 16, 8, 8)
    with torch.no_grad():
        base = router(x, others)
        changed = others.clone()
        changed[5] += 3 * torch.randn(16, 8, 8)      # sample 1, neighbour 1
        out = router(x, changed)
    assert (out[1] - base[1]).abs().max() > 1e-3     # the current frame sees its neighbours
    assert torch.equal(out[0], base[0])              # and only its own sample's


def test_router_attention_spans_all_frames():
    # With a query that matches one neighbour's channels, the routed output follows that
    # neighbour: keys/values really cover the (T'+1) frames, not just the current one.
    router = FrameHistoryRouter(8, heads=1, expansion=2.0).eval()
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        a = router(x, torch.zeros(4, 8, 6, 6))
        b = router(x, torch.randn(4, 8, 6, 6))
    assert (a - b).abs().mean() > 1e-3


def test_channel_attention_equals_the_plain_normalised_form():
    """Scaling the score matrix by inverse norms is attention between L2-normalised rows; the
    router's keys, normalised before their head-major reshuffle, give the same result."""
    from dealthdr.model.blocks import channel_attention, inverse_norms_hw

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 5, 7, generator=g, dtype=torch.float64)
    k = torch.randn(2, 9, 5, 7, generator=g, dtype=torch.float64)
    v = torch.randn(2, 9, 5, 7, generator=g, dtype=torch.float64)
    temp = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64).view(3, 1, 1)
    qn = F.normalize(q.reshape(2, 3, 2, 35), dim=-1)
    kn = F.normalize(k.reshape(2, 3, 3, 35), dim=-1)
    attn = torch.softmax(qn @ kn.transpose(-1, -2) * temp, dim=-1)
    plain = (attn @ v.reshape(2, 3, 3, 35)).reshape(2, 6, 5, 7)
    assert torch.allclose(channel_attention(q, k, v, 3, temp), plain, atol=1e-12)
    assert torch.allclose(inverse_norms_hw(k) * k.flatten(2).norm(dim=-1)[..., None, None],
                          torch.ones(2, 9, 1, 1, dtype=k.dtype))

    router = FrameHistoryRouter(8, 2, 2.0).double().eval()
    x, others = torch.randn(1, 8, 6, 6, dtype=torch.float64), torch.randn(4, 8, 6, 6,
                                                                          dtype=torch.float64)
    keys = router.to_k(router.norm(torch.cat((x, others))))
    assert torch.allclose(router._head_major(inverse_norms_hw(keys), 1, 5),
                          inverse_norms_hw(router._head_major(keys, 1, 5)), atol=1e-12)


def test_consistency_difference_channel_mean_as_conv_equals_mean():
    from dealthdr.model.fgma import consistency_difference

    gen = torch.Generator().manual_seed(0)
    img = torch.rand(3, 3, 16, 20, generator=gen, dtype=torch.float64)
    fwd = torch.randn(3, 2, 16, 20, generator=gen, dtype=torch.float64) * 2
    bwd = torch.randn(3, 2, 16, 20, generator=gen, dtype=torch.float64) * 2
    d = consistency_difference(img, fwd, bwd)
    from dealthdr.model.spynet import flow_warp
    back = flow_warp(flow_warp(img, bwd, padding_mode="border"), fwd, padding_mode="border")
    assert d.shape == (3, 1, 16, 20)
    assert torch.allclose(d, (back - img).abs().mean(1, keepdim=True), atol=1e-12)
    assert d.max() > 0.05  # the flows are not consistent: a non-trivial difference


def test_router_one_window_form_equals_the_batched_form():
    """A batch of one stacks its frames as 4-D maps; a batch of two takes the 5-D path. Both
    must route each window the same."""
    router = FrameHistoryRouter(8, 2, 2.0).double().eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 6, 6, generator=g, dtype=torch.float64)
    others = torch.randn(8, 8, 6, 6, generator=g, dtype=torch.float64)
    with torch.no_grad():
        both = router(x, others)
        one = [router(x[i:i + 1], others[4 * i:4 * i + 4]) for i in range(2)]
    assert torch.allclose(both, torch.cat(one), atol=1e-12)


def test_positive_step_is_the_comparison_bit_for_bit():
    tiny = torch.finfo(torch.float32).tiny
    x = torch.tensor([-float("inf"), -1e30, -1.0, -tiny / 4, -0.0, 0.0, tiny / 4, tiny, 1e-30,
                      0.5, 1.0, 1.5, 7.0, 1e30, float("inf")])
    for dtype in (torch.float32, torch.float16, torch.float64):
        v = x.to(dtype)
        assert torch.equal(positive_step(v), (v > 0).to(dtype)), dtype
    a, b = torch.randn(10000), torch.randn(10000)
    b[:100] = a[:100]                          # ties: a > b is false, so is the step
    assert torch.equal(positive_step(a - b), (a > b).float())


def test_replicate_pad_equals_f_pad_replicate():
    x = torch.randn(2, 3, 7, 9)
    for r in (0, 1, 5):
        assert torch.equal(replicate_pad(x, r), F.pad(x, (r, r, r, r), mode="replicate"))


def test_one_head_router_exports_no_head_major_transpose():
    """With one head the keys and values are head-major as they stand: the exported router
    transposes only the keys of its score matmul (a transpose of a unit dim exports as a copy
    of the map), and routes as the multi-head rearrangement does."""
    router = FrameHistoryRouter(8, 1, 2.0).eval()
    g = torch.Generator().manual_seed(4)
    x, others = torch.randn(1, 8, 6, 6, generator=g), torch.randn(4, 8, 6, 6, generator=g)
    with torch.no_grad():
        ep = torch.export.export(router, (x, others))
        assert torch.allclose(ep.module()(x, others), router(x, others), atol=1e-6)
        keys = router.to_k(router.norm(torch.cat((x, others))))
        spread = keys.reshape(1, 5, 1, 8, 6, 6).transpose(1, 2).reshape(1, 40, 6, 6)
        assert torch.equal(router._head_major(keys, 1, 5), spread)
    moves = [n for n in ep.graph.nodes if n.op == "call_function"
             and any(k in str(n.target) for k in ("transpose", "permute"))]
    assert len(moves) == 1
