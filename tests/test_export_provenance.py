"""Lowering shares provenance records instead of deep-copying them (dealthdr.export.provenance)."""
import contextlib

import pytest
import torch
from torch import nn
from torch.fx import traceback as fx_traceback

from dealthdr.export import provenance, to_executorch


def _node_with_history():
    gm = torch.fx.symbolic_trace(nn.ReLU())
    node = next(n for n in gm.graph.nodes if n.op not in ("placeholder", "output"))
    older = fx_traceback.NodeSource(node, "first")
    node.meta["from_node"] = [older]
    return node, older


def test_new_records_share_the_older_records_only_while_lowering():
    node, older = _node_with_history()
    with provenance.shared_provenance():
        shared = fx_traceback.NodeSource(node, "second")
    copied = fx_traceback.NodeSource(node, "second")   # torch's own behaviour is back
    assert shared.from_node == [older] and shared.from_node is not node.meta["from_node"]
    assert shared.from_node[0] is older
    assert copied.from_node[0] is not older and copied.from_node[0].pass_name == "first"


@pytest.mark.e2e   # ExecuTorch lowering
def test_shared_provenance_lowers_to_the_same_program(monkeypatch):
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1)).eval()
    x = torch.rand(1, 3, 16, 16)

    def lowered():
        programs = {"forward": torch.export.export(net, (x,), strict=False)}
        return to_executorch.lower(programs, "xnnpack", rewrite=False)[0].buffer

    shared = lowered()
    monkeypatch.setattr(to_executorch, "shared_provenance", contextlib.nullcontext)
    assert lowered() == shared                  # torch's own deep copies: the same program
