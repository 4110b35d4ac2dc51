"""The ONNX leg: NNCF post-training quantization of the exported ONNX model, run in onnxruntime.

Each bucket is exported by `export/to_onnx.py`'s code, quantized by `nncf.quantize` into a QDQ
model (int8 Conv and MatMul inputs and weights), checked with onnx.checker and scored in
onnxruntime beside the fp32 model. Element-wise and sampling ops are left float (NNCF ignored
scope by type): the merge, the linear-HDR input/output arithmetic and the warp coordinates are
Add/Mul/Div/GridSample nodes, and in ONNX they carry no module path to select them by. There is
no QAT column: NNCF's QAT needs its torch route, whose quantizer layers torch.export and
onnxruntime cannot take; the QAT-trained pt2e graphs go to
XNNPACK and Core ML instead.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from dealthdr.export.artifacts import artifact_record
from dealthdr.export.buckets import example_inputs
from dealthdr.export.gate import run_gate
from dealthdr.export.to_onnx import OPSET, export_onnx, onnx_runner
from dealthdr.metrics import psnr_mu
from dealthdr.quantize.config import QuantizeConfig, QuantizeContext
from dealthdr.quantize.measure import latency_ms, quality

log = logging.getLogger(__name__)

FLOAT_TYPES = ["Add", "Sub", "Mul", "Div", "GridSample", "Softmax", "Sqrt", "Reciprocal",
               "Pow", "Exp", "Log", "TopK", "ReduceSum", "ReduceMean", "Resize", "Tanh"]


def _feeds(windows: list, centre: str) -> list[dict]:
    return [{"frames": w.frames.numpy().astype(np.float32),
             "exposures": w.exposures.numpy().astype(np.float32)}
            for w in windows if w.centre == centre]


def psnr_validation(model, data) -> tuple[float, list[float]]:
    """NNCF validation function: mean PSNR-mu (peak 1, as the report scores) of an ONNX model
    on (feed, ground truth) items, and the per-item values NNCF ranks by."""
    import onnxruntime as ort
    import torch

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    scores = [psnr_mu(torch.from_numpy(session.run(["hdr"], feed)[0]), hdr, peak=1.0)
              for feed, hdr in data]
    return float(np.mean(scores)), scores


def quantize_onnx(src: Path, dst: Path, calibration: list, centre: str,
                  max_drop_db: float | None = None) -> None:
    """QDQ int8 of `src`. With `max_drop_db`, NNCF's accuracy control reverts the quantizers
    that cost most until PSNR-mu on the calibration windows (never the held-out ones the
    report scores) is within that many dB of fp32."""
    import nncf
    import onnx

    nncf.set_log_level(logging.WARNING)  # one INFO line per node otherwise
    feeds = _feeds(calibration, centre)
    if not feeds:
        raise ValueError(f"no calibration windows with a {centre}-exposure centre")
    scope = nncf.IgnoredScope(types=FLOAT_TYPES, validate=False)
    model = onnx.load(str(src))
    if max_drop_db is None:
        quantized = nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds),
                                  ignored_scope=scope)
    else:
        truth = [w.hdr for w in calibration if w.centre == centre]
        quantized = nncf.quantize_with_accuracy_control(
            model, nncf.Dataset(feeds), nncf.Dataset(list(zip(feeds, truth))),
            psnr_validation, max_drop=max_drop_db, drop_type=nncf.DropType.ABSOLUTE,
            subset_size=len(feeds), ignored_scope=scope)
    onnx.checker.check_model(quantized)
    onnx.save(quantized, str(dst))


def run_onnx(ctx: QuantizeContext, cfg: QuantizeConfig, stage: Path, info: dict):
    """fp32 and NNCF int8 ONNX per bucket; returns (report section, artifact records)."""
    import onnx

    drop = cfg.onnx_max_drop
    quantizer = "nncf.quantize (QDQ)" if drop is None else \
        f"nncf.quantize_with_accuracy_control (QDQ, max drop {drop} dB PSNR-mu)"
    section, records, latency = {"buckets": {}, "quantizer": quantizer}, [], None
    with tempfile.TemporaryDirectory() as tmp:
        for b in ctx.buckets:
            fp32_path = Path(tmp) / f"{b.name}.onnx"
            export_onnx(ctx.model, b, cfg.size, fp32_path)
            path = stage / f"dealthdr_{info['variant']}_{b.name}_int8.onnx"
            quantize_onnx(fp32_path, path, ctx.train_windows, b.centre, drop)
            fp32_run, int8_run = onnx_runner(fp32_path), onnx_runner(path)
            fp32 = quality(fp32_run, ctx.windows, b.centre)["psnr_mu"]
            ptq = quality(int8_run, ctx.windows, b.centre)["psnr_mu"]
            section["buckets"][b.name] = {"s": b.s_key, "centre": b.centre, "fp32": fp32,
                                          "ptq": ptq, "qat": None, "ptq_gap_db": ptq - fp32,
                                          "qat_gap_db": None}
            parity = run_gate(int8_run, ctx.model, b, ctx.windows, "int8",
                              "onnxruntime CPUExecutionProvider (QDQ)")
            ops = [n.op_type for n in onnx.load(str(path)).graph.node]
            records.append(artifact_record(
                path, stage, "onnx", "int8", b, cfg.size, parity,
                frames=ctx.model.cfg.num_frames, opset=OPSET,
                quantization=quantizer,
                qdq_pairs=ops.count("QuantizeLinear"),
                fp32_bytes=fp32_path.stat().st_size))
            if latency is None and b.s > 0 and not cfg.no_latency:
                inputs = example_inputs(b, cfg.size, ctx.model.cfg.num_frames)
                latency = {"bucket": b.name, "fp32": latency_ms(fp32_run, inputs),
                           "int8": latency_ms(int8_run, inputs)}
            log.info("onnx %s: fp32 %.2f, NNCF int8 %.2f dB PSNR-mu", b.name, fp32, ptq)
    section["latency"] = latency
    return section, records
