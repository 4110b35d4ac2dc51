"""Streaming Core ML package: the methods of `dealthdr.export.stream` as functions of one
multifunction .mlpackage per s (iOS18+), for an app's frame loop on the Neural Engine / GPU.

Functions `encode_short`, `encode_long`, `flow` (once per input frame) and `fuse_<centre>` (once
per output frame) take and return named tensors (`NAMES`); `save_multifunction` stores weights
that are equal across functions once, so the two fuse functions share theirs. Core ML
prediction needs macOS: on Linux the package is converted, merged and structure-checked, and
its numeric gate is recorded as pending; on a Mac every fuse function is gated as a frame loop
(`dealthdr.export.stream.StreamRunner`) against the eager window network, like the XNNPACK program.
"""
from __future__ import annotations

import logging
import platform
import tempfile
from pathlib import Path

from dealthdr.export.artifacts import artifact_record, digest
from dealthdr.export.coreml import convert_named, save_multifunction
from dealthdr.export.gate import pending_gate
from dealthdr.export.stream import (export_stream, gate_stream, method_kind, recorded_methods,
                                    signatures, stream_record)

log = logging.getLogger(__name__)

# (input names, output names) per method kind; the encoders' outputs are the fuse's f1-f4
NAMES = {
    "encode": (["frame", "rel"], ["f1", "f2", "f3", "f4"]),
    "flow": (["frame_a", "rel_a", "frame_b", "rel_b"], ["flow_ab", "flow_ba"]),
    "fuse": (["frames", "exposures", "f1", "f2", "f3", "f4", "n1", "n2", "n3", "n4",
              "flow_t_n", "flow_n_t"], ["hdr"]),
}


def convert_method(program, method: str, shapes: dict, precision: str, target: str, units: str,
                   readable_names: bool = False):
    """One streaming method's ExportedProgram -> mlprogram with named inputs and outputs."""
    ins, outs = NAMES[method_kind(method)]
    if len(ins) != len(shapes["inputs"]) or len(outs) != len(shapes["outputs"]):
        raise ValueError(f"{method}: {len(shapes['inputs'])} inputs / {len(shapes['outputs'])} "
                         f"outputs, expected {ins} -> {outs}")
    return convert_named(program, dict(zip(ins, shapes["inputs"])), outs, precision, target,
                         units, readable_names)


def validate_stream_package(path: Path, sig: dict) -> None:
    """Function names and every function's input names and shapes as exported; raises
    ValueError on a mismatch."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    found = {d.name: d for d in spec.description.functions}
    if sorted(found) != sorted(sig):
        raise ValueError(f"{path.name}: functions {sorted(found)}, expected {sorted(sig)}")
    for method, d in found.items():
        ins, outs = NAMES[method_kind(method)]
        shapes = {i.name: list(i.type.multiArrayType.shape) for i in d.input}
        want = dict(zip(ins, sig[method]["inputs"]))
        if shapes != want:
            raise ValueError(f"{path.name}:{method}: inputs {shapes}, expected {want}")
        if [o.name for o in d.output] != outs:
            raise ValueError(f"{path.name}:{method}: outputs {[o.name for o in d.output]}")


def coreml_methods(path: Path, names: list[str]) -> dict:
    """The package's functions with `dealthdr.export.stream.eager_methods`' calling convention
    (lists of tensors in and out); macOS only."""
    import coremltools as ct
    import torch

    def load(method):
        mlmodel = ct.models.MLModel(str(path), function_name=method)
        ins, outs = NAMES[method_kind(method)]

        def run(inputs):
            got = mlmodel.predict({n: t.numpy() for n, t in zip(ins, inputs)})
            return [torch.from_numpy(got[n]) for n in outs]
        return run
    return {m: load(m) for m in names}


def stream_packages(stage: Path, model, info: dict, by_s: dict, size, windows, *,
                    precision: str, target: str, units: str,
                    readable_names: bool = False) -> list[dict]:
    """One multifunction package per s; its records (one per function, as the XNNPACK
    streaming program's)."""
    if target != "iOS18":
        raise ValueError("--stream needs --deployment-target iOS18: its functions share one "
                         "multifunction package")
    on_mac = platform.system() == "Darwin"
    records = []
    for group in by_s.values():
        programs = export_stream(model, group, size)
        sig = signatures(programs)
        path = stage / f"dealthdr_{info['variant']}_{group[0].s_stem}" \
                       "_stream.mlpackage"
        with tempfile.TemporaryDirectory() as tmp:
            parts, single = [], {}
            for method, program in programs.items():
                part = Path(tmp) / f"{method}.mlpackage"
                mlmodel = convert_method(program, method, sig[method], precision, target, units,
                                         readable_names)
                mlmodel.short_description = (f"DeAltHDR {info['variant']} streaming "
                                             f"{method} (s={group[0].s_key})")
                mlmodel.save(str(part))
                parts.append((method, part))
                single[method] = digest(part)[0]
            save_multifunction(parts, path)
        validate_stream_package(path, sig)
        methods = coreml_methods(path, sorted(programs)) if on_mac else None
        for b in group:
            if on_mac:
                parity = gate_stream(methods, model, b, windows, precision,
                                     f"coremltools predict ({platform.mac_ver()[0]}), "
                                     "streaming functions")
            else:
                parity = pending_gate("Core ML prediction needs macOS; structure validated on "
                                      "Linux", precision)
            for method, extra in recorded_methods(b, group):
                ins, outs = NAMES[method_kind(method)]
                records.append(artifact_record(
                    path, stage, "coreml", precision, b, size, parity,
                    frames=model.cfg.num_frames, function=method, deployment_target=target,
                    compute_units=units, single_function_bytes=single[method],
                    stream=stream_record(method, programs, sig, input_names=ins,
                                         output_names=outs), **extra))
        log.info("stream s=%s: %s (%d bytes; functions alone: %d bytes)", group[0].s_key,
                 path.name, digest(path)[0], sum(single.values()))
    return records
