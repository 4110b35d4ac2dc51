"""Keep the program's operator order through delegate partitioning.

ExecuTorch fuses each partition into a submodule (`create_submodule_from_nodes`) and then
re-sorts the whole remaining graph with `torch.fx`'s `legalize_graph`: a breadth-first
topological sort that does not keep the order it was given. The next partition is fused in
that order and its delegate runs its operators in it, so independent steps the program wrote
one after another become "every step's first op, then every step's second op". In FGMA's
exported attention that held all eight score matrices of a level (12.6 MB each at 256x256)
alive in one XNNPACK call, and XNNPACK's workspace (shared by every call of the program, sized
for the largest) grew to 190 MB at s=15. `stable_topological_sort` is the same sort keeping
the given order wherever the data allow, which is the order the network was written in.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager

log = logging.getLogger(__name__)


def ancestors(node) -> set:
    """Every node of its graph that `node` depends on (what must run before it)."""
    seen, todo = set(), [node]
    while todo:
        for a in todo.pop().all_input_nodes:
            if a not in seen:
                seen.add(a)
                todo.append(a)
    return seen


@contextmanager
def program_order():
    """While lowering, partitions are fused keeping the graph's own operator order."""
    from executorch.exir import lowered_backend_module
    from torch.fx.passes.tools_common import stable_topological_sort

    before = getattr(lowered_backend_module, "legalize_graph", None)
    if before is None:  # another ExecuTorch: nothing of ours to replace, lower as it does
        log.warning("executorch.exir.lowered_backend_module has no legalize_graph; delegates "
                    "keep ExecuTorch's own operator order")
        yield
        return
    lowered_backend_module.legalize_graph = stable_topological_sort
    try:
        yield
    finally:
        lowered_backend_module.legalize_graph = before
