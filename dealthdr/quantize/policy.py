"""Which nodes of an exported bucket graph may be quantized: the float islands.

A quantizer annotates ops (conv, linear, add, mul, cat, ...); this module decides, per node of
the torch.export graph, whether it may. Three things always stay float:

- integer tensors: FGMA's top-k positions, item and row/column indices (an observer on an
  int64 `mul` breaks the graph);
- sampling coordinates: everything that only computes a `grid_sample` grid (base grid + flow,
  the 2/(W-1) scaling, SpyNet's flow up-sampling and accumulation). An int8 coordinate is a
  sampling position rounded to ~0.5 px on a 128-px image;
- the attention mask's statistics: everything that only computes the input of the top-k
  selection or of the `s * D > 0.5` comparison (the consistency difference D);
- normalisation and softmax statistics, within their module: a LayerNorm variance rounded to
  0 makes rsqrt infinite (measured: NaN at the first norm under QAT).

The walk back from those consumers stops at parameterised convs and linears: a learned
layer's own weights and output are judged by the per-block groups below, not dragged into
float because a flow happens to be computed from them. `float_groups` adds whole blocks
(by module path) to the float set; `dealthdr/quantize/sensitivity.py` measures which deserve it.
"""
from __future__ import annotations

import torch
from torch import fx

# Module-path prefixes (inside BucketGraph, so "model.") of the network's blocks, in the
# paper's words; a node belongs to the first group whose prefix its innermost module has.
GROUPS = {
    "encoder_short": ("model.encoder_short",),
    "encoder_long": ("model.encoder_long",),
    "spynet": ("model.spynet",),
    # The lowest-resolution router and the decoder's up-sampling convs hold most of the
    # decoder side's weights at a fraction of its pixels: their own groups let them be int8
    # where the rest of the decoder stays float. First match wins, so they precede their parents.
    "middle_router": ("model.middle_router",),
    "decoder_l3": ("model.routers.0", "model.decoder.0", "model.skips.0"),
    "router": ("model.routers",),
    "middle": ("model.middle",),
    "fgma": ("model.fgma", "model.align_proj"),
    # The full-resolution decoder level (paper's level 1; decoder modules are listed coarse to
    # fine) before the rest of the decoder: first match wins, and it is the one block whose
    # int8 costs the long-centre graphs most (the report's per-group sensitivity table).
    "decoder_l1": ("model.decoder.2",),
    "upsample": ("model.ups",),
    "decoder": ("model.decoder", "model.skips"),
    "head": ("model.head",),
    "merge": ("model.merge",),
}
# Nodes of no block: the input linearisation (x^gamma / exposure), the stacking of frames and
# flows, and the output composition relu(merge + residual), all in the linear HDR domain.
IO_GROUP = "io"

# `ceil` is the threshold of `dealthdr.model.layers.positive_step`, the model's float form of
# a comparison (the mask's s * D > 0.5, the merge's inside test).
INDEX_CONSUMERS = {torch.ops.aten.topk.default, torch.ops.aten.gt.Scalar,
                   torch.ops.aten.gt.Tensor, torch.ops.aten.lt.Scalar, torch.ops.aten.ge.Scalar,
                   torch.ops.aten.ceil.default}
GRID_CONSUMERS = {torch.ops.aten.grid_sampler_2d.default, torch.ops.aten.grid_sampler.default}
# Statistics whose int8 rounding is fatal or biased: a variance quantized to 0 makes rsqrt
# infinite (measured: NaN at the first LayerNorm under QAT), softmax logits lose the
# small differences that pick a key. Their inputs stay float back to the edge of their module.
STAT_CONSUMERS = {torch.ops.aten.rsqrt.default, torch.ops.aten.sqrt.default,
                  torch.ops.aten.reciprocal.default, torch.ops.aten._softmax.default,
                  torch.ops.aten.softmax.int}
WEIGHTED = {torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default,
            torch.ops.aten.linear.default}


def _is_float(node: fx.Node) -> bool:
    val = node.meta.get("val")
    return not isinstance(val, torch.Tensor) or val.is_floating_point()


def _has_parameter_weight(node: fx.Node, params: set[str]) -> bool:
    if node.target not in WEIGHTED or len(node.args) < 2:
        return False
    w = node.args[1]
    return isinstance(w, fx.Node) and w.op == "get_attr" and w.target in params


def module_path(node: fx.Node) -> str:
    """The innermost module of a node, as a dotted path ('' for the top level)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path.replace("L['self'].", "").replace("L__self___", "")


def group_of(node: fx.Node) -> str:
    path = module_path(node)
    for name, prefixes in GROUPS.items():
        if any(path == p or path.startswith(p + ".") or path.startswith(p + "@")
               for p in prefixes):
            return name
    return IO_GROUP


def group_names() -> tuple[str, ...]:
    return (*GROUPS, IO_GROUP)


def coordinate_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes that feed grid coordinates, top-k scores or mask comparisons, back to (excluding)
    the nearest parameterised conv/linear; and the statistics of norms and softmax."""
    params = {n for n, _ in gm.named_parameters()}
    out: set[fx.Node] = set()
    todo = []
    for node in gm.graph.nodes:
        if node.target in GRID_CONSUMERS and len(node.args) > 1:
            todo.append(node.args[1])
        elif node.target in INDEX_CONSUMERS:
            todo.extend(a for a in node.all_input_nodes if _is_float(a))
    while todo:
        node = todo.pop()
        if not isinstance(node, fx.Node) or node in out or node.op in ("placeholder", "get_attr"):
            continue
        if _has_parameter_weight(node, params):
            continue
        out.add(node)
        todo.extend(node.all_input_nodes)
    for node in gm.graph.nodes:
        if node.target in STAT_CONSUMERS:
            out |= _module_slice(node, params)
    return out


def _module_slice(consumer: fx.Node, params: set[str]) -> set[fx.Node]:
    """The float inputs of `consumer` back to the edge of its own module (a norm's mean,
    centring, variance and epsilon; the logits of a softmax), so the residual stream that
    feeds the module is not dragged into float."""
    home = module_path(consumer)
    out, todo = set(), [a for a in consumer.all_input_nodes if _is_float(a)]
    while todo:
        node = todo.pop()
        if node in out or node.op != "call_function" or module_path(node) != home \
                or _has_parameter_weight(node, params):
            continue
        out.add(node)
        todo.extend(node.all_input_nodes)
    return out


class FloatPolicy:
    """A quantizer filter: `policy(node)` is True where the node may be quantized."""

    def __init__(self, gm: fx.GraphModule, float_groups: tuple[str, ...] = (),
                 only_groups: tuple[str, ...] | None = None) -> None:
        unknown = (set(float_groups) | set(only_groups or ())) - set(group_names())
        if unknown:
            raise ValueError(f"unknown block groups {sorted(unknown)}; "
                             f"known: {sorted(group_names())}")
        self.coordinates = coordinate_nodes(gm)
        self.float_groups = set(float_groups)
        self.only_groups = None if only_groups is None else set(only_groups)

    def __call__(self, node: fx.Node) -> bool:
        if node.op == "get_attr":
            # A weight has no module stack (it would land in `io`); the quantizers check it as
            # part of its conv's partition, so the conv's own group decides. Judging it as `io`
            # left every conv weight float whenever `io` was a float group.
            return True
        if node in self.coordinates:
            return False
        if not _is_float(node) or not all(_is_float(a) for a in node.all_input_nodes):
            return False
        group = group_of(node)
        if group in self.float_groups:
            return False
        return self.only_groups is None or group in self.only_groups

    def describe(self) -> dict:
        return {"coordinate_and_mask_nodes": len(self.coordinates),
                "float_groups": sorted(self.float_groups),
                "only_groups": None if self.only_groups is None else sorted(self.only_groups)}
