"""Graph rewrites applied to an exported program before ExecuTorch lowering.

Model-level forms that keep ops inside the XNNPACK delegate live in the model itself (channel
LayerNorm and the consistency difference's channel mean as constant 1x1 convs, the L2 norm's
sum as a (2, 3) mean), so every backend gets them and they are unit-tested against the plain
formulas. What remains here is graph-level: constant propagation, which folds everything that
depends on no input (the warp's base grids from `arange`, the FGMA window offsets and index
tables, constant kernels from `full`) into constants instead of portable kernels run on every
call. `--no-rewrites` skips it to measure what it buys.

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


def apply_rewrites(program):
    from executorch.exir.passes.constant_prop_pass import constant_prop_pass

    return constant_prop_pass(program, custom_skip_targets=skip_targets())
