"""Export rewrites: decompositions, folded permutes and constants, int8 weights kept int8."""
import pytest
import torch
from torch import nn


def _int8_conv_program():
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(16, 64, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(64, 16, 3, padding=1)).eval()
    x = torch.rand(1, 16, 24, 24)
    gm = torch.export.export(net, (x,), strict=False).module()
    q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    gm = prepare_pt2e(gm, q)
    gm(x)
    gm = convert_pt2e(gm)
    return torch.export.export(gm, (x,), strict=False), gm, x


@pytest.mark.e2e   # PTQ + ExecuTorch lowering
def test_constant_propagation_keeps_weight_dequantize_and_int8_storage():
    from executorch.exir._serialize._program import deserialize_pte_binary

    from dealthdr.export.rewrites import apply_rewrites
    from dealthdr.export.to_executorch import lower

    program, converted, x = _int8_conv_program()
    folded = apply_rewrites(program)
    dq = [n for n in folded.graph.nodes
          if n.target == torch.ops.quantized_decomposed.dequantize_per_channel.default]
    assert len(dq) == 2                                   # one per conv weight, not folded
    assert all(n.args[0].meta["val"].dtype == torch.int8 for n in dq)

    prog, _ = lower({"forward": program}, "xnnpack")
    stored = sum(len(b) for b in deserialize_pte_binary(prog.buffer).named_data.buffers)
    weights = 2 * 16 * 64 * 9
    assert stored < 2 * weights       # int8: ~1 byte per weight (fp32 would be 4)

    from executorch.runtime import Runtime

    y = Runtime.get().load_program(prog.buffer).load_method("forward").execute([x])[0]
    with torch.no_grad():
        ref = converted(x)
    assert torch.allclose(y, ref, atol=0.05 * ref.abs().max().item())


def test_grid_sample_by_gathers_equals_grid_sample_inside_and_outside_the_map():
    import torch.nn.functional as F

    from dealthdr.export.rewrites import grid_sample_by_gathers

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 9, 13, generator=g)
    # coordinates well outside [-1, 1] too, and exact pixel centres and edges
    grid = torch.rand(3, 7, 11, 2, generator=g) * 3 - 1.5
    grid[0, 0, :3] = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, -1.0]])
    for mode, code in (("zeros", 0), ("border", 1)):
        ref = F.grid_sample(x, grid, mode="bilinear", padding_mode=mode, align_corners=True)
        out = grid_sample_by_gathers(x, grid, 0, code, True)
        assert torch.allclose(out, ref, atol=1e-5), mode
    with pytest.raises(ValueError, match="bilinear"):
        grid_sample_by_gathers(x, grid, 1, 0, True)


def test_decomposed_warp_program_has_no_grid_sampler_and_the_same_output():
    from dealthdr.model.spynet import flow_warp
    from dealthdr.export.rewrites import decompose_portable_ops

    class Warp(nn.Module):
        def forward(self, x, flow):
            return flow_warp(x, flow) + flow_warp(x[:, :3], flow, padding_mode="border").mean()

    x, flow = torch.randn(2, 6, 16, 20), torch.randn(2, 2, 16, 20) * 4
    program = torch.export.export(Warp(), (x, flow))
    out = decompose_portable_ops(program)
    assert not [n for n in out.graph.nodes if "grid_sampler" in str(n.target)]
    assert any("index_select" in str(n.target) for n in out.graph.nodes)
    assert torch.allclose(out.module()(x, flow), Warp()(x, flow), atol=1e-5)


def test_permutes_of_the_warp_output_fold_and_the_output_is_unchanged():
    from dealthdr.export.rewrites import decompose_portable_ops, fold_permutes
    from dealthdr.model.spynet import flow_warp

    class WarpTwiceThenChannelsLast(nn.Module):
        # The consistency check's two warps, then a channels-last use of the result (FGMA's
        # key map) and a transposed one that must keep a (merged) permute.
        def forward(self, x, flow):
            there = flow_warp(x, flow, padding_mode="border")
            back = flow_warp(there, -flow, padding_mode="border")
            last = back.permute(0, 2, 3, 1)
            return last * 2.0, back.permute(0, 3, 2, 1).contiguous() + 1.0, back

    x, flow = torch.randn(2, 3, 16, 20), torch.randn(2, 2, 16, 20) * 3
    want = WarpTwiceThenChannelsLast()(x, flow)
    program = decompose_portable_ops(torch.export.export(WarpTwiceThenChannelsLast(), (x, flow)))

    def permutes(p):
        return [n.args[1] for n in p.graph.nodes if n.target == torch.ops.aten.permute.default]

    before = permutes(program)
    after = permutes(fold_permutes(program))
    # Each warp: its grid to (N, H, W, 2), its input to channels last, its output back. The
    # second warp's input permute cancels the first's output permute, the key-map-like permute
    # cancels the second's output permute, and the (0, 3, 2, 1) one merges with it.
    assert len(before) == 8 and len(after) == 5
    assert [0, 2, 1, 3] in [list(p) for p in after]
    for got, ref in zip(program.module()(x, flow), want):
        assert torch.allclose(got, ref, atol=1e-5)


def test_pow_and_amax_decompositions_match():
    from dealthdr.export.rewrites import amax_by_maximum, decompose_portable_ops, pow_by_exp_log

    x = torch.rand(2, 5, 3, 6, 7)
    x[0, 0, 0, 0, :3] = 0.0
    assert torch.allclose(pow_by_exp_log(x, 2.2), x ** 2.2, atol=1e-6)
    assert torch.equal(pow_by_exp_log(x, 2), x * x)
    for dim, keep in ((2, False), (-3, True), (1, False)):
        assert torch.equal(amax_by_maximum(x, [dim], keep), x.amax(dim=dim, keepdim=keep))
    with pytest.raises(ValueError, match="one axis"):
        amax_by_maximum(x, [1, 2])

    class Gamma(nn.Module):
        def forward(self, v):
            return v.clamp(0, 1) ** 2.2 + v.amax(dim=2, keepdim=True) + v ** 2

    out = decompose_portable_ops(torch.export.export(Gamma(), (x,)))
    ops = {str(n.target) for n in out.graph.nodes}
    assert "aten.amax.default" not in ops and "aten.pow.Tensor_Scalar" not in ops
    assert torch.allclose(out.module()(x), Gamma()(x), atol=1e-5)


@pytest.mark.e2e   # ExecuTorch lowering
def test_lowered_warp_runs_no_cast_of_a_constant_and_no_select():
    import collections

    from executorch.exir._serialize._program import deserialize_pte_binary
    from executorch.runtime import Runtime

    from dealthdr.export.to_executorch import lower
    from dealthdr.model.spynet import flow_warp

    class ConvWarpConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(6, 6, 3, padding=1)

        def forward(self, x, flow):
            return self.conv(flow_warp(self.conv(x), flow))

    torch.manual_seed(0)
    net = ConvWarpConv().eval()
    x, flow = torch.randn(2, 6, 16, 20), torch.randn(2, 2, 16, 20) * 4
    prog, _ = lower({"forward": torch.export.export(net, (x, flow))}, "xnnpack")
    plan = deserialize_pte_binary(prog.buffer).program.execution_plan[0]
    ops = collections.Counter(plan.operators[i.instr_args.op_index].name
                              for i in plan.chains[0].instructions
                              if hasattr(i.instr_args, "op_index"))
    # The warp's four row gathers each cast their float row index to int64; the 0-dim
    # constants of its decomposition reach the delegate folded, not cast on every call.
    assert ops["aten::index_select"] == 4
    assert ops["dim_order_ops::_to_dim_order_copy"] == 4
    assert ops["aten::select_copy"] == 0     # the flow's x and y are channel slices
    y = Runtime.get().load_program(prog.buffer).load_method("forward").execute([x, flow])[0]
    with torch.no_grad():
        assert torch.allclose(y, net(x, flow), atol=1e-4)


def test_constants_folded_from_weights_do_not_require_grad():
    from dealthdr.export.rewrites import apply_rewrites

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4))

        def forward(self, x):
            return x * self.w.view(1, 4, 1, 1)  # LayerNorm2d's affine weight, folded

    net = Scaled().eval()
    x = torch.randn(1, 4, 3, 3)
    program = apply_rewrites(torch.export.export(net, (x,)))
    assert program.constants                              # the weight's view was folded
    assert not any(c.requires_grad for c in program.constants.values())
    with torch.no_grad():
        assert torch.allclose(program.module()(x), net(x))
