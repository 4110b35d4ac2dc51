"""Graph rewrites applied to an exported program before ExecuTorch lowering.

Model-level forms that keep ops inside the XNNPACK delegate live in the model itself (channel
LayerNorm and the consistency difference's channel mean as constant 1x1 convs, the L2 norm's
sum as a (2, 3) mean), so every backend gets them and they are unit-tested against the plain
formulas. What remains here is graph-level: constant propagation, which folds everything that
depends on no input (the warp's base grids from `arange`, the FGMA window offsets and index
tables, constant kernels from `full`) into constants instead of portable kernels run on every
call. `--no-rewrites` skips it to measure what it buys.
"""
from __future__ import annotations


def apply_rewrites(program):
    from executorch.exir.passes.constant_prop_pass import constant_prop_pass

    return constant_prop_pass(program)
