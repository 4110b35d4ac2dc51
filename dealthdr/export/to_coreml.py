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
import tempfile
import time
from pathlib import Path

from dealthdr.export.coreml import (COMPUTE_UNITS, convert, coreml_runner, describe,
                                    save_multifunction, validate_package)

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    from dealthdr.export.artifacts import add_common_flags, main_wrapper

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
    args = p.parse_args(argv)

    def run() -> int:
        from tqdm import tqdm

        from dealthdr.export.buckets import group_by_s
        from dealthdr.export.coreml_stream import stream_packages

        from dealthdr.export.artifacts import (artifact_record, digest, prepare, staging_dir,
                                      write_manifest)
        from dealthdr.export.gate import pending_gate, run_gate

        if args.stream and args.deployment_target != "iOS18":
            raise ValueError("--stream needs --deployment-target iOS18: its functions share "
                             "one multifunction package")
        started = time.time()
        on_mac = platform.system() == "Darwin"
        with staging_dir(args.out, args.force) as stage, tempfile.TemporaryDirectory() as tmp:
            model, info, calibration, buckets, windows = prepare(args)
            parts = []
            for b in tqdm(buckets, desc="coreml"):
                mlmodel = convert(model, b, args.size, args.precision, args.deployment_target,
                                  args.compute_units)
                describe(mlmodel, info, b, args.precision, model.cfg.num_frames)
                folder = stage if args.deployment_target == "iOS17" else Path(tmp)
                path = folder / f"dealthdr_{info['variant']}_{b.name}.mlpackage"
                mlmodel.save(str(path))
                parts.append((b, path))
            single_bytes = {b.name: digest(path)[0] for b, path in parts}
            if args.deployment_target == "iOS18":
                merged = stage / f"dealthdr_{info['variant']}.mlpackage"
                save_multifunction([(b.name, path) for b, path in parts], merged)
                files = {b.name: (merged, b.name) for b, _ in parts}
            else:
                files = {b.name: (path, None) for b, path in parts}
            records, structures = [], {}
            for b, _ in parts:
                path, function = files[b.name]
                if path not in structures:  # the multifunction package is read once
                    names = [x.name for x, _ in parts] if function else ["main"]
                    structures[path] = validate_package(path, names, args.size,
                                                        model.cfg.num_frames, args.precision)
                structure = structures[path]
                if on_mac:
                    parity = run_gate(coreml_runner(path, function), model, b, windows,
                                      args.precision, f"coremltools predict ({platform.mac_ver()[0]})")
                else:
                    parity = pending_gate("Core ML prediction needs macOS; structure validated "
                                          "on Linux", args.precision)
                records.append(artifact_record(
                    path, stage, "coreml", args.precision, b, args.size, parity,
                    frames=model.cfg.num_frames, function=function or "main",
                    deployment_target=args.deployment_target, compute_units=args.compute_units,
                    structure=structure[function or "main"],
                    single_function_bytes=single_bytes[b.name]))
            if args.stream:
                records.extend(stream_packages(
                    stage, model, info, group_by_s(buckets), args.size, windows,
                    precision=args.precision,
                    target=args.deployment_target, units=args.compute_units))
            notes = [] if on_mac else ["numeric parity pending: Core ML prediction needs macOS; "
                                       "run this exporter on a Mac to gate"]
            write_manifest(stage, "export/to_coreml.py", args, info, calibration, records,
                           started, notes)
        total = {r["file"]: r["bytes"] for r in records}
        log.info("wrote %s (%s); one bucket alone: %d bytes", args.out,
                 ", ".join(f"{k}: {v} bytes" for k, v in total.items()),
                 max(single_bytes.values()))
        return 0
    return main_wrapper(run)


if __name__ == "__main__":
    sys.exit(main())
