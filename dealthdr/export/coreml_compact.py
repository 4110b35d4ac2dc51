"""Smaller Core ML program text: one const per value, short variable names.

A Core ML package stores its weights once (shared by every function of a multifunction
package) but each function's program text on its own, and for small networks the text is
most of the package: `tiny`'s fp16 s=0 function at 256x256 was 755 KB of text beside 3.8 MB
of weights, and a package holds one function per s-bucket and centre. Two things fill it:
- Constants. coremltools writes every operator parameter (strides, pads, groups, axes,
  flags, quantization zero points) as its own `const` op and deduplicates only constants of
  100 or more elements, so 300 convolutions carry 1500 identical small constants. Here every
  numeric constant is deduplicated (the converter's own pass, run once more at threshold 1)
  and so are strings and booleans (`dedupe_small_consts`), which that pass leaves alone.
- Names. Every variable is referenced by its name wherever it is read, and the exporter's
  names spell out module paths ("p_model_encoder_short_blocks_0_0_norm1_weight_to_fp16").
  `shorten_names` renames every internal variable and op to a short unique name; the
  functions' inputs and outputs keep theirs, and parameters keep the `p_` prefix that tells
  them from folded constants.
Neither changes what the program computes: an op reads the same values through a shared
variable. What is lost is the module path in an op's name (Xcode's performance report
shows the short names); `readable_names` keeps them for debugging.
"""
from __future__ import annotations


def dedupe_small_consts(block) -> int:
    """Replace every string or boolean `const` that repeats an earlier one of the same value
    by that one (also in nested blocks). Returns how many were removed."""
    removed = 0
    for op in list(block.operations):
        for inner in op.blocks:
            removed += dedupe_small_consts(inner)
    first = {}
    outputs = set(block.outputs)
    with block:
        for op in list(block.operations):
            if op.op_type != "const":
                continue
            var = op.outputs[0]
            val = var.val
            if not isinstance(val, (str, bool)) or var in outputs:
                continue
            key = (type(val), val)
            if key not in first:
                first[key] = var
                continue
            block.replace_uses_of_var_after_op(anchor_op=op, old_var=var, new_var=first[key])
            block.remove_ops([op])
            removed += 1
    return removed


def shorten_names(function) -> int:
    """Rename the ops and variables of a function's blocks to short unique names; its inputs
    and outputs keep their names. Returns how many variables were renamed."""
    keep = {v.name for v in function.inputs.values()} | {v.name for v in function.outputs}
    count = 0

    def walk(block) -> None:
        nonlocal count
        for op in block.operations:
            param = op.op_type == "const" and op.outputs[0].name.startswith("p_")
            stem = f"{'p_' if param else 'v'}{count:x}"
            count += 1
            while stem in keep or any(f"{stem}_{i}" in keep for i in range(len(op.outputs))):
                stem += "_"                    # never the name of an input or output
            op.name = stem
            for i, var in enumerate(op.outputs):
                if var.name not in keep:
                    var.name = stem if len(op.outputs) == 1 else f"{stem}_{i}"
            for inner in op.blocks:
                walk(inner)

    walk(function)
    return count


def _register() -> tuple[str, str]:
    """Register the two passes with coremltools (once); their pipeline names."""
    from coremltools.converters.mil.mil.passes.defs.cleanup.const_deduplication import (
        const_deduplication)
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY, register_pass

    names = ("dealthdr::dedupe_small_consts", "dealthdr::shorten_names")
    if names[0] in PASS_REGISTRY:
        return names

    class dedupe(AbstractGraphPass):
        def apply(self, prog) -> None:
            # coremltools' own pass with its size threshold at 1 for this call only (the
            # threshold is a class attribute: set through pipeline options it would stay
            # changed for every later conversion in the process)
            numbers = const_deduplication()
            before = numbers.const_threshold
            try:
                numbers.const_threshold = 1
                numbers.apply(prog)
            finally:
                numbers.const_threshold = before
            for function in prog.functions.values():
                dedupe_small_consts(function)

    class shorten(AbstractGraphPass):
        def apply(self, prog) -> None:
            for function in prog.functions.values():
                shorten_names(function)

    for full, cls in zip(names, (dedupe, shorten)):
        namespace, name = full.split("::")
        register_pass(namespace=namespace, name=name)(cls)
    return names


def pipeline(readable_names: bool = False):
    """coremltools' default pass pipeline, compacting: every constant deduplicated, and short
    names unless `readable_names`."""
    import coremltools as ct

    dedupe, shorten = _register()
    pipe = ct.PassPipeline.DEFAULT
    pipe.append_pass(dedupe)
    if not readable_names:
        pipe.append_pass(shorten)
    return pipe
