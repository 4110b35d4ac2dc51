"""int8 artifacts from converted pt2e graphs, through the lowering code of `export/`.

XNNPACK: one .pte per s with a method per centre exposure, gated in the ExecuTorch runtime
against the converted torch graph (the same int8 function), timed against an fp32 .pte of
the same bucket and the eager fp32 model on the same input. Core ML: W8A8 mlpackage(s),
structure-validated here.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from dealthdr.export.artifacts import artifact_record
from dealthdr.export.buckets import BucketGraph, example_inputs, export_program, group_by_s
from dealthdr.export.coverage import pte_bytes
from dealthdr.export.coreml import convert_program, describe, package
from dealthdr.export.gate import pending_gate, run_gate
from dealthdr.export.to_executorch import lower, planned_bytes, pte_runner
from dealthdr.quantize.config import QuantizeConfig, QuantizeContext
from dealthdr.quantize.measure import agreement, latency_ms
from dealthdr.quantize.sensitivity import block_sensitivity
from dealthdr.sysinfo import machine_record

log = logging.getLogger(__name__)


def _program(gm, bucket, size, frames: int):
    return torch.export.export(gm, example_inputs(bucket, size, frames), strict=False)


def sensitivity(ctx: QuantizeContext, cfg: QuantizeConfig) -> dict:
    """Per-block sweep at the first bucket with attention (or the first bucket)."""
    buckets = ctx.buckets
    b = next((x for x in buckets if x.s > 0 and x.s != float("inf")), buckets[0])
    ref = BucketGraph(ctx.model, b).eval()
    groups = block_sensitivity(ctx.programs[b.name], ref, "xnnpack", ctx.train_windows,
                               ctx.windows, b.centre)
    return {"bucket": b.name, "backend_quantizer": "xnnpack", "observer": "minmax",
            "groups": groups}


def _xnnpack(converted: dict, ctx: QuantizeContext, cfg: QuantizeConfig, stage: Path,
             info: dict):
    records, by_s = [], group_by_s(ctx.buckets)
    latency, frames = None, ctx.model.cfg.num_frames
    for s_key, group in by_s.items():
        methods = {f"forward_{b.centre}": b for b in group}
        programs = {m: _program(converted[b.name], b, cfg.size, frames)
                    for m, b in methods.items()}
        prog, cov = lower(programs, "xnnpack")
        path = stage / f"dealthdr_{info['variant']}_s{group[0].name.split('_')[0][1:]}" \
                       "_xnnpack_int8.pte"
        path.write_bytes(prog.buffer)
        arena, split = planned_bytes(prog), pte_bytes(prog.buffer)
        for method, b in methods.items():
            run = pte_runner(path, method)
            parity = run_gate(run, ctx.model, b, ctx.windows, "int8",
                              "executorch runtime (XNNPACK int8 + portable kernels)",
                              reference=converted[b.name])
            parity["vs_fp32"] = agreement(run, BucketGraph(ctx.model, b).eval(),
                                          ctx.windows, b.centre)
            records.append(artifact_record(
                path, stage, "executorch-xnnpack", "int8", b, cfg.size, parity,
                frames=frames, method=method, delegation=cov[method],
                planned_activation_bytes=arena[method], bytes_split=split,
                quantization="pt2e QAT, XNNPACKQuantizer symmetric per-channel"))
        if latency is None and group[0].s > 0 and not cfg.no_latency:
            latency = _latency(group[0], path, ctx, cfg, lower, export_program, pte_runner,
                               example_inputs, latency_ms)
    return records, {"latency": latency}


def _latency(b, int8_path, ctx, cfg: QuantizeConfig, lower, export_program, pte_runner,
             example_inputs, latency_ms) -> dict:
    """fp32 eager, fp32 .pte and int8 .pte of one bucket on the same input, this host."""
    method = f"forward_{b.centre}"
    inputs = example_inputs(b, cfg.size, ctx.model.cfg.num_frames)
    with tempfile.TemporaryDirectory() as tmp:
        fp32_prog, _ = lower({method: export_program(ctx.model, b, cfg.size)}, "xnnpack")
        fp32_path = Path(tmp) / "fp32.pte"
        fp32_path.write_bytes(fp32_prog.buffer)
        graph = BucketGraph(ctx.model, b).eval()
        with torch.no_grad():
            eager = latency_ms(graph, inputs)
        fp32 = latency_ms(pte_runner(fp32_path, method), inputs)
        fp32_bytes = fp32_path.stat().st_size
    int8 = latency_ms(pte_runner(int8_path, method), inputs)
    out = {"bucket": b.name, "size": list(cfg.size), "threads": torch.get_num_threads(),
           "eager_fp32": eager, "xnnpack_fp32": fp32, "xnnpack_int8": int8,
           "int8_vs_fp32_pte_speedup": fp32["median_ms"] / int8["median_ms"],
           "int8_vs_eager_speedup": eager["median_ms"] / int8["median_ms"],
           "bytes": {"xnnpack_fp32_pte": fp32_bytes, "xnnpack_int8_pte": int8_path.stat().st_size},
           "machine": machine_record()}
    log.info("latency %s: eager fp32 %.0f ms, .pte fp32 %.0f ms, .pte int8 %.0f ms", b.name,
             eager["median_ms"], fp32["median_ms"], int8["median_ms"])
    return out


def _coreml(converted: dict, ctx: QuantizeContext, cfg: QuantizeConfig, stage: Path,
            info: dict):
    frames = ctx.model.cfg.num_frames

    def models():
        for b in ctx.buckets:
            ml = convert_program(_program(converted[b.name], b, cfg.size, frames), cfg.size,
                                 frames, "fp16", cfg.deployment_target, "all",
                                 cfg.readable_names)
            describe(ml, info, b, "int8", frames)
            yield b, ml
    packaged = package(models(), stage, f"dealthdr_{info['variant']}_int8",
                       cfg.deployment_target, cfg.size, frames, "fp16")
    records = [artifact_record(
        p.path, stage, "coreml", "int8", p.bucket, cfg.size,
        pending_gate("Core ML prediction needs macOS; structure validated on Linux", "int8"),
        frames=frames, function=p.function or "main", deployment_target=cfg.deployment_target,
        structure=p.structure, single_function_bytes=p.single_bytes,
        quantization="pt2e QAT, CoreMLQuantizer W8A8") for p in packaged]
    return records, {"bytes": {r["file"]: r["bytes"] for r in records}}


def write_artifacts(backend: str, converted: dict, ctx: QuantizeContext, cfg: QuantizeConfig,
                    stage: Path, info: dict):
    if backend == "xnnpack":
        return _xnnpack(converted, ctx, cfg, stage, info)
    return _coreml(converted, ctx, cfg, stage, info)
