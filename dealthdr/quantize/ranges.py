"""Activation and weight ranges of prepared pt2e graphs: calibrated, synced, widened, shared.

QAT starts every activation fake quantizer from the min/max of its graph's calibration
windows and keeps it (`calibrate_ranges`); weight ranges are set from the weights themselves
when they freeze (`sync_weight_ranges`), so tied weights convert to identical int8 bytes.

`share_ranges` goes one step further for the graphs that become one artifact (the two centre
exposures' methods of one `.pte`): where they hold the same op, its activation gets one range,
the union of theirs. Their int8 parameters (activation scales, the int32 biases derived from
them, requantization scales) are then equal, so every delegate call whose graph is the same in
both methods serialises to the same bytes, which ExecuTorch stores once, as it already does for
the fp32 programs. Measured on the default s = 15 program at 256x256 (PTQ ranges, both centres,
the default float groups): 3.79 MB with a range per centre, 3.40 MB shared; distinct delegate
payloads 51 -> 40 of 72, stored tensor entries 1117 -> 829.
"""
from __future__ import annotations

from collections import Counter, defaultdict

import torch
from torch import fx

from dealthdr.quantize.policy import module_path


def fake_quantizers(gm: fx.GraphModule) -> list:
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

    return [m for m in gm.modules() if isinstance(m, FakeQuantizeBase)]


def set_range(mod, lo: torch.Tensor, hi: torch.Tensor) -> None:
    """Set a fake quantizer's observed range and the scale and zero point derived from it."""
    obs = mod.activation_post_process
    obs.min_val.resize_(lo.shape).copy_(lo)
    obs.max_val.resize_(hi.shape).copy_(hi)
    scale, zero_point = obs.calculate_qparams()
    mod.scale.resize_(scale.shape).copy_(scale)
    mod.zero_point.resize_(zero_point.shape).copy_(zero_point)


def sync_weight_ranges(graphs: dict[str, fx.GraphModule]) -> int:
    """Set every weight fake quantizer to the per-channel min/max of its weight as it is now.

    The upstream weight observers are moving averages, updated only when their graph runs, so
    graphs that share (tied) weights froze different scales and converted them to different
    int8 bytes: the two methods of one .pte then store two weight sets (ExecuTorch deduplicates
    constant data by content hash). A range that is a function of the weight alone gives tied
    weights identical int8 tensors. Returns the number of quantizers set."""
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

    count = 0
    for gm in graphs.values():
        for node in gm.graph.nodes:
            if node.op != "call_module" or not node.args or \
                    getattr(node.args[0], "op", None) != "get_attr":
                continue
            mod = gm.get_submodule(node.target)
            if not isinstance(mod, FakeQuantizeBase) or not getattr(mod, "is_per_channel", False):
                continue
            weight = gm.get_parameter(node.args[0].target).detach()
            obs = mod.activation_post_process
            flat = weight.transpose(0, obs.ch_axis).reshape(weight.shape[obs.ch_axis], -1)
            set_range(mod, *torch.aminmax(flat, dim=1))
            count += 1
    return count


def calibrate_ranges(graphs: dict[str, fx.GraphModule], centres: dict[str, str],
                     windows: list) -> None:
    """Set every activation fake quantizer to the min/max over all calibration windows of
    its graph's centre, with fake quantization off (float activations, as PTQ calibrates).

    The upstream QAT observers are moving averages (constant 0.01) seeded by the first batch:
    with a few steps per graph their ranges stayed those of one window and clipped the
    brighter ones (128², s15: QAT at lr 0 was 0.1-0.5 dB below minmax PTQ). Calibrated this
    way, QAT starts from exactly the ranges of the PTQ baseline, so the report's QAT-vs-PTQ
    gap is what training buys."""
    for name, gm in graphs.items():
        fqs = fake_quantizers(gm)
        acts = [m for m in fqs if not getattr(m, "is_per_channel", False)]
        lo: dict[int, torch.Tensor] = {}
        hi: dict[int, torch.Tensor] = {}

        def hook(mod, inputs, lo=lo, hi=hi):
            a, b = torch.aminmax(inputs[0].detach().float())
            k = id(mod)
            lo[k] = a if k not in lo else torch.minimum(lo[k], a)
            hi[k] = b if k not in hi else torch.maximum(hi[k], b)

        for m in fqs:
            m.disable_fake_quant()
            m.disable_observer()
        handles = [m.register_forward_pre_hook(hook) for m in acts]
        try:
            with torch.no_grad():
                for w in windows:
                    if w.centre == centres[name]:
                        gm(w.frames, w.exposures)
        finally:
            for h in handles:
                h.remove()
        for m in acts:
            if id(m) not in lo:
                continue
            set_range(m, lo[id(m)].reshape(()), hi[id(m)].reshape(()))
        for m in fqs:
            m.enable_fake_quant()


def widen_empty_ranges(graphs: dict[str, fx.GraphModule]) -> int:
    """Give every activation quantizer whose range holds a single value (min = max = 0: an
    output that was zero on every calibration window, e.g. a ReLU dead for that content) the
    range [0, 1]. Its observer would give it the scale floor (its eps), and XNNPACK refuses
    such a program at load time (xnn_status_unsupported_parameter: the requantization scale of
    the op reading it falls below its limit). Zero is exact at any scale, so the output is
    unchanged; [0, 1] is an ordinary activation range should the unit fire on other content.
    Returns the number of quantizers widened."""
    count = 0
    for gm in graphs.values():
        for mod in fake_quantizers(gm):
            obs = mod.activation_post_process
            if getattr(mod, "is_per_channel", False) or obs.min_val.numel() != 1:
                continue
            lo, hi = obs.min_val.clamp(max=0), obs.max_val.clamp(min=0)
            if not torch.isfinite(lo) or not torch.isfinite(hi) or \
                    float(hi - lo) / (obs.quant_max - obs.quant_min) >= float(obs.eps):
                continue
            set_range(mod, lo, lo + 1.0)
            count += 1
    return count


def _observer(mod):
    """The observer holding a quantizer's range: a fake quantizer's (QAT) or the module
    itself (PTQ)."""
    return getattr(mod, "activation_post_process", mod)


def activation_quantizers(gm: fx.GraphModule) -> dict[tuple[str, str, int], torch.nn.Module]:
    """The graph's per-tensor activation quantizers (QAT fake quantizers or PTQ observers),
    keyed by what they observe: the observed op's module path and target and its occurrence
    among the ops of that path and target, in graph order. Two graphs exported from one model
    give the same key to the same op wherever their graphs agree (batch sizes may differ)."""
    out, seen = {}, Counter()
    for node in gm.graph.nodes:
        if node.op != "call_module" or not node.args:
            continue
        mod = gm.get_submodule(node.target)
        obs = _observer(mod)
        src = node.args[0]
        if getattr(src, "op", None) == "get_attr" or not hasattr(obs, "min_val") or \
                getattr(obs, "qscheme", None) in (torch.per_channel_symmetric,
                                                  torch.per_channel_affine):
            continue  # weights, and anything that is not a min/max quantizer
        what = (module_path(src), str(getattr(src, "target", src)))
        out[what + (seen[what],)] = mod
        seen[what] += 1
    return out


def share_ranges(graphs: dict[str, fx.GraphModule], groups: dict[str, str]) -> int:
    """Give the graphs of each group ({graph: group}, e.g. the s of the artifact they go into)
    one range per activation they hold in common (`activation_quantizers`' keys): the union of
    their calibrated ranges. Quantizers of other kinds than min/max (a histogram observer,
    whose range is its own search) or of different int8 settings are left as they are.
    Returns the number of shared ranges (one per key per group)."""
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver

    members: dict[str, list[str]] = defaultdict(list)
    for name in graphs:
        members[groups[name]].append(name)
    count = 0
    for names in members.values():
        if len(names) < 2:
            continue
        keyed = [activation_quantizers(graphs[n]) for n in names]
        for key in set(keyed[0]).intersection(*keyed[1:]):
            mods = [k[key] for k in keyed]
            obs = [_observer(m) for m in mods]
            if any(not isinstance(o, MinMaxObserver) or isinstance(o, HistogramObserver)
                   for o in obs):
                continue
            if len({(o.dtype, o.qscheme, o.quant_min, o.quant_max) for o in obs}) != 1:
                continue
            lo = torch.stack([o.min_val.reshape(()) for o in obs]).min()
            hi = torch.stack([o.max_val.reshape(()) for o in obs]).max()
            if not (torch.isfinite(lo) and torch.isfinite(hi)):
                continue  # never calibrated: left to `widen_empty_ranges` or the observer
            for mod, o in zip(mods, obs):
                if o is mod:  # a PTQ observer: convert derives the scale from its range
                    o.min_val.resize_(lo.shape).copy_(lo)
                    o.max_val.resize_(hi.shape).copy_(hi)
                else:
                    set_range(mod, lo.clone(), hi.clone())
            count += 1
    return count
