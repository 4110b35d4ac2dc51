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
once per input frame, fusion once per output frame: `export/coreml_stream.py`).

    python export/to_coreml.py --s-buckets 0,1,15,100
    python export/to_coreml.py --s-buckets 0,15 --stream
"""
from __future__ import annotations

import argparse
import logging
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("export.to_coreml")
COORDINATE_OPS = {"add", "sub", "mul", "real_div", "concat", "stack", "expand_dims", "reshape",
                  "transpose", "squeeze", "slice_by_index", "gather", "cast", "split"}
COMPUTE_UNITS = {"all": "ALL", "cpu": "CPU_ONLY", "cpu-gpu": "CPU_AND_GPU", "cpu-ne": "CPU_AND_NE"}


INDEX_INPUTS = {"resample": "coordinates", "gather": "indices", "gather_along_axis": "indices",
                 "scatter": "indices", "scatter_nd": "indices", "gather_nd": "indices"}


def _feeds_coordinates(op, depth: int = 6) -> bool:
    """Does this MIL op compute (part of) sampling coordinates or gather/scatter indices?
    Those stay fp32: fp16 coordinates shift the warp by ~0.5 px at 1920 px, and fp16 integers
    are exact only up to 2048, far below the flat positions of a 256x256 map."""
    for out in op.outputs:
        for child in out.child_ops:
            if child.inputs.get(INDEX_INPUTS.get(child.op_type, "")) is out:
                return True
            if depth and child.op_type in COORDINATE_OPS and _feeds_coordinates(child, depth - 1):
                return True
    return False


def keep_in_fp16(op) -> bool:
    """op_selector of FP16ComputePrecision: False keeps the op fp32."""
    return op.op_type != "resample" and not _feeds_coordinates(op)


def convert(model, bucket, size, precision: str, target: str, units: str):
    from export.buckets import export_program

    return convert_program(export_program(model, bucket, size), size, model.cfg.num_frames,
                           precision, target, units)


def convert_program(program, size, frames: int, precision: str, target: str, units: str):
    """An exported bucket program -> mlprogram. `program` may hold pt2e quantize/dequantize
    pairs (quantize/qat.py): coremltools turns them into int8 weights and activations, and
    `precision` is then that of the float ops left between them. `frames`: the window length
    the program was exported for (the model's `num_frames`)."""
    h, w = size
    return convert_named(program, {"frames": (1, frames, 3, h, w), "exposures": (1, frames)},
                         ["hdr"], precision, target, units)


def convert_named(program, inputs: dict, outputs: list[str], precision: str, target: str,
                  units: str):
    """An ExportedProgram -> mlprogram whose inputs ({name: shape}, in the program's order) and
    outputs carry these names; the warp and its coordinates stay fp32 under fp16."""
    import coremltools as ct
    import torch

    with torch.no_grad():
        return ct.convert(
            program.run_decompositions({}), convert_to="mlprogram",
            minimum_deployment_target=getattr(ct.target, target),
            compute_precision=(ct.transform.FP16ComputePrecision(op_selector=keep_in_fp16)
                               if precision == "fp16" else ct.precision.FLOAT32),
            compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS[units]),
            inputs=[ct.TensorType(name=n, shape=tuple(s)) for n, s in inputs.items()],
            outputs=[ct.TensorType(name=n) for n in outputs], skip_model_load=True)


def describe(mlmodel, info: dict, bucket, precision: str, frames: int) -> None:
    from dealthdr import __version__

    from export.artifacts import LICENSE

    mlmodel.short_description = (f"DeAltHDR {info['variant']}: HDR of the centre frame of a "
                                 f"{frames}-frame alternating-exposure window (s={bucket.s_key}, "
                                 f"{bucket.centre}-exposure centre)")
    mlmodel.author = "dealthdr"
    mlmodel.license = LICENSE
    mlmodel.version = __version__
    mlmodel.input_description["frames"] = (f"(1, {frames}, 3, H, W) gamma-encoded LDR frames "
                                           "in [0, 1], time order, alternating short/long "
                                           "exposures")
    mlmodel.input_description["exposures"] = (f"(1, {frames}) relative exposure times (e.g. 1 "
                                              "and 8)")
    mlmodel.output_description["hdr"] = ("(1, 3, H, W) linear HDR of the centre frame, in units "
                                         "of the short exposure's white")
    mlmodel.user_defined_metadata.update({
        "dealthdr.variant": info["variant"], "dealthdr.s": bucket.s_key,
        "dealthdr.centre": bucket.centre, "dealthdr.bucket_k": ",".join(map(str, bucket.budget)),
        "dealthdr.attention_ratio_budget": ",".join(f"{r:.6g}" for r in bucket.ratio),
        "dealthdr.exposure_ratio": f"{info['exposure_ratio']:g}",
        "dealthdr.precision": precision, "dealthdr.checkpoint_sha256": info["checkpoint_sha256"]})


def validate_package(path: Path, functions: list[str], size, frames: int,
                     precision: str) -> dict:
    """Structure checks that need no macOS; raises ValueError on a malformed package."""
    import coremltools as ct
    from coremltools.proto import MIL_pb2

    spec = ct.utils.load_spec(str(path))
    descs = list(spec.description.functions) or [spec.description]
    names = [d.name for d in spec.description.functions] or ["main"]
    if sorted(names) != sorted(functions):
        raise ValueError(f"{path.name}: functions {names}, expected {functions}")
    h, w = size
    for d in descs:
        shapes = {i.name: list(i.type.multiArrayType.shape) for i in d.input}
        if shapes != {"frames": [1, frames, 3, h, w], "exposures": [1, frames]}:
            raise ValueError(f"{path.name}: inputs {shapes}")
        if [o.name for o in d.output] != ["hdr"]:
            raise ValueError(f"{path.name}: outputs {[o.name for o in d.output]}")
    report = {}
    for fname, fn in spec.mlProgram.functions.items():
        block = fn.block_specializations[fn.opset]
        types, hist, folded = {}, {}, 0
        for op in block.operations:
            hist[op.type] = hist.get(op.type, 0) + 1
            for o in op.outputs:
                types[o.name] = o.type.tensorType.dataType
            if op.type == "const" and not op.outputs[0].name.startswith("p_"):
                # a constant that is not a parameter: folded arithmetic (grids, zero maps)
                folded = max(folded, math.prod(d.constant.size for d in
                                               op.outputs[0].type.tensorType.dimensions))
        resample_types = set()
        for op in block.operations:
            if op.type == "resample":
                coords = op.inputs["coordinates"].arguments[0].name
                resample_types.add(types.get(coords))
                resample_types.add(op.outputs[0].type.tensorType.dataType)
        fp32 = MIL_pb2.DataType.Value("FLOAT32")
        if precision == "fp16" and resample_types - {fp32}:
            raise ValueError(f"{path.name}:{fname}: resample is not fp32")
        report[fname] = {"ops": sum(hist.values()), "op_histogram": dict(sorted(hist.items())),
                         "resample_ops": hist.get("resample", 0),
                         "resample_fp32": not (resample_types - {fp32}),
                         "largest_folded_constant": folded}
    return report


def coreml_runner(path: Path, function: str | None):
    import coremltools as ct

    mlmodel = ct.models.MLModel(str(path), function_name=function)

    def run(frames, exposures):
        return mlmodel.predict({"frames": frames.numpy(), "exposures": exposures.numpy()})["hdr"]
    return run


def save_multifunction(parts: list[tuple[str, Path]], out: Path) -> None:
    import coremltools as ct

    desc = ct.utils.MultiFunctionDescriptor()
    for name, path in parts:
        desc.add_function(str(path), src_function_name="main", target_function_name=name)
    desc.default_function_name = parts[0][0]
    ct.utils.save_multifunction(desc, str(out))


def main(argv: list[str] | None = None) -> int:
    from export.artifacts import add_common_flags, main_wrapper

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

        from export.buckets import group_by_s
        from export.coreml_stream import stream_packages

        from export.artifacts import (artifact_record, digest, prepare, staging_dir,
                                      write_manifest)
        from export.gate import pending_gate, run_gate

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
