"""Delegation coverage of a lowered ExecuTorch program: which ops run in the delegate.

Reported as the share of operators and the share of FLOPs inside delegate calls. FLOPs come from
torch's FLOP formulas (plus dealthdr.profile's for grid_sample, topk, gather, softmax, pointwise)
evaluated on each node's recorded shapes, so the figure counts the work, not the node count: one
convolution left outside a delegate weighs more than a dozen views.
"""
from __future__ import annotations

from collections import Counter

from torch.utils.flop_counter import flop_registry, shape_wrapper

from dealthdr.profile import EXTRA_FLOP_FORMULAS

_REGISTRY = {**flop_registry, **{k: shape_wrapper(v) for k, v in EXTRA_FLOP_FORMULAS.items()}}
_FREE = {"getitem", "executorch_call_delegate", "alloc", "view_copy", "_assert_tensor_metadata"}


def _aten(target):
    return getattr(target, "_op", target)  # EdgeOpOverload wraps the ATen overload


def _name(target) -> str:
    op = _aten(target)
    return getattr(op, "__name__", str(op)).split(".")[0].removeprefix("aten::")


def node_flops(node) -> int:
    import torch.fx as fx
    from torch.utils._pytree import tree_map

    op = _aten(node.target)
    formula = _REGISTRY.get(getattr(op, "overloadpacket", None))
    if formula is None or "val" not in node.meta:
        return 0
    val = lambda a: a.meta.get("val") if isinstance(a, fx.Node) else a  # noqa: E731
    try:
        return int(formula(*tree_map(val, node.args), out_val=node.meta["val"],
                           **tree_map(val, node.kwargs)))
    except Exception:  # a formula that cannot read these args counts as 0, never aborts
        return 0


def _ops(graph) -> list:
    return [n for n in graph.nodes if n.op == "call_function" and _name(n.target) not in _FREE]


def coverage(edge_program) -> dict:
    """Coverage of one method of a lowered EdgeProgramManager/ExportedProgram."""
    ep = edge_program
    gm = ep.graph_module
    delegated_ops, delegated_flops, delegates = 0, 0, 0
    for node in gm.graph.nodes:
        if node.op == "get_attr" and hasattr(getattr(gm, node.target, None), "original_module"):
            delegates += 1
            inner = _ops(getattr(gm, node.target).original_module.graph)
            delegated_ops += len(inner)
            delegated_flops += sum(node_flops(n) for n in inner)
    outside = _ops(gm.graph)
    outside_flops = sum(node_flops(n) for n in outside)
    total_ops = delegated_ops + len(outside)
    total_flops = delegated_flops + outside_flops
    hist = Counter(_name(n.target) for n in outside)
    return {"delegate_calls": delegates,
            "ops_delegated": delegated_ops, "ops_total": total_ops,
            "op_share": delegated_ops / total_ops if total_ops else 1.0,
            "flops_delegated": delegated_flops, "flops_total": total_flops,
            "flop_share": delegated_flops / total_flops if total_flops else 1.0,
            "not_delegated": dict(hist.most_common())}
