"""Delegates run their operators in the program's order (dealthdr.export.order)."""
import pytest
import torch
from torch import nn


class _TwoSteps(nn.Module):
    """Two independent conv + relu steps, a portable gather that ends their partition, then
    one more delegated conv. ExecuTorch fuses the partitions from the output back, so the
    first is fused after the graph was re-sorted once."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.a, self.b = (nn.Conv2d(4, 4, 3, padding=1) for _ in range(3))
        self.register_buffer("rows", torch.tensor([3, 2, 1, 0, 4, 5, 6, 7]))

    def forward(self, x):
        one = torch.relu(self.a(x))
        two = torch.relu(self.b(x))
        return self.first((one + two).index_select(2, self.rows))


def _delegate_ops(lowered):
    gm = lowered.exported_program("forward").graph_module
    subs = [m for name, m in gm.named_children() if name.startswith("lowered_module")]
    return [[str(n.target).split(".")[-2] for n in s.original_module.graph.nodes
             if n.op == "call_function"] for s in subs]


@pytest.mark.e2e   # ExecuTorch lowering
def test_delegates_keep_the_program_order():
    from executorch.exir import to_edge_transform_and_lower

    from dealthdr.export.to_executorch import lower, partitioners

    x = torch.rand(1, 4, 8, 8)
    program = torch.export.export(_TwoSteps().eval(), (x,))
    ops = _delegate_ops(lower({"forward": program}, "xnnpack", rewrite=False)[0])
    steps = [o for o in ops[0] if o in ("convolution", "relu")]
    assert steps == ["convolution", "relu", "convolution", "relu"]
    # ExecuTorch's own breadth-first re-sort: what `program_order` is there to undo
    plain = to_edge_transform_and_lower({"forward": torch.export.export(_TwoSteps().eval(), (x,))},
                                        partitioner=partitioners("xnnpack", "fp32"))
    plain_steps = [o for o in _delegate_ops(plain)[0] if o in ("convolution", "relu")]
    assert plain_steps == ["convolution", "convolution", "relu", "relu"]
