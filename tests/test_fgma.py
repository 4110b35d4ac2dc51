import math

import pytest
import torch
import torch.nn.functional as F

from dealthdr.export.order import ancestors
from dealthdr.model import tile_rows
from dealthdr.model.fgma import (DENSE_FROM, FGMA, attention_mask, bucket_tiles, select_bucket,
                                 select_dynamic, tile_max)
from tests.conftest import textured


def _inputs(b=1, per=4, c=8, h=12, w=14, seed=0):
    g = torch.Generator().manual_seed(seed)
    cur = torch.randn(b, c, h, w, generator=g)
    nbs = torch.randn(b * per, c, h, w, generator=g)
    f_tn = torch.randn(b * per, 2, h, w, generator=g) * 2
    f_nt = torch.randn(b * per, 2, h, w, generator=g) * 2
    img = textured(b, 3, h, w, seed=seed)
    return cur, nbs, f_tn, f_nt, img


def test_mask_empty_at_zero_full_at_inf_monotone_in_s():
    d = torch.rand(2, 1, 16, 16)
    assert attention_mask(d, 0.0).sum() == 0
    assert attention_mask(d, math.inf).all()
    assert attention_mask(torch.zeros(1, 1, 4, 4), math.inf).all()  # even where D = 0
    prev = attention_mask(d, 0.0)
    for s in [0.1, 0.6, 1, 2, 15, 100, 1e6]:
        m = attention_mask(d, s)
        assert (m >= prev).all()
        prev = m
    # Eq. 6 in 8-bit units: s * D/255 > 0.5 with D in 0..255
    assert torch.equal(attention_mask(d, 15), ((15 * (d * 255) / 255) > 0.5).float())
    with pytest.raises(ValueError):
        attention_mask(d, -1)


def test_dynamic_equals_bucket_when_masked_tiles_fit():
    fgma = FGMA(8, 5, tile=4).eval()
    args = _inputs(h=12, w=14)                                  # 3 x 4 tiles, ragged edge
    with torch.no_grad():
        dyn, m_dyn = fgma(*args, s=2.0)
        tiles = int((tile_max(m_dyn, 4).flatten(1) > 0).sum(1).max())
        assert 0 < tiles < 12
        for k in (tiles, tiles + 1, 12):
            buck, m_b = fgma(*args, s=2.0, budget=k)
            assert torch.equal(m_dyn, m_b)
            assert torch.allclose(dyn, buck, atol=1e-6)
        # one tile too few: the least inconsistent masked tile falls back to flow
        short, m_s = fgma(*args, s=2.0, budget=tiles - 1)
        assert m_s.sum() < m_dyn.sum() and (m_s <= m_dyn).all()


def test_bucket_of_dense_share_takes_every_tile():
    """From DENSE_FROM of the tiles on, a bucket takes every tile (in an exported graph that is
    cheaper than gathering that many): its output is the dynamic policy's even where more tiles
    hold masked positions than K."""
    fgma = FGMA(8, 5, tile=4).eval()
    args = _inputs(h=16, w=16)                                  # 4 x 4 tiles
    k = math.ceil(DENSE_FROM * 16)
    with torch.no_grad():
        dyn, m_dyn = fgma(*args, s=1e4)
        assert int((tile_max(m_dyn, 4).flatten(1) > 0).sum(1).max()) > k
        buck, m_b = fgma(*args, s=1e4, budget=k)
        assert torch.equal(m_dyn, m_b) and torch.allclose(dyn, buck, atol=1e-6)
        _, m_less = fgma(*args, s=1e4, budget=k - 1)            # below the share: K tiles
    assert m_less.sum() < m_dyn.sum()
    assert bucket_tiles(k, 16) == 16 and bucket_tiles(k - 1, 16) == k - 1


def test_bucket_overflow_keeps_most_inconsistent_tiles():
    d = torch.rand(3, 1, 6, 7)
    ids = select_bucket(d, 2, tile=2)                           # 3 x 4 tiles per item
    assert ids.dtype == torch.int32 and ids.numel() == 6
    score = tile_max(d, 2).flatten(1)
    for item in range(3):
        mine = ids[(ids >= item * 12) & (ids < (item + 1) * 12)].long() - item * 12
        assert mine.numel() == 2
        assert score[item, mine].min() >= score[item].topk(2).values.min()
    assert select_bucket(d, 12, tile=2) is None                 # every tile: no selection


def test_attention_uses_the_neighbour_and_not_at_s0():
    fgma = FGMA(8, 5).eval()
    cur, nbs, f_tn, f_nt, img = _inputs()
    c = 8
    with torch.no_grad():
        out, mask = fgma(cur, nbs, f_tn, f_nt, img, s=math.inf)
        nbs2 = nbs.clone()
        nbs2[0] += torch.randn_like(nbs2[0])
        out2, _ = fgma(cur, nbs2, f_tn, f_nt, img, s=math.inf)
        att, att2 = out[:, c + 1:], out2[:, c + 1:]
        assert (att[0] - att2[0]).abs().max() > 1e-3      # the changed neighbour
        assert torch.equal(att[1:], att2[1:])             # the others are untouched
        flow_only, m0 = fgma(cur, nbs, f_tn, f_nt, img, s=0.0)
        flow_only2, _ = fgma(cur, nbs2, f_tn, f_nt, img, s=0.0)
        assert m0.sum() == 0
        assert flow_only[:, c + 1:].abs().max() == 0 and flow_only2[:, c + 1:].abs().max() == 0


def _naive_weights(fgma, cur_rep, warped):
    """Reference Eq. 7: explicit query and key projections of every position, windows via
    unfold; (N, 1, w*w, H, W) attention weights."""
    num, c, h, w = warped.shape
    k_, r = fgma.window, fgma.window // 2
    keys = F.conv2d(warped, fgma.proj_k.weight.view(c, c, 1, 1), fgma.proj_k.bias)
    q = F.conv2d(cur_rep, fgma.proj_q.weight.view(c, c, 1, 1), fgma.proj_q.bias)
    kw = F.unfold(keys, k_, padding=r).view(num, c, k_ * k_, h, w)
    inside = F.unfold(torch.ones(num, 1, h, w), k_, padding=r).view(num, 1, k_ * k_, h, w) > 0
    scores = (q.unsqueeze(2) * kw).sum(1, keepdim=True) / math.sqrt(c)
    return torch.softmax(scores.masked_fill(~inside, float("-inf")), dim=2)


def _windowed_sum(fgma, weights, values):
    """sum_j a_j v_j over each position's window: (N, E, H, W)."""
    num, e, h, w = values.shape
    k_ = fgma.window
    vw = F.unfold(values, k_, padding=k_ // 2).view(num, e, k_ * k_, h, w)
    return (weights * vw).sum(2)


def _naive_window_attention(fgma, cur_rep, warped, mask):
    """Reference Eq. 7-8: explicit K/V projections of every key, windows via unfold."""
    c = warped.shape[1]
    vals = F.conv2d(warped, fgma.proj_v.weight.view(c, c, 1, 1), fgma.proj_v.bias)
    return _windowed_sum(fgma, _naive_weights(fgma, cur_rep, warped), vals) * mask


def test_sparse_attention_equals_dense_reference():
    fgma = FGMA(8, 5).eval()
    with torch.no_grad():
        for p in fgma.parameters():
            p.normal_(0, 0.5)
        cur, nbs, f_tn, f_nt, img = _inputs(b=2, per=2)
        out, mask = fgma(cur, nbs, f_tn, f_nt, img, s=20.0)
        assert 0 < mask.mean() < 1
        from dealthdr.model.spynet import flow_warp
        ref = _naive_window_attention(fgma, cur.repeat_interleave(2, 0), flow_warp(nbs, f_tn), mask)
        assert torch.allclose(out[:, 9:], ref, atol=1e-5)


@pytest.mark.parametrize("step_rows", [1, 4, 8])
def test_fused_attention_steps_match_reference_values_and_gradients(step_rows):
    """Eager FGMA runs a tile's query steps as the heads of one fused attention call, each
    head's keys an overlapping view of the halo rows; values and gradients (features, flows,
    projections) must be those of the explicit per-window reference at every step size."""
    from dealthdr.model.spynet import flow_warp

    fgma = FGMA(8, 5, step_rows=step_rows)
    with torch.no_grad():
        for p in fgma.parameters():
            p.normal_(0, 0.5)
    cur, nbs, f_tn, f_nt, img = _inputs(b=2, per=2, h=17, w=19)
    weight = torch.linspace(-1, 1, 4 * 8 * 17 * 19).view(4, 8, 17, 19)
    grads = []
    for reference in (False, True):
        fgma.zero_grad()
        x = [t.clone().requires_grad_() for t in (cur, nbs, f_tn)]
        out, mask = fgma(x[0], x[1], x[2], f_nt, img, s=20.0)
        if reference:
            att = _naive_window_attention(fgma, x[0].repeat_interleave(2, 0),
                                          flow_warp(x[1], x[2]), mask)
        else:
            att = out[:, 9:]
            assert 0 < mask.mean() < 1
        (att * weight).sum().backward()
        grads.append([att.detach()] + [t.grad for t in x] +
                     [p.grad.clone() for p in (fgma.proj_q.weight, fgma.proj_k.weight,
                                               fgma.proj_v.weight, fgma.proj_v.bias)])
    for mine, ref in zip(*grads):
        assert torch.allclose(mine, ref, atol=1e-4, rtol=1e-4)


def test_selection_policies_agree_on_tiles():
    d = torch.rand(2, 1, 10, 10) * 0.4                          # 3 x 3 tiles of 4 per item
    d[0, 0, 1, 1], d[0, 0, 5, 9], d[1, 0, 9, 0] = 0.9, 0.8, 0.7
    mask = attention_mask(d, 1.2)                               # s D > 0.5: the three spikes
    assert select_dynamic(mask, 4).tolist() == [0, 5, 9 + 6]
    assert sorted(select_bucket(d, 2, 4).tolist())[:2] == [0, 5]
    assert 9 + 6 in select_bucket(d, 1, 4).tolist()


def test_tile_chunking_does_not_change_the_result():
    fgma = FGMA(8, 3, tile=4).eval()
    args = _inputs(per=3)
    with torch.no_grad():
        whole, _ = fgma(*args, s=math.inf)
        fgma.tile_chunk = 1
        chunked, _ = fgma(*args, s=math.inf)
    assert torch.allclose(whole, chunked, atol=1e-6)


def test_window_must_fit_the_tile_halo():
    with pytest.raises(ValueError, match="tile"):
        FGMA(8, 7, tile=4)
    with pytest.raises(ValueError, match="odd"):
        FGMA(8, 4, tile=8)


def _same_graph(exported, eager):
    """An exported FGMA's output against eager's. Eager folds W_q W_k and the scale into one
    product and builds the sampling grid in one pass where graphs keep the separate ops, so
    the two agree to float reassociation (measured: 5.5e-6 on values up to 3.4), not bit for
    bit."""
    return torch.allclose(exported, eager, atol=1e-5, rtol=1e-5)


class _Branch(torch.nn.Module):
    def __init__(self, s, budget):
        super().__init__()
        self.fgma, self.s, self.budget = FGMA(8, 3, tile=4), s, budget

    def forward(self, cur, nbs, f_tn, f_nt, img):
        return self.fgma(cur, nbs, f_tn, f_nt, img, s=self.s, budget=self.budget)


def _exported_ops(branch, args):
    with torch.no_grad():
        ep = torch.export.export(branch.eval(), args)
        out, mask = ep.module()(*args)
        ref_out, ref_mask = branch(*args)
    assert _same_graph(out, ref_out) and torch.equal(mask, ref_mask)
    return {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}, out, mask


def test_exported_bucket_moves_whole_tiles():
    """The bucket graph gathers whole tiles (index_select of rows: a tile's queries, its key
    halo) and places them back with one int32 scatter of a tile slot map; per-position gathers
    and multi-index index_put are what ExecuTorch's portable kernels run element by element."""
    args = _inputs(per=2)
    ops, out, mask = _exported_ops(_Branch(20.0, 3), args)       # 3 of 12 tiles per item
    assert not {"aten.index.Tensor", "aten.index_put.default", "aten.index_put_.default"} & ops
    assert "aten.scatter.src" in ops and "aten.index_select.default" in ops
    assert 0 < int(mask.sum()) <= 3 * 16 * 2
    # zero wherever no query ran: the zero row of the slot map
    assert torch.all(out[:, 9:][mask.expand(-1, 8, -1, -1) == 0] == 0)


def test_exported_full_bucket_is_dense():
    """s=inf (and any K that covers every tile) selects nothing: static slices only."""
    ops, _, mask = _exported_ops(_Branch(math.inf, None), _inputs(per=2))
    assert mask.all()
    assert not {"aten.index_select.default", "aten.scatter.src", "aten.topk.default"} & ops


def test_exported_dense_bucket_projects_each_frames_queries_once():
    """Every tile taken, one chunk per neighbour: the query side (Proj_q, then W_k) runs once
    for the frame, not once per neighbour's chunk, and the output is the plain graph's."""
    branch = _Branch(math.inf, None)
    branch.fgma.graph_chunk = 12                        # 12x14 in 4x4 tiles: 3 x 4 per map
    args = _inputs(per=3)
    with torch.no_grad():
        ep = torch.export.export(branch.eval(), args)
        assert _same_graph(ep.module()(*args)[0], branch(*args)[0])
    weights = {spec.arg.name: spec.target for spec in ep.graph_signature.input_specs
               if spec.target is not None}
    uses = [weights.get(getattr(a, "name", None)) for n in ep.graph.nodes
            if n.op == "call_function" for a in n.args]
    assert uses.count("fgma.proj_q.weight") == 1 and uses.count("fgma.proj_k.weight") == 1
    assert uses.count("fgma.proj_v.weight") == 3        # one per neighbour's chunk
    bmms = [n for n in ep.graph.nodes if "bmm" in str(n.target)]
    assert len(bmms) == 3 * 2 * 2                       # 3 chunks x 2 steps x (scores, values)


def test_exported_bucket_pads_only_where_the_map_is_not_whole_tiles():
    """A no-op pad still exports as a pad op, and XNNPACK refuses a quantized one at load time
    (the int8 long-centre programs of attention buckets did): at a size of whole tiles the
    graph pads only the key map (its halo margin), never the queries or the mask."""
    def pads(h, w):
        with torch.no_grad():
            ep = torch.export.export(_Branch(20.0, 3).eval(), _inputs(per=2, h=h, w=w))
        return [n.args[1] for n in ep.graph.nodes if "pad" in str(n.target)]

    whole, ragged = pads(12, 16), pads(12, 14)                   # tile 4: 3x4 / 3x3.5 tiles
    assert all(any(p) for p in whole) and len(ragged) > len(whole)


@pytest.mark.parametrize("s,budget,size,b", [(2.0, None, (12, 14), 1), (2.0, 5, (12, 14), 1),
                                             (math.inf, None, (16, 16), 1),
                                             (20.0, 2, (16, 13), 1), (2.0, 5, (12, 14), 2),
                                             (math.inf, None, (8, 12), 2),
                                             (math.inf, None, (10, 13), 2)])
def test_eager_row_layout_equals_graph_layout(s, budget, size, b):
    """Eager mode gathers tiles as rows of channels-last maps; the exported graph's layout run
    eagerly must give the same outputs, executed masks and gradients."""
    fgma = FGMA(8, 5, tile=4, tile_chunk=3)
    with torch.no_grad():
        for p in fgma.parameters():
            p.normal_(0, 0.5)
    results = []
    for rows in (True, False):
        fgma.eager_rows = rows
        fgma.zero_grad()
        args = [x.clone().requires_grad_(i < 2)
                for i, x in enumerate(_inputs(b=b, h=size[0], w=size[1]))]
        out, executed = fgma(*args, s=s, budget=budget)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), executed, args[0].grad, args[1].grad,
                        fgma.proj_q.weight.grad.clone()))
    assert 0 < results[0][1].sum() and torch.equal(results[0][1], results[1][1])
    if math.isinf(s):
        assert results[0][1].all()
    for mine, graph in zip(results[0], results[1]):
        assert torch.allclose(mine, graph, atol=1e-5, rtol=1e-5)


def test_exported_warps_wait_for_their_level_and_for_d():
    """In an exported graph each warp depends on what it serves: every grid_sample on the
    decoder feature (otherwise a delegate partitioner may run all levels' warps in one call,
    their corner reads alive together), and the feature warp on D (D's reads done first).
    The values stay those of the plain graph."""
    args, branch = _inputs(per=2), _Branch(20.0, 3).eval()
    with torch.no_grad():
        ep = torch.export.export(branch, args)
        assert _same_graph(ep.module()(*args)[0], branch(*args)[0])
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    cur, nbs = placeholders[-5], placeholders[-4]
    warps = [n for n in ep.graph.nodes if "grid_sampler" in str(n.target)]
    assert len(warps) == 3                      # D's two image warps and the feature warp
    assert all(cur in ancestors(n) for n in warps)
    feature = [n for n in warps if nbs in ancestors(n.args[0]) | {n.args[0]}]
    assert len(feature) == 1
    assert all(w in ancestors(feature[0]) for w in warps if w is not feature[0])


@pytest.mark.parametrize("budget", [3, None])   # gathered tiles, and every tile (s = inf)
def test_exported_attention_steps_run_one_after_another(budget):
    """Each attention step of an exported graph, and each chunk of tiles, depends on the one
    before: a partitioner that re-sorts the nodes it fuses cannot then hold every step's
    score matrix at once. The values stay those of the plain graph."""
    branch = _Branch(math.inf if budget is None else 20.0, budget).eval()
    branch.fgma.graph_chunk = 2                         # several chunks of two steps each
    args = _inputs(per=2)
    with torch.no_grad():
        ep = torch.export.export(branch, args)
        assert _same_graph(ep.module()(*args)[0], branch(*args)[0])
    bmms = [n for n in ep.graph.nodes if "bmm" in str(n.target)]
    assert len(bmms) >= 8                               # scores and values of 2+ chunks x 2 steps
    for before, later in zip(bmms, bmms[1:]):
        assert before in ancestors(later), (before.name, later.name)


@pytest.mark.parametrize("s,budget,size", [(0.0, None, (12, 14)), (2.0, None, (16, 16)),
                                           (2.0, 5, (12, 14)), (math.inf, None, (16, 16)),
                                           (math.inf, None, (10, 13)),
                                           (math.inf, None, (64, 62))])
def test_inference_output_buffer_equals_concatenation(s, budget, size):
    """Without autograd every-tile results go straight into the output map; with it, through a
    tile table and `torch.cat`. Same Concat(F_flow, M, F_att), bit for bit."""
    fgma = FGMA(8, 5, tile=4, tile_chunk=3).eval()
    args = _inputs(h=size[0], w=size[1])
    with torch.no_grad():
        fast, m_fast = fgma(*args, s=s, budget=budget)
    with torch.enable_grad():
        ref, m_ref = fgma(*args, s=s, budget=budget)
    assert fast.is_contiguous() and fast.shape == ref.shape
    assert torch.equal(fast, ref.detach()) and torch.equal(m_fast, m_ref)
    if s != 0:
        assert fast[:, 9:].abs().sum() > 0                  # F_att was written, not left zero


@pytest.mark.parametrize("h,w", [(16, 24), (13, 21)])
def test_eager_key_buffer_equals_the_padded_key_map(h, w):
    """Eager calls build the key map's features in one buffer (`tile_rows.key_buffer`) and its bias
    channel apart (`border_bias`); exported graphs pad and concatenate. Same values (zero
    features and the minus-infinity bias outside the image), same gradients."""
    from dealthdr.model import tile_rows
    from dealthdr.model.fgma import _NEG

    x = torch.randn(3, 5, h, w, requires_grad=True)
    t, r = 8, 2
    rows, cols = (-(-h // t) + 1) * t, (-(-w // t) + 1) * t
    pad = (0, 0, r, cols - w - r, r, rows - h - r)
    ref = torch.cat((F.pad(x.permute(0, 2, 3, 1), pad),
                     F.pad(torch.zeros(3, h, w, 1), pad, value=_NEG)), 3)
    got = tile_rows.key_buffer(x, r, rows, cols)
    bias = tile_rows.border_bias(h, w, r, rows, cols, _NEG, x).view(1, rows, cols, 1)
    assert torch.equal(torch.cat((got, bias.expand(3, -1, -1, -1)), 3), ref)
    g = torch.randn_like(got)
    assert torch.equal(*(torch.autograd.grad((m * g).sum(), x)[0] for m in (got, ref[..., :5])))


def test_inner_tiles_are_those_whose_halo_lies_inside():
    """Tiles whose halo (the tile grown by r) stays inside the map run without the bias
    channel; a border tile among them would attend to keys outside the image."""
    assert tile_rows.inner_tiles(256, 256, 8, 2) == ((1, 31), (1, 31))
    assert tile_rows.inner_tiles(250, 256, 8, 2) == ((1, 31), (1, 31))   # row 31 reaches 257
    assert tile_rows.inner_tiles(245, 256, 8, 2) == ((1, 30), (1, 31))   # row 30 reaches 250
    assert tile_rows.inner_tiles(250, 256, 8, 0) == ((0, 31), (0, 32))   # no halo: whole tiles
    assert tile_rows.inner_tiles(12, 8, 4, 2) == ((1, 2), (1, 1))        # no inner column


def test_inner_tiles_attend_without_the_bias_channel(monkeypatch):
    """Where the inner block holds most tiles (here 14 x 14 of 16 x 16), its tiles attend with
    head size C and the ring with C + 1; the output is the graph layout's (which always
    carries the bias channel), and a ring tile computed without its bias would differ there."""
    import dealthdr.model.fgma as fgma_module

    seen, sdpa = [], F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append(q.shape[-1])
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(fgma_module.F, "scaled_dot_product_attention", spy)
    fgma = FGMA(8, 5, tile=4, tile_chunk=40).eval()
    args = _inputs(h=64, w=62)
    with torch.no_grad():
        rows, _ = fgma(*args, s=math.inf)
        assert set(seen) == {8, 9}
        fgma.eager_rows = False
        graph, _ = fgma(*args, s=math.inf)
    assert torch.allclose(rows, graph, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("a,b,chunk", [(32, 32, 512), (16, 16, 40), (3, 4, 3), (1, 7, 2),
                                       (6, 5, 1)])
def test_tile_calls_cover_every_tile_once_in_bounded_calls(a, b, chunk):
    inner = tile_rows.inner_tiles(a * 4, b * 4, 4, 2)
    seen, (i0, i1), (j0, j1) = [], *inner
    for inside, pieces in tile_rows.tile_calls(a, b, inner, chunk):
        ids = torch.cat([tile_rows.block_ids(p, b, "cpu") for p in pieces]).tolist()
        assert len(ids) <= max(chunk, max(p[3] - p[2] for p in pieces))   # a row at least
        assert all((i0 <= i // b < i1 and j0 <= i % b < j1) == inside for i in ids)
        assert not inside or len(pieces) == 1
        seen += ids
    assert sorted(seen) == list(range(a * b))


def _naive_fetch(fgma, cur_rep, warped, pixels, mask):
    """Reference for `pixels`: the attention weights of `_naive_window_attention` applied to
    the pixels' windows instead of the value projection's."""
    return _windowed_sum(fgma, _naive_weights(fgma, cur_rep, warped), pixels) * mask


@pytest.mark.parametrize("s,budget,size,b", [(2.0, None, (12, 14), 1), (20.0, 2, (16, 13), 1),
                                             (math.inf, None, (16, 16), 1),
                                             (math.inf, None, (10, 13), 2),
                                             (2.0, 5, (12, 14), 2), (0.0, None, (12, 14), 1)])
@pytest.mark.parametrize("rows", [True, False])
def test_pixels_ride_the_attention_as_values(s, budget, size, b, rows):
    """Value-only channels (`pixels`) leave FGMA's output alone and come back weighted by the
    features' attention at the executed positions, zero elsewhere: the reference on every
    layout and policy, with and without autograd."""
    from dealthdr.model.spynet import flow_warp
    fgma = FGMA(8, 5, tile=4, tile_chunk=3)
    fgma.eager_rows = rows
    with torch.no_grad():
        for p in fgma.parameters():
            p.normal_(0, 0.5)
    args = _inputs(b=b, h=size[0], w=size[1])
    pixels = textured(b * 4, 3, *size, seed=7)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            plain, m_plain = fgma(*args, s=s, budget=budget)
            out, executed, fetched = fgma(*args, s=s, budget=budget, pixels=pixels)
        assert torch.equal(executed, m_plain)
        assert torch.allclose(out, plain, atol=1e-5)
        ref = _naive_fetch(fgma, args[0].repeat_interleave(4, 0), flow_warp(args[1], args[2]),
                           pixels, executed)
        assert fetched.shape == pixels.shape
        assert torch.allclose(fetched, ref, atol=1e-5)
    if s == 0:
        assert fetched.abs().max() == 0
    else:
        assert executed.sum() > 0 and fetched.abs().max() > 0


def test_exported_pixels_equal_eager():
    """The exported graph carries `pixels` through its tile tables (gathered tiles and every
    tile) to the same values as eager."""
    for s, budget in ((20.0, 3), (math.inf, None)):
        branch = _PixelBranch(s, budget).eval()
        args = (*_inputs(per=2), textured(2, 3, 12, 14, seed=3))
        with torch.no_grad():
            ep = torch.export.export(branch, args)
            got, want = ep.module()(*args), branch(*args)
        for g, w in zip(got, want):
            assert torch.allclose(g, w, atol=1e-5)
        assert want[2].abs().max() > 0


class _PixelBranch(_Branch):
    def forward(self, cur, nbs, f_tn, f_nt, img, pixels):
        return self.fgma(cur, nbs, f_tn, f_nt, img, s=self.s, budget=self.budget, pixels=pixels)
