"""Cost of the network per variant and s: MACs/FLOPs (everything counted) and CPU latency.

torch's FlopCounterMode counts convolutions and matmuls only. FGMA's cost also lives in ops it
counts as 0, so they are added here with stated conventions (FLOPs; a MAC is 2 FLOPs):
  grid_sample / bilinear upsample: 8 per output value (4 taps, weight and accumulate)
  softmax: 5 per element (max, subtract, exp, sum, divide)
  fused attention (torch's CPU kernel): its two matmuls, mask add and softmax, as above
  topk: n * ceil(log2 k) comparisons per row
  gather / index / index_put / scatter: 1 per value moved (address arithmetic)
  pointwise arithmetic and comparisons: 1 per output element (GELU 8: erf)
  reductions, pooling: 1 per input element
"""
from __future__ import annotations

import logging
import math
import statistics
import time
from collections import defaultdict

import torch
from torch.utils.flop_counter import FlopCounterMode

from .model import DeAltHDR, ForwardStats

log = logging.getLogger(__name__)
aten = torch.ops.aten


def _numel(shape) -> int:
    return math.prod(shape) if shape is not None else 0


def _out_numel(out_shape) -> int:
    if isinstance(out_shape, (tuple, list)) and out_shape and not isinstance(out_shape[0], int):
        return _numel(out_shape[0])
    return _numel(out_shape)


def _per_output(k: int):
    def formula(*args, out_shape=None, **kwargs) -> int:
        return k * _out_numel(out_shape)
    return formula


def _per_input(*args, out_shape=None, **kwargs) -> int:
    return _numel(args[0])


def _softmax(*args, out_shape=None, **kwargs) -> int:
    return 5 * _numel(args[0])


def _topk(x_shape, k, *args, out_shape=None, **kwargs) -> int:
    return _numel(x_shape) * max(1, math.ceil(math.log2(max(k, 2))))


def _index_put(x_shape, indices, values_shape, *args, out_shape=None, **kwargs) -> int:
    return _numel(values_shape)


def _fused_attention(q_shape, k_shape, v_shape, *args, attn_mask=None, out_shape=None,
                     **kwargs) -> int:
    """torch's CPU attention kernel, counted as what it fuses: q k^T and a v (2 per MAC), the
    mask add (1 per score) and the softmax (5 per score), the counts of the unfused form."""
    scores = _numel(q_shape[:-1]) * k_shape[-2]
    return scores * (2 * q_shape[-1] + 2 * v_shape[-1] + 5 + (attn_mask is not None))


_POINTWISE = ["add", "sub", "mul", "div", "relu", "rsqrt", "abs", "clamp", "clamp_min",
              "pow", "where", "gt", "lt", "ge", "le", "eq", "bitwise_and", "remainder",
              "floor_divide", "exp", "neg", "sqrt", "sigmoid"]

EXTRA_FLOP_FORMULAS = {
    aten.grid_sampler_2d: _per_output(8),
    aten.upsample_bilinear2d: _per_output(8),
    aten._softmax: _softmax,
    aten.topk: _topk,
    aten.gather: _per_output(1),
    aten.index: _per_output(1),
    aten.index_select: _per_output(1),
    aten._scaled_dot_product_flash_attention_for_cpu: _fused_attention,
    aten.index_put: _index_put,
    aten.index_put_: _index_put,
    aten._index_put_impl_: _index_put,
    aten.scatter: _per_output(1),
    aten.gelu: _per_output(8),
    aten.sum: _per_input,
    aten.mean: _per_input,
    aten.avg_pool2d: _per_input,
    **{getattr(aten, name): _per_output(1) for name in _POINTWISE},
}

# Module-name prefixes -> component rows of the Table G-style breakdown.
COMPONENTS = {
    "encoders": ("encoder_short", "encoder_long"),
    "flow (SpyNet)": ("spynet",),
    "FGMA": ("fgma",),
    "router": ("middle_router", "routers"),
    "middle": ("middle",),
    "decoder": ("decoder", "ups", "skips", "align_proj", "head"),
}


class _Probe(torch.nn.Module):
    """Calls the model through __call__ so FlopCounterMode's module tracker names its parts."""

    def __init__(self, model: DeAltHDR) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames, exposures, s, budget):
        return self.model.forward_with_stats(frames, exposures, s=s, budget=budget)


def count_flops(model: DeAltHDR, frames: torch.Tensor, exposures: torch.Tensor, s: float,
                budget: tuple[int, int, int] | None = None,
                ) -> tuple[int, dict[str, int], ForwardStats]:
    """Total FLOPs of one forward, FLOPs per component, and what the forward did."""
    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS)
    probe = _Probe(model)
    with torch.no_grad(), counter:
        _, stats = probe(frames, exposures, s, budget)
    per_module = counter.get_flop_counts()
    components: dict[str, int] = defaultdict(int)
    prefix = "_Probe.model."
    for name, ops in per_module.items():
        if not name.startswith(prefix):
            continue
        parts = name[len(prefix):].split(".")
        # Top-level components only, so nothing is counted twice: a direct child of the model,
        # or an item of a ModuleList child (the list itself is never called).
        if len(parts) == 2 and prefix + parts[0] in per_module or len(parts) > 2:
            continue
        for comp, children in COMPONENTS.items():
            if parts[0] in children:
                components[comp] += sum(ops.values())
    total = counter.get_total_flops()
    components["other (input, padding)"] = total - sum(components.values())
    return total, dict(components), stats


def measure_latency(model: DeAltHDR, frames: torch.Tensor, exposures: torch.Tensor, s: float,
                    repeats: int = 5, warmup: int = 1,
                    budget: tuple[int, int, int] | None = None) -> dict[str, float]:
    """Median / min / max wall time in ms of `repeats` forwards after `warmup` discarded runs."""
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            start = time.perf_counter()
            model(frames, exposures, s=s, budget=budget)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return {"latency_ms": statistics.median(times), "latency_ms_min": min(times),
            "latency_ms_max": max(times)}


def profile_model(model: DeAltHDR, frames: torch.Tensor, exposures: torch.Tensor,
                  s_values: list[float], repeats: int = 5, warmup: int = 1,
                  latency: bool = True) -> list[dict]:
    """One record per s: {variant, size, s, attention_ratio, tile_ratio, gmacs, gflops, params,
    latency_ms}. The attention ratio R is the share of positions in M; FGMA computes attention
    in whole tiles, so its cost follows the tile ratio (tiles holding a masked position)."""
    params = sum(p.numel() for p in model.parameters())
    size = f"{frames.shape[-2]}x{frames.shape[-1]}"
    records = []
    for s in s_values:
        flops, components, stats = count_flops(model, frames, exposures, s)
        rec = {"variant": model.cfg.name, "size": size, "s": s,
               "attention_ratio": round(stats.attention_ratio, 6),
               "tile_ratio": round(stats.tile_ratio, 6),
               "gmacs": round(flops / 2e9, 3), "gflops": round(flops / 1e9, 3),
               "params": params,
               "components_gmacs": {k: round(v / 2e9, 3) for k, v in components.items()},
               "attention_ratio_per_level": [round(a / p, 6) if p else 0.0 for a, p in
                                             zip(stats.attended, stats.positions)]}
        if latency:
            rec.update(measure_latency(model, frames, exposures, s, repeats, warmup))
            rec["threads"] = torch.get_num_threads()
        log.info("%s s=%s R=%.3f %.1f GMACs", rec["variant"], s, rec["attention_ratio"],
                 rec["gmacs"])
        records.append(rec)
    return records


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least-squares y = a + b x; returns (a, b, max |residual| / mean y)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    a = my - b * mx
    worst = max(abs(y - (a + b * x)) for x, y in zip(xs, ys))
    return a, b, worst / my
