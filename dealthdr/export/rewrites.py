"""Graph rewrites applied to an exported program before ExecuTorch lowering.

Ops without an XNNPACK rule run as portable kernels between delegate calls; three of them are
decomposed here into ops the delegate runs (or row gathers, the cheapest portable op):
bilinear `grid_sample` (every warp: SpyNet's, FGMA's, the merge's; its portable kernel recomputes
the sampling weights per channel, the largest portable cost of the fp32 programs) into four
corner reads as row gathers of a channels-last map and a weighted sum; fractional `pow` (the
gamma curves) into exp and log; `amax` over colour channels into elementwise maxima. They run on
the ATen program after quantization, so the quantizer only ever sees the original ops (its
policy keeps the sampling coordinates float) and the decompositions are float. Core ML converts
from the unrewritten program (it has `resample`, `pow` and reductions). Permutes of permutes,
which the warp's decomposition leaves where FGMA wants the warped map channels last, are
folded into one (or none).

Model-level forms that keep ops inside the XNNPACK delegate live in the model itself (channel
LayerNorm and the consistency difference's channel mean as constant 1x1 convs, the L2 norm's
sum as a (2, 3) mean, threshold tests as float steps, replicate padding as slices), so every
backend gets them and they are unit-tested against the plain
formulas. What remains here is graph-level: constant propagation, which folds everything that
depends on no input (the warp's base grids from `arange`, the FGMA window offsets and index
tables, constant kernels from `full`) into constants instead of portable kernels run on every
call, and once more on the edge program before partitioning (`edge_constant_fold`), where
the casts that edge conversion puts on the decompositions' integer scalars would otherwise run
as portable kernels. `--no-rewrites` skips all of it to measure what it buys.

Dequantize ops are never folded. ExecuTorch's pass skips them only as *edge* ops, and
it runs here on the ATen-level program, so by default it folded `dequantize_per_channel(int8
weight)` into a float weight: the int8 .pte then held every conv weight in fp32 (7.46 MB of
constants in both a fully int8 and an fp32 graph, measured) and XNNPACK ran those convs in
float between a dequantize and a quantize.
"""
from __future__ import annotations


def skip_targets() -> set:
    """Ops constant propagation must leave in the graph: upstream's default (edge `full`) and
    the dequantize ops, at ATen and edge level. A quantize of a constant may fold (it is the
    int8 tensor to store); keeping it too left `dequantize(quantize(0-dim constant))` chains
    that XNNPACK's ChannelsLastTaggedReshapePass indexes as 1-dim (IndexError, measured)."""
    from executorch.exir.operator.util import _QUANT_PRIMITIVES
    from executorch.exir.passes.constant_prop_pass import get_default_skip_targets_no_quant
    from executorch.exir.passes.replace_aten_with_edge_pass import aten_to_edge

    out = set(get_default_skip_targets_no_quant())
    for op in _QUANT_PRIMITIVES:
        if "dequantize" in str(op):
            out |= {op, aten_to_edge(op)}
    return out


def grid_sample_by_gathers(inp, grid, interpolation_mode: int = 0, padding_mode: int = 0,
                           align_corners: bool = False):
    """`aten.grid_sampler` for bilinear, align_corners=True, zeros or border padding, as four
    row gathers and a weighted sum; equal to it up to float rounding (tests/test_rewrites.py).

    Zeros padding reads from the map padded by zeros (1 before, 2 after) with the coordinates
    clamped to [-1, size]: a corner outside the map reads a zero, as grid_sample treats it.
    Border padding clamps the coordinates to the map, as grid_sample does."""
    import torch
    import torch.nn.functional as F

    if interpolation_mode != 0 or not align_corners or padding_mode not in (0, 1):
        raise ValueError("grid_sample_by_gathers takes bilinear, align_corners=True, zeros or "
                         f"border padding; got mode {interpolation_mode}, padding "
                         f"{padding_mode}, align_corners {align_corners}")
    num, c, h, w = inp.shape
    gx, gy = grid[..., :1], grid[..., 1:]                         # slices: select is portable
    px, py = (gx + 1) * ((w - 1) / 2), (gy + 1) * ((h - 1) / 2)   # (N, Ho, Wo, 1) pixels
    if padding_mode == 1:                                         # border
        px, py, src, off = px.clamp(0, w - 1), py.clamp(0, h - 1), inp, 0
    else:                                                         # zeros
        px, py, off = px.clamp(-1, w), py.clamp(-1, h), 1
        src = F.pad(inp, (1, 2, 1, 2))
    hp, wp = src.shape[-2:]
    if num * hp * wp >= 2 ** 24:
        raise ValueError(f"grid_sample_by_gathers: {num} x {hp} x {wp} positions exceed exact "
                         "float32 row indices; export a smaller size (large frames run as tiles)")
    x0, y0 = torch.floor(px), torch.floor(py)
    wx, wy = (px - x0).reshape(-1, 1), (py - y0).reshape(-1, 1)
    step_x = (x0 + 1).clamp(max=wp - 1 - off) - x0                # 1, or 0 at a border clamp
    step_y = ((y0 + 1).clamp(max=hp - 1 - off) - y0) * wp
    # Row indices in float (exact below 2^24), so the index arithmetic stays in the delegate
    # and only the four conversions to integers run as portable kernels.
    item = torch.arange(num, device=inp.device, dtype=px.dtype).view(num, 1, 1, 1) * hp
    i00 = (item + y0 + off) * wp + x0 + off
    rows = src.permute(0, 2, 3, 1).reshape(num * hp * wp, c)

    def read(flat):
        return rows.index_select(0, flat.reshape(-1).to(torch.int64))

    out = (read(i00) * ((1 - wx) * (1 - wy)) + read(i00 + step_x) * (wx * (1 - wy))
           + read(i00 + step_y) * ((1 - wx) * wy) + read(i00 + step_y + step_x) * (wx * wy))
    return out.reshape(num, *grid.shape[1:3], c).permute(0, 3, 1, 2)


def pow_by_exp_log(x, exponent):
    """x ** e for a scalar e other than 2 as exp(e * log x): XNNPACK delegates exp, log and
    square, not other powers. Equal for x >= 0 (0 ** e = exp(-inf) = 0 for e > 0) up to float
    rounding; NaN for x < 0 like a fractional power."""
    import torch

    if exponent == 2:
        return x * x
    return torch.exp(torch.log(x) * exponent)


def amax_by_maximum(x, dim, keepdim: bool = False):
    """amax over one short axis (colour channels, frames) as a chain of elementwise maxima of
    its slices: XNNPACK delegates `maximum`, not `amax`."""
    import torch

    dims = [dim] if isinstance(dim, int) else list(dim)
    if len(dims) != 1 or x.shape[dims[0]] > 16:
        raise ValueError(f"amax_by_maximum takes one axis of at most 16 entries, got dims {dims} "
                         f"of shape {tuple(x.shape)}")
    axis = dims[0] % x.dim()
    out = x.narrow(axis, 0, 1)
    for i in range(1, x.shape[axis]):
        out = torch.maximum(out, x.narrow(axis, i, 1))
    return out if keepdim else out.squeeze(axis)


def decompose_portable_ops(program):
    """The ops above as their delegate-friendly forms, in an exported program."""
    import torch

    table = {torch.ops.aten.grid_sampler.default: grid_sample_by_gathers,
             torch.ops.aten.grid_sampler_2d.default: grid_sample_by_gathers,
             torch.ops.aten.pow.Tensor_Scalar: pow_by_exp_log,
             torch.ops.aten.amax.default: amax_by_maximum}
    return program.run_decompositions(table)


def fold_permutes(program):
    """Each permute of a permute as one permute of the first one's input, none where the two
    compose to the identity. The warp's row gathers produce channels-last maps that the
    decomposition permutes back to (N, C, H, W); FGMA's key map and the second warp of the
    consistency check permute them to channels last again at once, and a delegate runs every
    permute it is given as a copy of the map. In place; returns the program."""
    import torch

    permute = torch.ops.aten.permute.default
    graph = program.graph_module.graph
    for node in list(graph.nodes):
        src = node.args[0] if node.target == permute else None
        if getattr(src, "target", None) != permute or any(u.op == "output" for u in node.users):
            continue  # an output keeps its node: the signature names it
        rank = len(node.args[1])
        inner, outer = ([d % rank for d in n.args[1]] for n in (src, node))
        dims = [inner[d] for d in outer]
        if dims == list(range(rank)):
            node.replace_all_uses_with(src.args[0])
        else:
            with graph.inserting_before(node):
                merged = graph.call_function(permute, (src.args[0], dims))
            merged.meta = dict(node.meta)
            node.replace_all_uses_with(merged)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    program.graph_module.recompile()
    return program


def apply_rewrites(program):
    from executorch.exir.passes.constant_prop_pass import constant_prop_pass

    program = fold_permutes(decompose_portable_ops(program))
    return _detached(constant_prop_pass(program, custom_skip_targets=skip_targets()))


def _detached(program):
    """The program with its folded constants detached: computed from trainable weights they
    keep requires_grad, and torch warns once per constant whenever the program is unlifted."""
    for name, value in program.constants.items():
        if getattr(value, "requires_grad", False):
            program.constants[name] = value.detach()
    return program


def edge_constant_fold():
    """A pass for `to_edge_transform_and_lower(transform_passes=...)`: constant propagation
    once more on the edge program, before partitioning. Edge conversion promotes the 0-dim
    integer constants that the decompositions above leave (the warp's sizes and offsets) with
    a cast to float per use; nothing folds those casts, so each ran as a portable kernel on
    every call and had its own instruction and tensor in the program: 229 of the 452
    non-delegated ops of a 256x256 s=15 method of `tiny`, and 35 KB of its program. Folded, the
    delegate takes the float scalar as a constant. Same skip list as `apply_rewrites`, so
    weight dequantize ops stay."""
    from executorch.exir.pass_base import ExportedProgramPassBase, ExportedProgramPassResult
    from executorch.exir.passes.constant_prop_pass import constant_prop_pass

    class EdgeConstantFold(ExportedProgramPassBase):
        def call(self, exported_program):
            folded = constant_prop_pass(exported_program, custom_skip_targets=skip_targets())
            return ExportedProgramPassResult(_detached(folded), True)

    return EdgeConstantFold()
