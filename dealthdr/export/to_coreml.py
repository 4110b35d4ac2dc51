"""Export fixed-shape s-bucket graphs to Core ML (mlprogram), parity-gated where Core ML runs.

For each s and centre exposure: torch.export at a fixed shape -> coremltools `mlprogram`. With
`--deployment-target iOS18` (default) every graph becomes one function of a single multifunction
.mlpackage (weights shared and de-duplicated; a phone switches cost level by function name, e.g.
`s15_short`); with iOS17, one .mlpackage per graph. Under fp16 the warp (`resample`) and the
arithmetic of its sampling coordinates stay fp32: fp16 coordinates are off by ~0.5 px at 1920 px.

Core ML predicts only on macOS. There, the parity gate runs each function against the torch
model. On Linux the exporter validates the package instead (functions, inputs/outputs, op
histogram, that `resample` stayed fp32, size) and records the numeric gate as pending; it never
reports a parity figure it did not measure.

`--stream` adds one multifunction package per s for a phone app's frame loop (encoders and flow
once per input frame, fusion once per output frame: `dealthdr/export/coreml_stream.py`).

    python export/to_coreml.py --s-buckets 0,1,15,100
    python export/to_coreml.py --s-buckets 0,15 --stream
"""
from __future__ import annotations

import argparse
import logging
import platform
import sys
import time

from dealthdr.export.artifacts import (add_common_flags, artifact_record, main_wrapper, prepare,
                                       staging_dir, write_manifest)
from dealthdr.export.buckets import group_by_s
from dealthdr.export.config import CoreMLConfig, parse_config
from dealthdr.export.coreml import COMPUTE_UNITS, convert, coreml_runner, describe, package
from dealthdr.export.coreml_stream import stream_packages
from dealthdr.export.gate import pending_gate, run_gate

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p, "exports/coreml")
    p.add_argument("--precision", choices=("fp16", "fp32"), default="fp16",
                   help="compute precision; the warp stays fp32 under fp16 (default fp16)")
    p.add_argument("--deployment-target", choices=("iOS17", "iOS18"), default="iOS18",
                   help="iOS18: one multifunction .mlpackage holding every bucket; iOS17: one "
                        ".mlpackage per bucket (default iOS18)")
    p.add_argument("--compute-units", choices=sorted(COMPUTE_UNITS), default="all",
                   help="Core ML compute units the model is configured for (default all)")
    p.add_argument("--stream", action="store_true",
                   help="also write <name>_stream.mlpackage per s: the streaming functions of "
                        "a phone's frame loop (encode_short, encode_long, flow: once per input "
                        "frame; fuse_<centre>: once per output frame) in one multifunction "
                        "package (iOS18), gated as a frame loop on macOS")
    p.add_argument("--readable-names", action="store_true",
                   help="keep the exporter's variable and op names (module paths) in the "
                        "program text, e.g. to read Xcode's performance report by layer; by "
                        "default they are shortened, which makes each function's text about "
                        "1.8x smaller at 256x256 (constants are deduplicated either way)")
    return p


def export_coreml(cfg: CoreMLConfig) -> int:
    """Convert, validate (gate on macOS) and record every bucket of `cfg` into `cfg.out`."""
    from tqdm import tqdm

    if cfg.stream and cfg.deployment_target != "iOS18":
        raise ValueError("--stream needs --deployment-target iOS18: its functions share "
                         "one multifunction package")
    started = time.time()
    on_mac = platform.system() == "Darwin"
    with staging_dir(cfg.out, cfg.force) as stage:
        model, info, calibration, buckets, windows = prepare(cfg)
        frames = model.cfg.num_frames

        def converted():
            for b in tqdm(buckets, desc="coreml"):
                mlmodel = convert(model, b, cfg.size, cfg.precision, cfg.deployment_target,
                                  cfg.compute_units, cfg.readable_names)
                describe(mlmodel, info, b, cfg.precision, frames)
                yield b, mlmodel
        packaged = package(converted(), stage, f"dealthdr_{info['variant']}",
                           cfg.deployment_target, cfg.size, frames, cfg.precision)
        records = []
        for p in packaged:
            if on_mac:
                parity = run_gate(coreml_runner(p.path, p.function), model, p.bucket, windows,
                                  cfg.precision, f"coremltools predict ({platform.mac_ver()[0]})")
            else:
                parity = pending_gate("Core ML prediction needs macOS; structure validated "
                                      "on Linux", cfg.precision)
            records.append(artifact_record(
                p.path, stage, "coreml", cfg.precision, p.bucket, cfg.size, parity,
                frames=frames, function=p.function or "main",
                deployment_target=cfg.deployment_target, compute_units=cfg.compute_units,
                structure=p.structure, single_function_bytes=p.single_bytes))
        if cfg.stream:
            records.extend(stream_packages(
                stage, model, info, group_by_s(buckets), cfg.size, windows,
                precision=cfg.precision,
                target=cfg.deployment_target, units=cfg.compute_units,
                readable_names=cfg.readable_names))
        notes = [] if on_mac else ["numeric parity pending: Core ML prediction needs macOS; "
                                   "run this exporter on a Mac to gate"]
        write_manifest(stage, "export/to_coreml.py", cfg, info, calibration, records,
                       started, notes)
    total = {r["file"]: r["bytes"] for r in records}
    log.info("wrote %s (%s); one bucket alone: %d bytes", cfg.out,
             ", ".join(f"{k}: {v} bytes" for k, v in total.items()),
             max(p.single_bytes for p in packaged))
    return 0


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(build_parser(), CoreMLConfig, argv)
    return main_wrapper(lambda: export_coreml(cfg))


if __name__ == "__main__":
    sys.exit(main())
