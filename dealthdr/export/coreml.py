"""Core ML conversion, description, validation and multifunction saving, shared by the
exporter (`to_coreml`), the streaming packages (`coreml_stream`) and the int8 packages of
`dealthdr.quantize`. coremltools is imported inside the functions that need it."""
from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dealthdr import __version__
from dealthdr.export.artifacts import LICENSE, digest
from dealthdr.export.buckets import export_program
from dealthdr.export.coreml_compact import pipeline

log = logging.getLogger(__name__)
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


def convert(model, bucket, size, precision: str, target: str, units: str,
            readable_names: bool = False):
    return convert_program(export_program(model, bucket, size), size, model.cfg.num_frames,
                           precision, target, units, readable_names)


def convert_program(program, size, frames: int, precision: str, target: str, units: str,
                    readable_names: bool = False):
    """An exported bucket program -> mlprogram. `program` may hold pt2e quantize/dequantize
    pairs (quantize/qat.py): coremltools turns them into int8 weights and activations, and
    `precision` is then that of the float ops left between them. `frames`: the window length
    the program was exported for (the model's `num_frames`)."""
    h, w = size
    return convert_named(program, {"frames": (1, frames, 3, h, w), "exposures": (1, frames)},
                         ["hdr"], precision, target, units, readable_names)


def convert_named(program, inputs: dict, outputs: list[str], precision: str, target: str,
                  units: str, readable_names: bool = False):
    """An ExportedProgram -> mlprogram whose inputs ({name: shape}, in the program's order) and
    outputs carry these names; the warp and its coordinates stay fp32 under fp16. The program
    text is compacted (`coreml_compact`): constants deduplicated and, unless
    `readable_names`, short variable names."""
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
            outputs=[ct.TensorType(name=n) for n in outputs], skip_model_load=True,
            pass_pipeline=pipeline(readable_names))


def describe(mlmodel, info: dict, bucket, precision: str, frames: int) -> None:
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
    # What a package's bytes are: one weight file shared by every function, and each
    # function's own program text (its ops, in the model spec).
    weights = sum(f.stat().st_size for f in path.rglob("*")
                  if f.is_file() and f.parent.name == "weights")
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
                         "largest_folded_constant": folded,
                         "program_text_bytes": fn.ByteSize(), "package_weight_bytes": weights}
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


@dataclass
class Packaged:
    """Where one bucket's graph ended up: its package, its function there (None for a
    single-function package), the validated structure and the bytes it takes alone."""
    bucket: object
    path: Path
    function: str | None
    structure: dict
    single_bytes: int


def package(models, stage: Path, stem: str, target: str, size: tuple[int, int], frames: int,
            precision: str) -> list[Packaged]:
    """Save converted models, an iterable of (bucket, MLModel), into `stage`: one
    multifunction `<stem>.mlpackage` with a function per bucket and shared weights (iOS18),
    or one `<stem>_<bucket>.mlpackage` per bucket (iOS17); each package's structure is
    validated once. Models are saved as they come, so only one is held in memory."""
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        for b, mlmodel in models:
            folder = stage if target == "iOS17" else Path(tmp)
            path = folder / f"{stem}_{b.name}.mlpackage"
            mlmodel.save(str(path))
            parts.append((b, path))
        single = {b.name: digest(path)[0] for b, path in parts}
        if target == "iOS18":
            merged = stage / f"{stem}.mlpackage"
            save_multifunction([(b.name, path) for b, path in parts], merged)
            files = {b.name: (merged, b.name) for b, _ in parts}
        else:
            files = {b.name: (path, None) for b, path in parts}
    structures, out = {}, []
    for b, _ in parts:
        path, function = files[b.name]
        if path not in structures:  # a multifunction package is read once
            names = [x.name for x, _ in parts] if function else ["main"]
            structures[path] = validate_package(path, names, size, frames, precision)
        out.append(Packaged(b, path, function, structures[path][function or "main"],
                            single[b.name]))
    return out

