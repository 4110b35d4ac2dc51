"""Evaluation on clip folders (paper §5.2): full-reference metrics per frame, temporal metrics
per pair of consecutive frames, for the network at several s and for the non-learned baselines.

Every centre frame with a full window (the network's `num_frames`; 5: t = 2 .. F-3) is
evaluated. Per-frame metrics (PSNR-μ, SSIM-μ, PSNR-L, FovVideoVDP) are averaged over all
evaluated frames of all clips; temporal metrics (TWE, tOF) over all pairs (t, t+1) of
consecutive evaluated frames. Outputs are streamed: only the previous output frame is kept, so
clip length does not bound memory.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from . import metrics
from .baselines import BASELINES, GT_FLOW_BASELINES
from .data.clip import Clip, list_clips, read_clip
from .model import DeAltHDR, DeAltHDRConfig
from .model.network import PAD_MULTIPLE, flow_grid
from .sensitivity import s_text

log = logging.getLogger(__name__)

FORMAT = "dealthdr-eval/2"  # /2: s is text ("0", "15", "inf"), null for baselines
FRAME_METRICS = ("psnr_mu", "ssim_mu", "psnr_linear", "fvvdp")
PAIR_METRICS = ("twe", "tof")
# (window frames (T, 3, H, W) in [0, 1], exposures (T,)) -> linear HDR (3, H, W), short units;
# a method with `gt_flow` also takes the window's ground-truth flows (`window_gt_flows`)
Reconstruct = Callable[..., np.ndarray]
GT_FLOW_SUFFIX = " (GT flow)"
ZERO_FLOW_SUFFIX = " (no flow)"
# What the network's FGMA did, summed over its windows (`ForwardStats`' lists, summed over levels)
USAGE = ("attended", "positions", "tiles", "tiles_total")
CENTRES = ("short", "long")


@dataclass(frozen=True)
class Method:
    """One thing to evaluate: the network at one s, or a baseline (s None). `window`: the
    frames it needs (the network's `num_frames`); None for a baseline, which takes any odd
    window. `gt_flow`: `run` takes the window's ground-truth flows as a third argument.
    `variant`/`checkpoint`: which network (None for a baseline); rows of several checkpoints
    are kept apart by them. `usage`: the network's FGMA counts (`USAGE`), which `run` adds to
    (None for a baseline)."""
    name: str
    s: float | None
    run: Reconstruct
    window: int | None = None
    gt_flow: bool = False
    variant: str | None = None
    checkpoint: str | None = None
    usage: dict | None = field(default=None, compare=False)


def model_method(model: DeAltHDR, s: float, gt_flow: bool = False,
                 checkpoint: str | None = None, zero_flow: bool = False) -> Method:
    """The network at sensitivity s, dynamic mask policy, no gradients. `gt_flow`: an oracle
    that replaces SpyNet's flow (FGMA, its mask and the merge) with the clip's ground truth,
    to measure how much better alignment could buy the same weights. `zero_flow`: the same
    with zero flow, to measure how much the weights lean on their flow and how much of it
    attention recovers alone (s=inf; at finite s, D is zero and nothing is masked)."""
    if gt_flow and zero_flow:
        raise ValueError("gt_flow and zero_flow are two different oracles: choose one")
    model.eval()
    usage = dict.fromkeys(USAGE, 0)

    def run(frames: np.ndarray, exposures: np.ndarray,
            flows: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        if zero_flow:
            n, (h, w) = frames.shape[0] - 1, frames.shape[-2:]
            flows = (np.zeros((n, 2, h, w), np.float32),) * 2
        grid_flows = None if flows is None else tuple(
            _on_flow_grid(torch.from_numpy(f), model.cfg.flow_scale) for f in flows)
        with torch.no_grad():
            out, stats = model.forward_with_stats(torch.from_numpy(frames)[None],
                                                  torch.from_numpy(exposures)[None], s=s,
                                                  flows=grid_flows)
        for k in USAGE:
            usage[k] += sum(getattr(stats, k))
        return out[0].numpy()

    name = "dealthdr" + (GT_FLOW_SUFFIX if gt_flow else ZERO_FLOW_SUFFIX if zero_flow else "")
    return Method(name, s, run, model.cfg.num_frames, gt_flow, model.cfg.name, checkpoint,
                  usage)


def _on_flow_grid(flow: torch.Tensor, flow_scale: int) -> torch.Tensor:
    """Full-resolution flow (N, 2, H, W) in pixels -> the grid `forward(flows=)` takes: padded
    like the frames (edge values), area-averaged to 1/flow_scale, vectors scaled alike."""
    h, w = flow.shape[-2:]
    flow = F.pad(flow, (0, (-w) % PAD_MULTIPLE, 0, (-h) % PAD_MULTIPLE), mode="replicate")
    size = flow.shape[-2:]
    grid = flow_grid(tuple(size), flow_scale)
    out = F.interpolate(flow, size=grid, mode="area")
    scale = torch.tensor([grid[1] / size[1], grid[0] / size[0]], dtype=flow.dtype)
    return out * scale.view(1, 2, 1, 1)


def window_gt_flows(clip: Clip, t: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """The clip's ground-truth O_{t->n} and O_{n->t} for every neighbour n of centre t in time
    order, each (window - 1, 2, H, W) float32 pixels: what SpyNet estimates for the network."""
    name = clip.meta.get("path", "clip")
    if clip.flow is None:
        raise ValueError(f"{name}: no flow/ folder; the ground-truth flow oracle needs clips "
                         "made by `dealthdr synth`")
    fw, bw = [], []
    for k in range(-(window // 2), window // 2 + 1):
        if k == 0:
            continue
        i, back = _flow_index(clip, k), _flow_index(clip, -k)
        if i is None or back is None:
            raise ValueError(f"{name}: its flow/ holds offsets {list(clip.flow_offsets)}, the "
                             f"oracle needs +-{abs(k)} for a {window}-frame window")
        fw.append(clip.flow[t, i])
        bw.append(clip.flow[t + k, back])
    out = np.stack(fw).astype(np.float32), np.stack(bw).astype(np.float32)
    if not all(np.isfinite(f).all() for f in out):
        raise ValueError(f"{name}: ground-truth flow of frame {t}'s window is not finite")
    return out


def baseline_methods(names: Iterable[str], gt_flow: bool = False) -> list[Method]:
    """The named baselines; with `gt_flow`, each one that aligns (`GT_FLOW_BASELINES`) also
    as an oracle row with the clips' ground-truth flow, as the network's `--gt-flow` rows."""
    names = list(names)
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {sorted(BASELINES)}")
    rows = [Method(n, None, BASELINES[n]) for n in names]
    if gt_flow:
        rows += [Method(n + GT_FLOW_SUFFIX, None, GT_FLOW_BASELINES[n], gt_flow=True)
                 for n in names if n in GT_FLOW_BASELINES]
    return rows


SHORT_WHITE = 1.0  # saturation of the short exposure, in the ground truth's units


def _flow_index(clip: Clip, k: int) -> int | None:
    return clip.flow_offsets.index(k) if k in clip.flow_offsets else None


def window_of(methods: list[Method]) -> int:
    """The window every method is evaluated with: the networks' (one for all, so every method
    scores the same frames), or the default network's when only baselines run."""
    sizes = {m.window for m in methods if m.window is not None}
    if len(sizes) > 1:
        raise ValueError(f"networks with different windows ({sorted(sizes)} frames) cannot be "
                         "evaluated together; evaluate them separately")
    return sizes.pop() if sizes else DeAltHDRConfig.num_frames


def _centres(n_frames: int, window: int) -> range:
    half = window // 2
    return range(half, n_frames - half)


def evaluate_clip(clip: Clip, methods: list[Method], fvvdp: bool,
                  white: float | None = SHORT_WHITE) -> list[dict]:
    """Per-method sums and counts of every metric on one clip (see `summarise`).

    `white`: the HDR value mapped to 1 before tonemapping. Default 1.0, the short exposure's
    saturation in our ground-truth units: above it every input is clipped, so no method can know
    the radiance there, and a sun 1000x brighter than the scene would otherwise squash every
    other value towards 0 (HDRFlow divides by the GT max; `white=None` does that).
    """
    if clip.hdr is None:
        raise ValueError(f"{clip.meta.get('path', 'clip')}: no hdr/ ground truth; "
                         "evaluation needs it")
    window = window_of(methods)
    centres = _centres(len(clip), window)
    # Temporal metrics see one normalisation per clip (the GT's max over the evaluated
    # frames), so a per-frame rescaling cannot create or hide flicker.
    peak = float(clip.hdr[centres.start:centres.stop].max()) if white is None else white
    if peak <= 0:
        raise ValueError("ground truth is black over the evaluated frames")
    frames = np.ascontiguousarray(clip.ldr.transpose(0, 3, 1, 2), dtype=np.float32)
    exposures = clip.exposures.astype(np.float32)
    fw, bw = _flow_index(clip, 1), _flow_index(clip, -1)
    has_flow = clip.flow is not None and fw is not None
    hard = {t: _hard_region(clip, t, window) for t in centres}
    out = []
    for method in methods:
        acc = {k: 0.0 for k in FRAME_METRICS + PAIR_METRICS}
        counts = {k: 0 for k in acc}
        hard_sse, hard_n, hard_frames = 0.0, 0, 0
        prev = None
        # FGMA's counts on this clip, split by the centre frame's exposure: one s should select
        # alike for short- and long-centred windows (D is computed on the frame as captured)
        by_centre = None if method.usage is None else \
            {c: dict.fromkeys(USAGE, 0) for c in CENTRES}
        elapsed = 0.0  # reconstruction only, not the metrics
        for t in centres:
            args = (window_gt_flows(clip, t, window),) if method.gt_flow else ()
            before = None if by_centre is None else dict(method.usage)
            start = time.perf_counter()
            win = slice(t - window // 2, t + window // 2 + 1)
            pred = method.run(frames[win], exposures[win], *args).transpose(1, 2, 0)
            elapsed += time.perf_counter() - start
            if by_centre is not None:
                centre = by_centre[_centre_kind(exposures[win], window // 2)]
                for k in USAGE:
                    centre[k] += method.usage[k] - before[k]
            gt = clip.hdr[t]
            frame_peak = None if white is None else white
            values = {"psnr_mu": metrics.psnr_mu(pred, gt, frame_peak),
                      "ssim_mu": metrics.ssim_mu(pred, gt, frame_peak),
                      "psnr_linear": metrics.psnr_linear(pred, gt, frame_peak),
                      "fvvdp": metrics.fvvdp_jod(pred, gt, frame_peak) if fvvdp else None}
            if prev is not None:
                if has_flow:
                    values["twe"] = metrics.twe_pair(
                        prev, pred, clip.flow[t - 1, fw],
                        None if bw is None else clip.flow[t, bw], peak)
                values["tof"] = metrics.tof_pair(prev, pred, clip.hdr[t - 1], gt, peak)
            for k, v in values.items():
                if v is not None:
                    acc[k] += v
                    counts[k] += 1
            if hard[t] is not None:
                sse, n = metrics.mu_squared_error(pred, gt, hard[t], frame_peak)
                hard_sse, hard_n, hard_frames = hard_sse + sse, hard_n + n, hard_frames + 1
            prev = pred
        out.append({"method": method.name, "variant": method.variant,
                    "checkpoint": method.checkpoint, "s": method.s, "sums": acc, "counts": counts,
                    "frames": len(centres), "pairs": max(len(centres) - 1, 0),
                    "seconds": elapsed,
                    "usage": by_centre,
                    "hard": {"sse": hard_sse, "values": hard_n, "frames": hard_frames,
                             "pixels": hard_frames * gt.shape[0] * gt.shape[1]}})
    return out


def _hard_region(clip: Clip, t: int, window: int) -> np.ndarray | None:
    """`metrics.hard_region` of centre t from the clip's ground-truth flow to every neighbour
    of its window; None without flow (clips not made by `synth`)."""
    if clip.flow is None:
        return None
    flows = {}
    for k in range(-(window // 2), window // 2 + 1):
        i, back = _flow_index(clip, k), _flow_index(clip, -k)
        if k != 0 and i is not None:
            flows[k] = (clip.flow[t, i], None if back is None else clip.flow[t + k, back])
    return metrics.hard_region(flows) if flows else None


def _hard_metrics(parts: list[dict]) -> dict:
    """PSNR-μ pooled over the hard regions of all frames (one MSE over every hard value, so a
    frame with a few hard pixels weighs by its pixels) and the regions' share of the frames."""
    sse = sum(p["sse"] for p in parts)
    n = sum(p["values"] for p in parts)
    pixels = sum(p["pixels"] for p in parts)
    psnr = None if n == 0 else (math.inf if sse == 0 else 10 * math.log10(n / sse))
    return {"psnr_mu_hard": psnr, "hard_share": None if pixels == 0 else n / 3 / pixels}


def _centre_kind(exposures: np.ndarray, centre: int) -> str:
    """'short' where the window's centre frame has its shortest exposure, else 'long'."""
    return "short" if exposures[centre] <= exposures.min() else "long"


def _ratio(part: int, whole: int) -> float | None:
    return None if whole == 0 else part / whole


def _attention(records: list[dict]) -> dict:
    """The share of positions FGMA attended (the attention ratio) and of tiles it ran in, over
    every window of the records, and the ratio over short- and over long-centred windows alone
    (None where there were none); all None for a baseline."""
    keys = ("attention_ratio", "tile_ratio", *(f"attention_ratio_{c}" for c in CENTRES))
    if any(r["usage"] is None for r in records):
        return dict.fromkeys(keys)
    total = {k: sum(r["usage"][c][k] for r in records for c in CENTRES) for k in USAGE}
    out = {"attention_ratio": total["attended"] / max(total["positions"], 1),
           "tile_ratio": total["tiles"] / max(total["tiles_total"], 1)}
    for c in CENTRES:
        parts = [r["usage"][c] for r in records]
        out[f"attention_ratio_{c}"] = _ratio(sum(p["attended"] for p in parts),
                                             sum(p["positions"] for p in parts))
    return out


def _mean(total: float, count: int) -> float | None:
    if count == 0:
        return None
    return total / count if math.isfinite(total) else total


def _key(r: dict) -> tuple:
    return r["method"], r["variant"], r["checkpoint"], r["s"]


def summarise(per_clip: list[dict]) -> list[dict]:
    """Average per-clip sums into one record per method (frame- and pair-weighted)."""
    records = []
    keys = list(dict.fromkeys(_key(r) for r in per_clip))
    for key in keys:
        rs = [r for r in per_clip if _key(r) == key]
        rec = dict(zip(("method", "variant", "checkpoint", "s"), key))
        for k in FRAME_METRICS + PAIR_METRICS:
            rec[k] = _mean(sum(r["sums"][k] for r in rs), sum(r["counts"][k] for r in rs))
        frames = sum(r["frames"] for r in rs)
        rec.update(_hard_metrics([r["hard"] for r in rs]))
        rec.update(_attention(rs))
        rec.update(frames=frames, pairs=sum(r["pairs"] for r in rs), clips=len(rs),
                   ms_per_frame=1000 * sum(r["seconds"] for r in rs) / max(frames, 1))
        records.append(rec)
    return records


def _clip_record(clip_name: str, r: dict) -> dict:
    rec = {"clip": clip_name, "method": r["method"], "variant": r["variant"],
           "checkpoint": r["checkpoint"], "s": r["s"]}
    for k in FRAME_METRICS + PAIR_METRICS:
        rec[k] = _mean(r["sums"][k], r["counts"][k])
    rec.update(_hard_metrics([r["hard"]]))
    rec.update(_attention([r]))
    rec.update(frames=r["frames"], pairs=r["pairs"])
    return rec


def evaluate(data: str | Path, methods: list[Method], fvvdp: bool = True,
             max_clips: int | None = None, progress: bool = True,
             white: float | None = SHORT_WHITE) -> dict:
    """Evaluate `methods` on every clip under `data`; returns the JSON-ready result.
    `white`: see `evaluate_clip` (None: normalise by the GT max, HDRFlow's convention)."""
    from tqdm import tqdm

    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"data directory not found: {data}")
    if not methods:
        raise ValueError("nothing to evaluate: give a checkpoint or at least one baseline")
    paths = list_clips(data)[:max_clips]
    fvvdp_note = None
    if fvvdp:
        fvvdp_note = metrics.fvvdp_unavailable()
        if fvvdp_note:
            log.warning("FovVideoVDP is skipped: %s", fvvdp_note)
    else:
        fvvdp_note = "disabled (--no-fvvdp)"
    run_fvvdp = fvvdp_note is None

    window = window_of(methods)
    per_clip, skipped = [], []
    for path in tqdm(paths, desc="clips", unit="clip", disable=not progress):
        clip = read_clip(path)
        clip.meta["path"] = str(path)
        if len(clip) < window:
            log.warning("%s: %d frames, fewer than a %d-frame window: skipped", path,
                        len(clip), window)
            skipped.append(str(path))
            continue
        if clip.flow is None:
            if any(m.gt_flow for m in methods):
                raise ValueError(f"{path}: no flow/ folder; the ground-truth flow oracle "
                                 "needs clips made by `dealthdr synth`")
            log.warning("%s: no flow/ folder: TWE is not computed for it", path)
        for r in evaluate_clip(clip, methods, run_fvvdp, white):
            r["clip"] = path.name
            per_clip.append(r)
    if not per_clip:
        raise ValueError(f"no clip under {data} has the {window} frames a window needs")

    records = [{**r, "s": _s(r["s"])} for r in summarise(per_clip)]
    if fvvdp_note:
        for rec in records:
            rec["fvvdp_note"] = fvvdp_note
    return {
        "format": FORMAT,
        "data": str(data),
        "clips": [p.name for p in paths if str(p) not in skipped],
        "skipped": skipped,
        "fvvdp": {"display": metrics.FVVDP_DISPLAY, "peak_cd_m2": metrics.fvvdp_peak()
                  if run_fvvdp else None, "unit": "JOD (10 = no visible difference)",
                  "note": fvvdp_note},
        "conventions": CONVENTIONS,
        "normalisation": "gt-max" if white is None else f"short-white ({white:g} -> 1)",
        "records": records,
        "per_clip": [{**_clip_record(r["clip"], r), "s": _s(r["s"])} for r in per_clip],
    }


CONVENTIONS = (
    "Prediction and GT divided by the normalisation value (default 1.0, the short exposure's "
    "saturation in GT units; --normalise gt-max: the GT max, HDRFlow) and clipped to [0, 1]. "
    "psnr_mu/ssim_mu: "
    f"mu-law (mu={metrics.MU:g}) domain; psnr_linear: linear. fvvdp: FovVideoVDP (stand-in for "
    f"HDR-VDP-2), display '{metrics.FVVDP_DISPLAY}', 1 mapped to the display peak, per "
    "frame. twe: mean |T(out_t) - warp(T(out_t+1), GT flow O_t->t+1)| over non-occluded "
    "pixels (forward-backward check), mu-law units in [0, 1], same normalisation. "
    "tof: mean |Farneback(out_t, out_t+1) - Farneback(gt_t, gt_t+1)| in pixels on 8-bit grey "
    "mu-law frames. Per-frame metrics averaged over frames, temporal ones over pairs. "
    "psnr_mu_hard: PSNR-mu over the hard region, positions where the GT flow to any neighbour "
    "of the window fails the forward-backward check, leaves the frame or moves more than "
    f"{metrics.HARD_MOTION_PX:g} px, pooled over all frames (one MSE); hard_share: the "
    "region's share of the evaluated pixels. attention_ratio: the share of positions FGMA "
    "attended (M, summed over decoder levels and neighbours); tile_ratio: the share of its "
    "tiles that held one (what attention costs); attention_ratio_short / _long: the ratio over "
    "the short- and the long-centred windows alone; null for baselines.")


def _s(s: float | None) -> str | None:
    """A record's s in the project's text form; None for a baseline, which has none."""
    return None if s is None else s_text(s)
