"""Export fixed-shape s-bucket graphs to ONNX (opset 18), simplified and checked, parity-gated.

One .onnx per (s, centre exposure): inputs `frames` (1, T, 3, H, W) gamma LDR in [0, 1] and
`exposures` (1, T), T the model's window (`num_frames`, 5); output `hdr` (1, 3, H, W) linear
HDR in the short exposure's units. Each file
is simplified with onnxslim, validated with onnx.checker, run in onnxruntime on held-out windows
and kept only if it matches the torch model (>= 45 dB PSNR-mu). A manifest.json records shapes,
buckets, bytes, sha256 and parity.

    python export/to_onnx.py --s-buckets 0,1,15,100
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from dealthdr.export.artifacts import (add_common_flags, artifact_record, main_wrapper, prepare,
                                       staging_dir, write_manifest)
from dealthdr.export.buckets import example_inputs, export_program
from dealthdr.export.config import OnnxConfig, parse_config
from dealthdr.export.gate import run_gate

log = logging.getLogger(__name__)
OPSET = 18


def export_onnx(model, bucket, size, path: Path) -> None:
    """torch.export -> ONNX (dynamo exporter) -> onnxslim -> onnx.checker, written to `path`."""
    import onnx
    import onnxslim
    import torch

    program = export_program(model, bucket, size)
    raw = path.with_suffix(".raw.onnx")
    torch.onnx.export(program, example_inputs(bucket, size, model.cfg.num_frames), str(raw),
                      dynamo=True,
                      opset_version=OPSET, input_names=["frames", "exposures"],
                      output_names=["hdr"], external_data=False, verbose=False)
    slim = onnxslim.slim(onnx.load(str(raw)))
    raw.unlink()
    slim.doc_string = (f"DeAltHDR {model.cfg.name}, s={bucket.s_key}, centre={bucket.centre}, "
                       f"K={list(bucket.budget)}")
    onnx.checker.check_model(slim, full_check=True)
    onnx.save(slim, str(path))


def onnx_runner(path: Path):
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(frames, exposures):
        return session.run(["hdr"], {"frames": frames.numpy().astype(np.float32),
                                     "exposures": exposures.numpy().astype(np.float32)})[0]
    return run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p, "exports/onnx")
    return p


def export_onnx_models(cfg: OnnxConfig) -> int:
    """Export, gate and record every bucket of `cfg` as ONNX into `cfg.out`; 0 on success."""
    from tqdm import tqdm

    started = time.time()
    with staging_dir(cfg.out, cfg.force) as stage:
        model, info, calibration, buckets, windows = prepare(cfg)
        records = []
        for bucket in tqdm(buckets, desc="onnx"):
            path = stage / f"dealthdr_{info['variant']}_{bucket.name}.onnx"
            export_onnx(model, bucket, cfg.size, path)
            parity = run_gate(onnx_runner(path), model, bucket, windows, "fp32",
                              "onnxruntime CPUExecutionProvider")
            records.append(artifact_record(path, stage, "onnx", "fp32", bucket, cfg.size,
                                           parity, frames=model.cfg.num_frames, opset=OPSET))
        write_manifest(stage, "export/to_onnx.py", cfg, info, calibration, records, started)
    log.info("wrote %d ONNX models to %s", len(records), cfg.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(build_parser(), OnnxConfig, argv)
    return main_wrapper(lambda: export_onnx_models(cfg))


if __name__ == "__main__":
    sys.exit(main())
