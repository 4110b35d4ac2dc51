"""Lower without deep-copying every node's provenance chain at every pass.

torch.fx records where a node came from (`node.meta["from_node"]`, a chain of `NodeSource`
records), and each time a pass re-creates a node, the new record deep-copies the old node's
whole chain (`torch.fx.traceback.NodeSource.__init__`). Every ExecuTorch edge pass and every
XNNPACK pass re-creates every node it visits, once per delegate partition, so the chains grow
by one record per pass and the copies grow with the square of the number of passes. Measured
on `tiny`'s 64x64 s=15 program (2.7 k nodes, 40 XNNPACK partitions, one thread): 131-146 s
per lowering, 110-119 s with the chains shared, the same .pte bytes.

The records are never modified once made (passes replace a node's list, they do not edit a
record's), so a new record may point at the same older records instead of copies of them:
`shared_provenance` makes that copy shallow while lowering and restores torch's own on exit.
"""
from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from types import SimpleNamespace

log = logging.getLogger(__name__)


@contextmanager
def shared_provenance():
    """While lowering, a new provenance record shares its node's older records (see above)."""
    from torch.fx import traceback as fx_traceback

    before = getattr(fx_traceback, "copy", None)
    if before is not copy:  # another torch: nothing of ours to replace, lower as it does
        log.warning("torch.fx.traceback no longer copies provenance with the copy module; "
                    "lowering keeps torch's own copies")
        yield
        return
    fx_traceback.copy = SimpleNamespace(deepcopy=copy.copy, copy=copy.copy)
    try:
        yield
    finally:
        fx_traceback.copy = before
