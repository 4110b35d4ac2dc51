"""Export fixed-shape s-bucket graphs to ExecuTorch .pte programs, parity-gated.

One .pte per s-bucket; inside it one method per centre exposure (`forward_short`,
`forward_long`), lowered with `to_edge_transform_and_lower` to XNNPACK (runs here, gated in the
ExecuTorch runtime) or to the Core ML delegate (runs only on Apple OSes: the gate is recorded as
pending, never faked). Before lowering, graph rewrites (`dealthdr.export.rewrites`) turn ops that
would fall back to portable kernels into delegate-friendly equivalents; `--no-rewrites` shows the
difference. The manifest records the delegation coverage (ops and FLOPs) per method.

`--stream` adds, per s-bucket, a program for a phone app's frame loop: `encode_short`,
`encode_long` and `flow` run once per input frame, `fuse_short` / `fuse_long` once per output
frame, all methods of one .pte sharing one weight set (`dealthdr/export/stream.py`).

    python export/to_executorch.py --s-buckets 0,1,15,100 --backend xnnpack
    python export/to_executorch.py --s-buckets 0,15 --stream
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from dealthdr.cliargs import parse_size
from dealthdr.export.artifacts import (add_common_flags, artifact_record, main_wrapper, prepare,
                                       staging_dir, write_manifest)
from dealthdr.export.buckets import BucketGraph, export_program, group_by_s
from dealthdr.export.config import ExecuTorchConfig, parse_config
from dealthdr.export.coverage import coverage, pte_bytes
from dealthdr.export.gate import pending_gate, run_gate
from dealthdr.export.order import program_order
from dealthdr.export.provenance import shared_provenance
from dealthdr.export.rewrites import apply_rewrites, edge_constant_fold
from dealthdr.export.stream import (export_stream, gate_stream, program_methods, recorded_methods,
                                    signatures, stream_record)
from dealthdr.export.tiles import export_frame_flows, export_tiled, gate_tiled

log = logging.getLogger(__name__)


def partitioners(backend: str, precision: str) -> list:
    if backend == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        return [XnnpackPartitioner()]
    import coremltools as ct
    from executorch.backends.apple.coreml.compiler import CoreMLBackend
    from executorch.backends.apple.coreml.partition import CoreMLPartitioner

    specs = CoreMLBackend.generate_compile_specs(
        compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
        minimum_deployment_target=ct.target.iOS18)
    return [CoreMLPartitioner(compile_specs=specs)]


def lower(programs: dict, backend: str, precision: str = "fp32", rewrite: bool = True,
          caller_inputs: bool = False):
    """{method: ExportedProgram} -> (ExecutorchProgramManager, {method: coverage}).

    `caller_inputs`: the methods' inputs get no place in the planned arena; the runtime reads
    them where the caller holds them. A streaming fuse takes 43 MB of features per call at
    256x256 (`tiny`), which a planned input would copy into the arena every time."""
    from executorch.exir import (EdgeCompileConfig, ExecutorchBackendConfig,
                                 to_edge_transform_and_lower)
    from executorch.exir.passes import MemoryPlanningPass

    if rewrite:
        programs = {k: apply_rewrites(v) for k, v in programs.items()}
    with shared_provenance():
        with program_order():
            edge = to_edge_transform_and_lower(
                programs, transform_passes=[edge_constant_fold()] if rewrite else None,
                partitioner=partitioners(backend, precision),
                compile_config=EdgeCompileConfig(_check_ir_validity=False))
        cov = {k: coverage(edge.exported_program(k)) for k in programs}
        planning = MemoryPlanningPass(alloc_graph_input=not caller_inputs)
        return edge.to_executorch(ExecutorchBackendConfig(memory_planning_pass=planning)), cov


def pte_runner(path: Path, method: str):
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(str(path))
    loaded = program.load_method(method)

    def run(frames, exposures):
        return loaded.execute([frames.contiguous(), exposures.contiguous()])[0]
    return run


# Peak memory of a run / the planned activation arena, measured at 1080x1920 for `tiny`
# (12.1 GB planned, 22.8 GB peak): XNNPACK keeps a workspace per delegate call on top of it.
RUN_MEMORY_FACTOR = 2.0


def planned_bytes(exec_prog) -> dict[str, int]:
    """Bytes of the memory-planned activation arena of every method of a lowered program."""
    plans = exec_prog.executorch_program.execution_plan
    return {plan.name: int(sum(plan.non_const_buffer_sizes)) for plan in plans}


def input_memory(exec_prog) -> dict[str, str]:
    """Per method, where its inputs live: "planned" (copied into the arena on every call),
    "caller" (read where the caller holds them) or "mixed"."""
    out = {}
    for plan in exec_prog.executorch_program.execution_plan:
        placed = {plan.values[i].val.allocation_info is not None for i in plan.inputs
                  if hasattr(plan.values[i].val, "allocation_info")}
        out[plan.name] = {frozenset({True}): "planned",
                          frozenset({False}): "caller"}.get(frozenset(placed), "mixed")
    return out


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (free + reclaimable), or free pages elsewhere."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_runnable(method: str, planned: int) -> None:
    """Refuse to run the gate where the program cannot fit: an OOM kill would be the message."""
    need, have = RUN_MEMORY_FACTOR * planned, available_bytes()
    if need > have:
        raise ValueError(
            f"{method} plans {planned / 1e9:.1f} GB of activations at this --size (a run needs "
            f"about {need / 1e9:.1f} GB with XNNPACK's workspaces); {have / 1e9:.1f} GB are "
            "available here, so the parity gate cannot run. Export a smaller --size (phones run "
            "large frames as tiles) or run on a machine with more memory")


def bundle(exec_prog, methods: dict, windows) -> bytes:
    """A BundledProgram: the program plus each method's held-out inputs and expected outputs."""
    import torch
    from executorch.devtools import BundledProgram
    from executorch.devtools.bundled_program.config import MethodTestCase, MethodTestSuite
    from executorch.devtools.bundled_program.serialize import (
                                                               serialize_from_bundled_program_to_flatbuffer)


    suites = []
    for name, (model, bucket) in methods.items():
        graph = BucketGraph(model, bucket).eval()
        cases = []
        for w in windows:
            if w.centre == bucket.centre:
                with torch.no_grad():
                    expected = graph(w.frames, w.exposures)
                cases.append(MethodTestCase(inputs=[w.frames, w.exposures],
                                            expected_outputs=[expected]))
        suites.append(MethodTestSuite(method_name=name, test_cases=cases))
    return serialize_from_bundled_program_to_flatbuffer(BundledProgram(exec_prog, suites))


def tiled_programs(stage: Path, model, info: dict, by_s: dict, cfg: ExecuTorchConfig) -> list[dict]:
    """The frame flows program (guide at --size, pair_flows on the frame's 1/4 grid; one for
    every s) and one tile program per s, each tile method gated; their records."""
    frame, tile = tuple(cfg.tiled_frame), tuple(cfg.size)
    tiled = {"frame": list(frame), "tile": list(tile), "flow_scale": model.cfg.flow_scale}
    programs = export_frame_flows(model, tile, frame)
    exec_prog, flow_cov = lower(programs, "xnnpack")
    flows_path = stage / f"dealthdr_{info['variant']}_xnnpack_flows{frame[0]}x{frame[1]}.pte"
    flows_path.write_bytes(exec_prog.buffer)
    flow_arena, flow_sig = planned_bytes(exec_prog), signatures(programs)
    log.info("tiled flows: %s", {m: f"{a / 1e6:.0f} MB planned" for m, a in flow_arena.items()})
    # The flows program has no gate of its own: each tile gate runs it end to end.
    records, flow_parity = [], None
    for group in by_s.values():
        programs, sums_length = export_tiled(model, group, tile)
        exec_prog, cov = lower(programs, "xnnpack")
        path = stage / f"dealthdr_{info['variant']}_{group[0].s_stem}" \
                       f"_xnnpack_tiled{frame[0]}x{frame[1]}.pte"
        path.write_bytes(exec_prog.buffer)
        arena, sig = planned_bytes(exec_prog), signatures(programs)
        for b in group:
            parity = gate_tiled(path, flows_path, model, b, frame, tile[0], sums_length)
            flow_parity = flow_parity or {**parity, "gated_with": path.name}
            method = f"tile_{b.centre}"
            records.append(artifact_record(
                path, stage, "executorch-xnnpack", "fp32", b, tile, parity,
                frames=model.cfg.num_frames, method=method,
                tiled={"kind": "tile", **sig[method], **tiled, "sums_length": sums_length,
                       "flows_program": flows_path.name},
                delegation=cov[method], planned_activation_bytes=arena[method]))
        log.info("tiled s=%s: %s", group[0].s_key, {m: f"{a / 1e6:.0f} MB planned"
                                                    for m, a in arena.items()})
    for method in ("guide", "pair_flows"):
        records.append(artifact_record(
            flows_path, stage, "executorch-xnnpack", "fp32", None,
            frame if method == "pair_flows" else tile, flow_parity,
            frames=model.cfg.num_frames, method=method,
            tiled={"kind": method, **flow_sig[method], **tiled},
            delegation=flow_cov[method], planned_activation_bytes=flow_arena[method]))
    return records


def stream_programs(stage: Path, model, info: dict, by_s: dict, size, windows) -> list[dict]:
    """One streaming .pte per s (`dealthdr.export.stream`: encode_short, encode_long, flow and
    a fuse per centre, sharing weights), each fuse gated as a frame loop; their records."""
    records = []
    for group in by_s.values():
        programs = export_stream(model, group, size)
        exec_prog, cov = lower(programs, "xnnpack", caller_inputs=True)
        path = stage / f"dealthdr_{info['variant']}_{group[0].s_stem}" \
                       "_xnnpack_stream.pte"
        path.write_bytes(exec_prog.buffer)
        arena, sig, memory = planned_bytes(exec_prog), signatures(programs), input_memory(exec_prog)
        methods = program_methods(path)
        for b in group:
            check_runnable(f"fuse_{b.centre}", arena[f"fuse_{b.centre}"])
            parity = gate_stream(methods, model, b, windows)
            for method, extra in recorded_methods(b, group):
                records.append(artifact_record(
                    path, stage, "executorch-xnnpack", "fp32", b, size, parity,
                    frames=model.cfg.num_frames, method=method,
                    stream=stream_record(method, programs, sig, input_memory=memory[method]),
                    delegation=cov[method],
                    planned_activation_bytes=arena[method], **extra))
        log.info("stream s=%s: %s", group[0].s_key, {m: f"{a / 1e6:.0f} MB planned"
                                                     for m, a in arena.items()})
    return records


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p, "exports/executorch")
    p.add_argument("--backend", choices=("xnnpack", "coreml"), default="xnnpack",
                   help="delegate: xnnpack (CPU; runs and is gated here) or coreml (Apple "
                        "Neural Engine/GPU/CPU; gate pending macOS) (default xnnpack)")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                   help="compute precision; fp16 applies to the coreml backend only "
                        "(default fp32)")
    p.add_argument("--no-rewrites", action="store_true",
                   help="lower the graph as exported, without the delegate-friendly rewrites "
                        "(to measure what they buy)")
    p.add_argument("--tiled-frame", type=parse_size, default=None, metavar="HxW",
                   help="also write <name>_tiled<H>x<W>.pte per s (methods tile_<centre>) and "
                        "one dealthdr_<variant>_xnnpack_flows<H>x<W>.pte (methods guide, "
                        "pair_flows): a frame of HxW (e.g. 1080x1920) as --size tiles, with the "
                        "frame's flows and attention statistics; run by `python -m device_bench "
                        "tiled`, gated against the tiled eager network (xnnpack only; default: "
                        "none)")
    p.add_argument("--stream", action="store_true",
                   help="also write <name>_stream.pte per s: the streaming methods of a "
                        "phone's frame loop (encode_short, encode_long, flow: once per input "
                        "frame; fuse_<centre>: once per output frame), sharing weights, gated "
                        "as a frame loop against the eager window network (xnnpack only)")
    p.add_argument("--bundle", action="store_true",
                   help="also write <name>.bpte: a BundledProgram embedding held-out test "
                        "inputs and expected outputs for on-device verification")
    return p


def export_executorch(cfg: ExecuTorchConfig) -> int:
    """Lower, gate and record one .pte per s of `cfg` (plus tiled / streaming programs) into
    `cfg.out`; 0 on success."""
    from tqdm import tqdm

    if cfg.tiled_frame is not None:
        (fh, fw), (th, tw) = cfg.tiled_frame, cfg.size
        if cfg.backend != "xnnpack":
            raise ValueError("--tiled-frame is implemented for --backend xnnpack only")
        if th != tw or fh < th or fw < tw:
            raise ValueError(f"--tiled-frame {fh}x{fw} must be at least the square --size "
                             f"{th}x{tw}")
    if cfg.stream and cfg.backend != "xnnpack":
        raise ValueError("--stream is implemented for --backend xnnpack only")
    if cfg.precision == "fp16" and cfg.backend == "xnnpack":
        raise ValueError("--precision fp16 is for --backend coreml; XNNPACK exports fp32 "
                         "(int8: python quantize/qat.py)")
    started = time.time()
    with staging_dir(cfg.out, cfg.force) as stage:
        model, info, calibration, buckets, windows = prepare(cfg)
        by_s = group_by_s(buckets)
        records, notes = [], []
        for s_key, group in tqdm(by_s.items(), desc=f"executorch/{cfg.backend}"):
            methods = {f"forward_{b.centre}": b for b in group}
            programs = {m: export_program(model, b, cfg.size) for m, b in methods.items()}
            exec_prog, cov = lower(programs, cfg.backend, cfg.precision,
                                   not cfg.no_rewrites)
            path = stage / f"dealthdr_{info['variant']}_{group[0].s_stem}" \
                           f"_{cfg.backend}.pte"
            path.write_bytes(exec_prog.buffer)
            arena, split = planned_bytes(exec_prog), pte_bytes(exec_prog.buffer)
            if cfg.bundle:
                path.with_suffix(".bpte").write_bytes(
                    bundle(exec_prog, {m: (model, b) for m, b in methods.items()}, windows))
            for method, b in methods.items():
                if cfg.backend == "xnnpack":
                    check_runnable(method, arena[method])
                    parity = run_gate(pte_runner(path, method), model, b, windows, "fp32",
                                      "executorch runtime (XNNPACK + portable kernels)")
                else:
                    parity = pending_gate("Core ML-delegated programs run only on Apple "
                                          "OSes; run the gate there", cfg.precision)
                records.append(artifact_record(
                    path, stage, f"executorch-{cfg.backend}", cfg.precision, b, cfg.size,
                    parity, frames=model.cfg.num_frames, method=method,
                    rewrites=not cfg.no_rewrites, delegation=cov[method],
                    planned_activation_bytes=arena[method], bytes_split=split))
            log.info("s=%s: %s", s_key, {m: f"{c['flop_share']:.1%} FLOPs, "
                                         f"{c['op_share']:.1%} ops delegated"
                                         for m, c in cov.items()})
        if cfg.tiled_frame is not None:
            records.extend(tiled_programs(stage, model, info, by_s, cfg))
        if cfg.stream:
            records.extend(stream_programs(stage, model, info, by_s, cfg.size, windows))
        if cfg.backend == "coreml":
            notes.append("Core ML delegate: numeric parity pending (needs macOS/iOS)")
        write_manifest(stage, "export/to_executorch.py", cfg, info, calibration, records,
                       started, notes)
    log.info("wrote %d programs to %s", len({r["file"] for r in records}), cfg.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(build_parser(), ExecuTorchConfig, argv)
    return main_wrapper(lambda: export_executorch(cfg))


if __name__ == "__main__":
    sys.exit(main())
