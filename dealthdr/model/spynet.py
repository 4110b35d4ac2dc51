"""SpyNet optical flow (Ranjan & Black), the BasicSR layout, and the warp FGMA builds on.

Flow convention everywhere in dealthdr: `flow` has channels (dx, dy) in pixels, and
`flow_warp(image, flow)` samples `image` at p + flow(p). So the flow that aligns a neighbour n
to the current frame t is O_{t->n} = SpyNet(ref=t, supp=n): warp(L_n, O_{t->n}) ~ L_t.
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..statedict import read_state_dict
from .inputs import is_tracing

log = logging.getLogger(__name__)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def flow_warp(x: torch.Tensor, flow: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Sample `x` (N, C, H, W) at p + flow(p); `flow` is (N, 2, H, W) in pixels (dx, dy).

    Pixel centres are normalised with 2 * v / (size - 1) - 1 and sampled with
    align_corners=True, the one pairing that has no half-pixel shift (the official release mixes
    the (W - 1) normalisation with align_corners=False). Under fp16/int8 export this op and its
    coordinates stay fp32: a half-pixel rounding at 1920 px width is visible.
    """
    n, _, h, w = x.shape
    sx, sy = 2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)
    if is_tracing():
        # Channel slices, not `flow[:, 0]`: a select is a portable kernel in ExecuTorch, which
        # splits the delegate call that makes the flow from the one that reads the grid.
        ys = torch.arange(h, dtype=flow.dtype, device=flow.device).view(1, 1, h, 1)
        xs = torch.arange(w, dtype=flow.dtype, device=flow.device).view(1, 1, 1, w)
        grid = torch.cat(((xs + flow[:, :1]) * sx - 1.0, (ys + flow[:, 1:]) * sy - 1.0), 1)
        grid = grid.permute(0, 2, 3, 1)
    else:
        # The same grid as one pass over the flow: base + flow * scale, the (H, W, 2) base of
        # normalised pixel centres broadcast over the batch. Six elementwise passes and a
        # stack took as long as sampling a 3-channel image (level 1 of `tiny` at 256x256, four
        # neighbours, one thread: 1.2-2.3 ms against 0.7 ms); exported graphs keep the form
        # above, which their rewrites and quantization policy were measured on.
        bx = torch.arange(w, dtype=flow.dtype, device=flow.device) * sx - 1.0
        by = torch.arange(h, dtype=flow.dtype, device=flow.device) * sy - 1.0
        base = torch.stack((bx.view(1, w).expand(h, w), by.view(h, 1).expand(h, w)), -1)
        scale = torch.tensor([sx, sy], dtype=flow.dtype, device=flow.device)
        grid = torch.addcmul(base, flow.permute(0, 2, 3, 1), scale)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode=padding_mode,
                         align_corners=True)


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a flow field to `size` (H, W), scaling the vectors by the same factors."""
    h, w = flow.shape[-2:]
    if (h, w) == tuple(size):
        return flow
    out = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
    scale = torch.tensor([size[1] / w, size[0] / h], dtype=flow.dtype, device=flow.device)
    return out * scale.view(1, 2, 1, 1)


def _level_module(width: float) -> nn.Sequential:
    c = [8] + [max(2, int(round(k * width))) for k in (32, 64, 32, 16)] + [2]
    layers: list[nn.Module] = []
    for i in range(5):
        layers.append(nn.Conv2d(c[i], c[i + 1], 7, padding=3))
        if i < 4:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class SpyNet(nn.Module):
    """Coarse-to-fine flow: at each pyramid level a small CNN predicts a residual flow from
    (reference, warped support, upsampled flow). `levels[0]` is the coarsest level, as in BasicSR.

    Args:
        levels: pyramid levels (6 in BasicSR; inputs must then be multiples of 32).
        width: channel multiplier; 1.0 is the BasicSR layout (1.44 M parameters).
    """

    def __init__(self, levels: int = 6, width: float = 1.0) -> None:
        super().__init__()
        self.num_levels = levels
        self.levels = nn.ModuleList([_level_module(width) for _ in range(levels)])
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)

    @property
    def multiple(self) -> int:
        return 2 ** (self.num_levels - 1)

    def forward(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        """Flow such that flow_warp(supp, flow) ~ ref. Inputs (N, 3, H, W) in [0, 1], H and W
        multiples of `self.multiple`; the batch holds every pair (one call per forward)."""
        h, w = ref.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise ValueError(f"SpyNet input {h}x{w} is not a multiple of {self.multiple}")
        refs = [(ref - self.mean) / self.std]
        supps = [(supp - self.mean) / self.std]
        for _ in range(self.num_levels - 1):
            refs.insert(0, F.avg_pool2d(refs[0], 2))
            supps.insert(0, F.avg_pool2d(supps[0], 2))
        flow = torch.zeros_like(refs[0][:, :2])
        for level, module in enumerate(self.levels):
            if level > 0:
                flow = F.interpolate(flow, scale_factor=2, mode="bilinear",
                                     align_corners=True) * 2.0
            warped = flow_warp(supps[level], flow, padding_mode="border")
            flow = flow + module(torch.cat((refs[level], warped, flow), dim=1))
        return flow

    def estimate(self, ref: torch.Tensor, supp: torch.Tensor, scale: int = 1) -> torch.Tensor:
        """Flow for inputs of any size, computed at 1/`scale` resolution and returned at that
        working resolution (caller resizes to where it is used with `resize_flow`)."""
        h, w = ref.shape[-2:]
        if scale > 1 and h % scale == 0 and w % scale == 0:
            ref, supp = F.avg_pool2d(ref, scale), F.avg_pool2d(supp, scale)
        elif scale > 1:
            size = (max(1, h // scale), max(1, w // scale))
            ref = F.interpolate(ref, size=size, mode="bilinear", align_corners=False)
            supp = F.interpolate(supp, size=size, mode="bilinear", align_corners=False)
        h, w = ref.shape[-2:]
        m = self.multiple
        work = (max(m, math.ceil(h / m) * m), max(m, math.ceil(w / m) * m))
        if work != (h, w):
            ref = F.interpolate(ref, size=work, mode="bilinear", align_corners=False)
            supp = F.interpolate(supp, size=work, mode="bilinear", align_corners=False)
        return self(ref, supp)


_BASICSR_PREFIXES = ("module.", "spynet.", "generator.spynet.")


def convert_basicsr_state_dict(state: dict[str, torch.Tensor]) -> OrderedDict:
    """Map BasicSR SpyNet keys (`basic_module.{i}.basic_module.{j}.weight`) to ours
    (`levels.{i}.{j}.weight`). Also accepts the `params` wrapper and BasicVSR-style prefixes."""
    if "params" in state and isinstance(state["params"], dict):
        state = state["params"]
    out = OrderedDict()
    for key, value in state.items():
        for prefix in _BASICSR_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key in ("mean", "std"):
            continue  # ImageNet constants; ours are non-persistent buffers
        parts = key.split(".")
        if len(parts) != 5 or parts[0] != "basic_module" or parts[2] != "basic_module":
            raise ValueError(f"not a BasicSR SpyNet key: {key!r}")
        out[f"levels.{parts[1]}.{parts[3]}.{parts[4]}"] = value
    return out


def load_basicsr_spynet(spynet: SpyNet, path: str | Path) -> None:
    """Load a BasicSR-format SpyNet state dict (e.g. spynet_sintel_final) from a local file.

    `.safetensors` or `.pth`; see `dealthdr.statedict.read_state_dict` (no pickled code runs).
    """
    state = read_state_dict(path, "SpyNet")
    converted = convert_basicsr_state_dict(state)
    own = spynet.state_dict()
    missing = sorted(set(own) - set(converted))
    if missing:
        raise ValueError(f"{path}: missing SpyNet weights {missing[:4]}...")
    for key, value in converted.items():
        if key not in own or own[key].shape != value.shape:
            raise ValueError(f"{path}: weight {key} {tuple(value.shape)} does not fit this SpyNet "
                             f"(width/levels differ from the BasicSR layout?)")
    spynet.load_state_dict(converted)
    log.info("loaded BasicSR SpyNet weights from %s", path)
