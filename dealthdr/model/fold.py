"""Fold the blocks' per-channel affine steps into their 1x1 convolutions, for deployment.

Every channel LayerNorm ends in `y * weight + bias` and every ReducedAttn / FFW mixer in
`project(..) * scale`: full-map multiplies and adds that a delegate runs as separate ops (84
in `tiny`'s graphs: 36 norms, 12 scales; the routers' norms run on five frames' maps at once).
Each one sits next to a 1x1 convolution, so it folds into that convolution's weights exactly,
as batch norm folds into a conv:
  conv(y * g + b) = (W diag(g)) y + (W b + c)        the norm's affine, into every conv it feeds
  conv(x) * s     = (diag(s) W) x + s c              the layer scale, into the conv before it
What changes is float rounding only (tests/test_fold.py bounds it against the unfolded model on
every FGMA policy). The folded copy is for inference: its norms have no parameters left to
train, so training and checkpoints keep the unfolded form.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .blocks import ChannelAttnBlock, FeedForward, ReducedAttnBlock, ReducedAttention
from .layers import LayerNorm2d
from .router import FrameHistoryRouter


@torch.no_grad()
def _norm_into(norm: LayerNorm2d, convs: list[nn.Conv2d]) -> None:
    """Move `norm`'s affine into the 1x1 convs that read its output (all of them)."""
    g, b = norm.weight.detach(), norm.bias.detach()
    for conv in convs:
        if conv.kernel_size != (1, 1) or conv.groups != 1:
            raise ValueError(f"a norm folds into 1x1 dense convs only, not {conv}")
        w = conv.weight
        shift = w[:, :, 0, 0] @ b
        if conv.bias is None:
            conv.bias = nn.Parameter(shift.clone())
        else:
            conv.bias.add_(shift)
        w.mul_(g.view(1, -1, 1, 1))
    norm.weight = None
    norm.bias = None


@torch.no_grad()
def _scale_into(mixer: ReducedAttention | FeedForward) -> None:
    """Move a mixer's layer scale into its output projection."""
    s = mixer.scale.detach().reshape(-1)
    mixer.project.weight.mul_(s.view(-1, 1, 1, 1))
    if mixer.project.bias is not None:
        mixer.project.bias.mul_(s)
    mixer.scale = None


def fold_affine(model: nn.Module) -> nn.Module:
    """A copy of `model` (in eval mode) with every block's norm affine and layer scale folded
    into its convolutions; `model` is left as it is. Returns the copy."""
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, ReducedAttnBlock):
            _norm_into(module.norm1, [module.mixer.expand])
            _norm_into(module.norm2, [module.ffn.expand])
            _scale_into(module.mixer)
            _scale_into(module.ffn)
        elif isinstance(module, ChannelAttnBlock):
            attn = module.mixer
            _norm_into(module.norm1, [attn.to_q[0], attn.to_k[0], attn.to_v[0]])
            _norm_into(module.norm2, [module.ffn.value_in, module.ffn.gate_in])
        elif isinstance(module, FrameHistoryRouter):
            _norm_into(module.norm, [module.to_q[0], module.to_k[0], module.to_v[0]])
            _norm_into(module.norm_ffn, [module.ffn.value_in, module.ffn.gate_in])
    left = [name for name, m in folded.named_modules()
            if isinstance(m, LayerNorm2d) and m.weight is not None]
    if left:  # a norm this function does not know the readers of: a new block type
        raise ValueError(f"no folding rule for the norms {left}")
    # what was folded: every norm and every layer scale of the original
    folded.folded_steps = sum(isinstance(m, LayerNorm2d) for m in model.modules()) + \
        sum(isinstance(m, (ReducedAttention, FeedForward)) for m in model.modules())
    return folded
