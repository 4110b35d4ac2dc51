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


def pte_bytes(data: bytes) -> dict:
    """Where a `.pte`'s bytes go, as stored (identical entries are written once):
    `stored_tensors`, ExecuTorch's named data (weights, biases, and XNNPACK's per-channel
    quantization scales, counted again in `weight_scales`), shared by the methods wherever the
    bytes are equal; `delegate_payloads`, the backends' graph descriptions, one per delegate
    call of each method unless two are identical; `program`, the flatbuffer of execution plans,
    the ops left to portable kernels and their constants; `padding`, segment alignment. What is
    not weights is the floor an int8 program cannot go under by shrinking weights alone."""
    from executorch.exir._serialize._program import _get_extended_header, deserialize_pte_binary

    pte = deserialize_pte_binary(data)
    named = pte.named_data
    sizes = ({key: len(named.buffers[e.buffer_index]) for key, e in named.pte_data.items()}
             if named is not None else {})
    stored = sum(len(b) for b in named.buffers) if named is not None else 0
    payloads = {bytes(d.data) for d in pte.program.backend_delegate_data}
    header = _get_extended_header(data)
    program = header.program_size if header is not None else len(data)
    payload_bytes = sum(map(len, payloads))
    return {"total": len(data), "stored_tensors": stored, "stored_entries": len(sizes),
            "weight_scales": sum(n for k, n in sizes.items() if k.startswith("scale_")),
            "delegate_payloads": payload_bytes, "delegate_payloads_unique": len(payloads),
            "delegate_calls": sum(len(plan.delegates) for plan in pte.program.execution_plan),
            "program": program, "padding": len(data) - stored - payload_bytes - program}
