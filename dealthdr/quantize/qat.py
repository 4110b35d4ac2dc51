"""int8 DeAltHDR: quantization-aware fine-tuning, a post-training baseline, and the artifacts.

For every backend: export each (s, centre) bucket at the deployment shape, prepare it with the
backend's pt2e quantizer (`prepare_qat_pt2e`), fine-tune all graphs together with the paper's
mu-law L1 on synthetic windows (one set of weights shared by every graph, round-robin over the
buckets, so each artifact stores one int8 set; `--tie centre`: one set per centre), then
`convert_pt2e` and lower through `export/` (one path to artifacts):

  xnnpack  int8 .pte per s (methods forward_short / forward_long), run and gated here in the
           ExecuTorch runtime against the converted torch graph
  coreml   one W8A8 multifunction .mlpackage (iOS18) or one per bucket (iOS17); structure
           validated on Linux, numeric gate pending macOS
  onnx     NNCF post-training QDQ of the exported ONNX model, run in onnxruntime (no QAT
           column: NNCF's torch QAT routes do not export, see quantize/README.md)

A PTQ baseline (same calibration windows, same float islands) and the fp32 model are scored on
held-out windows beside QAT; QAT's activation ranges start from the PTQ baseline's (min/max over
the same windows). Float islands: sampling coordinates, indices and the attention mask's
statistics always; whole blocks via --float-groups (default: the weight-free exposure merge,
whose int8 output is NaN, the linear-HDR input/output arithmetic, and the decoder's two finer
levels with their routers and the head: 35 k parameters; see quantize/README.md). Writes
quantize_report.json, quantize_report.md and manifest.json into --out. A killed run resumes:
QAT from its last checkpoint, and the sweep and every finished backend from <state>/finished.

    python quantize/qat.py
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from dealthdr.calib.windows import make_windows
from dealthdr.export.artifacts import (add_common_flags, main_wrapper, prepare, staging_dir,
                                       write_manifest)
from dealthdr.export.buckets import BucketGraph, example_inputs, group_by_s
from dealthdr.export.config import parse_config
from dealthdr.quantize import artifacts as arts
from dealthdr.quantize.config import QuantizeConfig, QuantizeContext
from dealthdr.quantize.measure import quality
from dealthdr.quantize.onnx_nncf import run_onnx
from dealthdr.quantize.policy import group_names
from dealthdr.quantize.qat_train import QATConfig, prepare_graphs, train
from dealthdr.quantize.quantizers import check_attention_kept
from dealthdr.quantize.ranges import widen_empty_ranges
from dealthdr.quantize.report import write_report
from dealthdr.quantize.resume import Finished, code_digest, fingerprint, new_files
from dealthdr.quantize.sensitivity import ptq_artifact

log = logging.getLogger(__name__)
BACKENDS = ("xnnpack", "coreml", "onnx")


def parse_list(text: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if allowed is not None and t not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"{bad} not in {list(allowed)}")
    return items


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p, "exports/int8")
    p.set_defaults(parity_clips=4)  # 4 windows per centre score fp32 / PTQ / QAT
    p.add_argument("--backend", type=lambda t: parse_list(t, BACKENDS),
                   default=["xnnpack", "coreml"],
                   help="comma-separated: xnnpack, coreml, onnx (default xnnpack,coreml)")
    p.add_argument("--steps", type=int, default=100,
                   help="QAT steps, shared by all buckets round-robin (default 100)")
    p.add_argument("--lr", type=float, default=1e-5, help="QAT learning rate, cosine to 1e-7 "
                   "(default 1e-5)")
    p.add_argument("--distill", type=float, default=1.0,
                   help="share of the mu-law L1 taken against the fp32 model's output "
                        "instead of the ground truth: 0 = ground truth only, 1 = "
                        "distillation only (default 1: at 128x128, s15_short it kept QAT "
                        "0.2 dB closer to fp32 than ground truth did)")
    p.add_argument("--tie", choices=("centre", "all"), default=QuantizeConfig.tie,
                   help="all: one set of weights for every graph, so each artifact stores "
                        "one int8 set (needs the same float groups for both centres); "
                        "centre: short- and long-centre graphs fine-tune separate sets, for "
                        "islands that differ by centre (default all)")
    p.add_argument("--no-share-ranges", dest="share_ranges", action="store_false",
                   help="give each method of an int8 .pte its own activation ranges; by "
                        "default (with --tie all) the two centres' methods of a .pte take one "
                        "range per activation they have in common, the union of theirs, so "
                        "their identical delegate calls are stored once (s=15 .pte at "
                        "256x256: 3.79 -> 3.40 MB, measured)")
    p.add_argument("--train-clips", type=int, default=4,
                   help="synthetic training clips (2 windows each) for QAT and for PTQ "
                        "calibration (default 4)")
    groups = lambda t: parse_list(t, group_names())  # noqa: E731
    p.add_argument("--float-groups", type=groups, default=list(QuantizeConfig.float_groups),
                   help=f"block groups kept float in every graph, comma-separated, from "
                        f"{list(group_names())}; io = input linearisation and output "
                        "composition (default merge,io,head,router,decoder,decoder_l1: merge "
                        "and io in int8 give NaN / 15 dB; the decoder's levels 1-2, their "
                        "routers and the head correct a noisy short base frame and hold "
                        "35 k parameters; quantize/README.md has the measurements)")
    p.add_argument("--float-groups-short", type=groups,
                   default=list(QuantizeConfig.float_groups_short),
                   help="more groups kept float in the short-centre graphs only (default "
                        "none; with --tie all a group float in one centre and int8 in the "
                        "other is stored twice)")
    p.add_argument("--float-groups-long", type=groups,
                   default=list(QuantizeConfig.float_groups_long),
                   help="more groups kept float in the long-centre graphs only (default none)")
    p.add_argument("--ptq-observer", choices=("minmax", "histogram"), default="minmax",
                   help="PTQ activation observer: minmax, the range QAT's fake quantizers "
                        "start from (so the gap measures what training buys), or histogram "
                        "(upstream's clipping search, ~2.5 min per graph) (default minmax)")
    p.add_argument("--onnx-max-drop", type=float, default=None, metavar="DB",
                   help="onnx backend: NNCF accuracy control, reverting quantizers until "
                        "PSNR-mu on the calibration windows is within DB of fp32 (default: "
                        "plain nncf.quantize)")
    p.add_argument("--no-latency", action="store_true",
                   help="skip the host latency comparison (it lowers one extra fp32 .pte)")
    p.add_argument("--no-sensitivity", action="store_true",
                   help="skip the per-block sensitivity sweep (9 PTQ runs at one bucket)")
    p.add_argument("--deployment-target", choices=("iOS17", "iOS18"), default="iOS18",
                   help="Core ML: iOS18 multifunction package or iOS17 one per bucket")
    p.add_argument("--readable-names", action="store_true",
                   help="Core ML: keep the exporter's variable and op names (module paths) in "
                        "the program text, for debugging; by default they are shortened")
    p.add_argument("--state", type=Path, default=None,
                   help="resume folder: QAT checkpoints per backend and, under finished/, "
                        "every finished stage (sweep, backends) a rerun with the same settings "
                        "reuses (default: <out>.qat-state)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    return p


def export_graphs(model, buckets, size) -> dict:
    """{bucket name: ExportedProgram} of the float model (no no_grad: QAT trains them)."""
    import torch

    return {b.name: torch.export.export(BucketGraph(model.eval(), b),
                                        example_inputs(b, size, model.cfg.num_frames),
                                        strict=False) for b in buckets}


def run_stage(backend: str, ctx: QuantizeContext, cfg: QuantizeConfig, stage: Path,
              info: dict):
    """One backend, start to finish: (report section, artifact records), files in `stage`."""
    if backend == "onnx":
        return run_onnx(ctx, cfg, stage, info)
    section, converted = run_backend(backend, ctx, cfg)
    recs, extra = arts.write_artifacts(backend, converted, ctx, cfg, stage, info)
    section.update(extra)
    return section, recs


def shares(cfg: QuantizeConfig, backend: str) -> bool:
    """Whether the graphs of one artifact share their activation ranges: for XNNPACK programs
    whose methods share their weights (`--tie all`), since only then can their delegate calls
    be stored once. A Core ML package keeps a range per function (each function's program text
    holds its own scales; what sharing would save there is not measured)."""
    return cfg.share_ranges and cfg.tie == "all" and backend == "xnnpack"


def run_backend(backend: str, ctx: QuantizeContext, cfg: QuantizeConfig) -> dict:
    """QAT + PTQ + artifacts of one backend; returns its report section."""
    import torch
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    model, buckets, programs = ctx.model, ctx.buckets, ctx.programs
    float_for = cfg.float_groups_by_centre()
    graphs, policies = prepare_graphs(model, buckets, cfg.size, backend, float_for)
    qat_cfg = QATConfig(steps=cfg.steps, lr=cfg.lr, distill=cfg.distill, tie=cfg.tie)
    teachers = {b.name: BucketGraph(model, b).eval() for b in buckets}
    settings = {"backend": backend, "size": list(cfg.size), "float_groups": float_for,
                "buckets": {b.name: list(b.budget) for b in buckets},
                "checkpoint_sha256": ctx.checkpoint_sha256, "train_clips": cfg.train_clips,
                "code": code_digest(), "share_ranges": shares(cfg, backend)}
    artifacts = {b.name: b.s_key for b in buckets} if shares(cfg, backend) else None
    record = train(graphs, {b.name: b.centre for b in buckets}, ctx.train_windows, qat_cfg,
                   ctx.state / backend, teachers, settings, artifacts)
    record["empty_ranges_widened"] = widen_empty_ranges(graphs)
    if record["empty_ranges_widened"]:
        log.info("%s: %d activation(s) were zero on every calibration window; their int8 range "
                 "is [0, 1] instead of a degenerate one", backend, record["empty_ranges_widened"])
    converted = {}
    for name, gm in graphs.items():
        move_exported_model_to_eval(gm)
        converted[name] = convert_pt2e(gm)
        check_attention_kept(converted[name])
    section = {"qat": record, "buckets": {},
               "float_islands": {n: p.describe() for n, p in policies.items()}}
    for group in group_by_s(buckets).values():  # PTQ per .pte, shared as QAT's are
        ptq_models = ptq_artifact(
            {b.name: programs[b.name] for b in group}, {b.name: b.centre for b in group},
            backend, {b.name: {"float_groups": float_for[b.centre]} for b in group},
            ctx.train_windows, cfg.ptq_observer, share=shares(cfg, backend))
        for b in group:
            with torch.no_grad():
                fp32 = quality(BucketGraph(model, b).eval(), ctx.windows, b.centre)
                q_ptq = quality(ptq_models[b.name], ctx.windows, b.centre)
                q_qat = quality(converted[b.name], ctx.windows, b.centre)
            section["buckets"][b.name] = {
                "s": b.s_key, "centre": b.centre, "fp32": fp32["psnr_mu"],
                "ptq": q_ptq["psnr_mu"], "qat": q_qat["psnr_mu"],
                "ptq_gap_db": q_ptq["psnr_mu"] - fp32["psnr_mu"],
                "qat_gap_db": q_qat["psnr_mu"] - fp32["psnr_mu"], "windows": fp32["windows"]}
            log.info("%s %s: fp32 %.2f, PTQ %.2f, QAT %.2f dB PSNR-mu", backend, b.name,
                     fp32["psnr_mu"], q_ptq["psnr_mu"], q_qat["psnr_mu"])
    return section, converted


def quantize(cfg: QuantizeConfig) -> int:
    """QAT, the PTQ baseline and the int8 artifacts of every backend of `cfg`, gated, with
    the report, into `cfg.out` (resuming finished stages from `cfg.state_dir`); 0 on success."""
    import torch

    if cfg.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {cfg.steps}")
    graphs = len(cfg.s_buckets) * len(cfg.centres)
    if cfg.steps < graphs and set(cfg.backend) & {"xnnpack", "coreml"}:
        # checked here, not minutes later when QAT starts after calibration and export
        raise ValueError(f"--steps must give QAT at least one step per graph: {cfg.steps} "
                         f"steps for {graphs} graphs ({len(cfg.s_buckets)} s-buckets x "
                         f"{len(cfg.centres)} centres)")
    if cfg.onnx_max_drop is not None and cfg.onnx_max_drop <= 0:
        raise ValueError(f"--onnx-max-drop must be > 0 dB, got {cfg.onnx_max_drop}")
    if not 0 <= cfg.distill <= 1:
        raise ValueError(f"--distill must be in [0, 1], got {cfg.distill}")
    float_for = cfg.float_groups_by_centre()
    if cfg.tie == "all" and set(float_for["short"]) != set(float_for["long"]):
        log.warning("--tie all with float groups that differ by centre: the groups int8 in "
                    "one centre and float in the other are stored twice in every artifact")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    started = time.time()
    state = cfg.state_dir
    with staging_dir(cfg.out, cfg.force) as stage:
        model, info, calibration, buckets, windows = prepare(cfg)
        ctx = QuantizeContext(
            model=model, buckets=buckets, windows=windows, state=state,
            checkpoint_sha256=info["checkpoint_sha256"],
            train_windows=make_windows("train", *cfg.size, clips=cfg.train_clips, seed=2,
                                       progress=True, frames=model.cfg.num_frames),
            programs=export_graphs(model, buckets, cfg.size))
        report = {"backends": {}, "size": list(cfg.size),
                  "float_groups": cfg.float_groups_by_centre(),
                  "ptq_observer": cfg.ptq_observer}
        finished = Finished(state, fingerprint(cfg, info["checkpoint_sha256"]))
        if not cfg.no_sensitivity:
            report["sensitivity"] = finished.load("sensitivity", stage)
            if report["sensitivity"] is None:
                report["sensitivity"] = arts.sensitivity(ctx, cfg)
                finished.save("sensitivity", stage, [], report["sensitivity"])
        records, notes = [], []
        for backend in cfg.backend:
            done = finished.load(backend, stage)
            if done is None:
                before = {p.name for p in stage.iterdir()}
                section, recs = run_stage(backend, ctx, cfg, stage, info)
                done = {"section": section, "records": recs}
                finished.save(backend, stage, new_files(stage, before), done)
            report["backends"][backend] = done["section"]
            records += done["records"]
        if "coreml" in cfg.backend:
            notes.append("Core ML W8A8: numeric parity pending (Core ML predicts only on "
                         "macOS); structure validated on Linux")
        write_manifest(stage, "quantize/qat.py", cfg, info, calibration, records,
                       started, notes)
        write_report(stage, report, info, cfg)
    log.info("wrote %s (%d artifacts) in %.0f s", cfg.out, len(records),
             time.time() - started)
    return 0


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(build_parser(), QuantizeConfig, argv)
    return main_wrapper(lambda: quantize(cfg))


if __name__ == "__main__":
    sys.exit(main())
