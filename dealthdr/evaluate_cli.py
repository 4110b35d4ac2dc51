"""`dealthdr evaluate`: PSNR/SSIM (μ-law), PSNR-L, FovVideoVDP, TWE and tOF on clip folders,
for a checkpoint at several s and for the non-learned baselines."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from .baselines import GT_FLOW_BASELINES
from .checkpoint import checkpoint_label, load_checkpoint, resolve_checkpoint
from .cliargs import reuse_freed_memory
from .evaluate import SHORT_WHITE, baseline_methods, evaluate, model_method
from .evaluate_table import markdown_table
from .fileio import atomic_write_bytes, jsonable
from .model import VARIANTS
from .sensitivity import parse_s_list
from .sysinfo import machine_record


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics of a checkpoint and the baselines on clips",
                       description=__doc__ + " Every centre frame with a full 5-frame window "
                       "is evaluated; see the 'conventions' field of the JSON for definitions.")
    p.add_argument("--data", type=Path, required=True,
                   help="a clip folder (with meta.json) or a folder of clip folders")
    p.add_argument("--checkpoint", default=None, metavar="PATH|default[,...]",
                   help="network weights (.safetensors beside its .json), or 'default' for the "
                        "shipped checkpoint of --variant (tiny when none is named); "
                        "comma-separated to evaluate several in one table; omit to evaluate "
                        "only the baselines")
    p.add_argument("--variant", default=None, metavar="NAME[,...]",
                   help="variant of each --checkpoint (tiny, s, default): with one checkpoint "
                        "and several variants ('--checkpoint default --variant tiny,s') each "
                        "variant's shipped weights; with a path, a checkpoint of another "
                        "variant is refused (default: whatever each checkpoint is)")
    p.add_argument("--s", type=parse_s_list, default=[0.0, 15.0, math.inf], dest="s_values",
                   help="FGMA sensitivities, comma-separated; 0 = flow only, inf = attention "
                        "only (default: 0,15,inf)")
    p.add_argument("--baselines", default="reference,classical",
                   help="comma-separated baselines, or 'none': reference (the centre frame, "
                        "Eq. 1), classical (DIS-aligned exposure merge), unaligned (that merge "
                        "with zero flow: how much alignment matters on these clips) "
                        "(default: reference,classical)")
    p.add_argument("--gt-flow", action="store_true",
                   help="also run the network at every --s with the clips' ground-truth flow "
                        "in place of SpyNet's (rows 'dealthdr (GT flow)'): an oracle of what "
                        "better alignment could buy these weights; with classical among the "
                        "baselines, also 'classical (GT flow)', the merge with that flow; "
                        "needs the flow/ of clips made by `dealthdr synth`")
    p.add_argument("--no-flow", action="store_true",
                   help="also run the network at every --s with zero flow (rows 'dealthdr (no "
                        "flow)'): how much these weights lean on their flow, and how much of "
                        "it attention recovers on its own (s=inf against s=0; at a finite s "
                        "zero flow masks nothing); the merge-only counterpart is "
                        "--baselines unaligned")
    p.add_argument("--max-clips", type=int, default=None, metavar="N",
                   help="evaluate only the first N clips (sorted by name)")
    p.add_argument("--no-fvvdp", action="store_true",
                   help="skip FovVideoVDP (the slowest metric)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch and OpenCV threads (default: their own defaults)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT",
                   help="write the results to OUT (JSON) and the table to OUT with suffix .md")
    p.add_argument("--normalise", choices=("short-white", "gt-max"), default="short-white",
                   help="value mapped to 1 before tonemapping: short-white (default) = 1.0, the "
                        "short exposure's saturation, above which no input holds information; "
                        "gt-max = each clip's GT maximum (HDRFlow), dominated by any sun in view")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _baseline_names(text: str) -> list[str]:
    if text.strip().lower() in ("", "none"):
        return []
    return [n.strip() for n in text.split(",") if n.strip()]


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def checkpoint_pairs(checkpoints: str | None, variants: str | None) -> list[tuple[str, str | None]]:
    """(checkpoint, variant or None) for every network to evaluate, from the two flags."""
    ckpts, names = _split(checkpoints), _split(variants) or [None]
    unknown = [v for v in names if v is not None and v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {sorted(VARIANTS)}")
    if len(ckpts) == 1:
        pairs = [(ckpts[0], v) for v in names]
    elif len(names) == 1:
        pairs = [(c, names[0]) for c in ckpts]
    elif len(ckpts) == len(names):
        pairs = list(zip(ckpts, names))
    else:
        raise ValueError(f"{len(ckpts)} checkpoints and {len(names)} variants: give one of "
                         "either, or as many variants as checkpoints")
    return pairs


def run(args: argparse.Namespace) -> int:
    if args.max_clips is not None and args.max_clips < 1:
        raise ValueError("--max-clips must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise ValueError("--threads must be >= 1")
    if args.gt_flow and not args.checkpoint and \
            not set(_baseline_names(args.baselines)) & set(GT_FLOW_BASELINES):
        raise ValueError(f"--gt-flow is an oracle of the network and of the aligning baselines "
                         f"({', '.join(sorted(GT_FLOW_BASELINES))}): pass --checkpoint or one "
                         f"of those")
    if args.variant and not args.checkpoint:
        raise ValueError("--variant checks a checkpoint: pass --checkpoint too")
    if args.no_flow and not args.checkpoint:
        raise ValueError("--no-flow runs the network: pass --checkpoint too")
    if args.json is not None and args.json.suffix == ".md":
        raise ValueError("--json OUT must not end in .md (the table is written there)")
    if args.json is not None:  # refused before the evaluation, not after it
        for out in (args.json, args.json.with_suffix(".md")):
            if out.is_dir() or (out.parent.exists() and not out.parent.is_dir()):
                raise ValueError(f"cannot write {out}: a folder is there, or its parent is "
                                 "not a folder")
    if not args.data.is_dir():
        raise FileNotFoundError(f"data directory not found: {args.data}")
    if args.threads:
        import cv2

        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    reuse_freed_memory()

    networks, nets = [], []
    for ckpt, variant in checkpoint_pairs(args.checkpoint, args.variant):
        # every checkpoint is loaded (and a bad one refused) before any clip is read
        path = resolve_checkpoint(ckpt, variant)
        model, meta = load_checkpoint(path, variant=variant)
        label = checkpoint_label(path)
        if any((n["checkpoint"], n["variant"]) == (label, model.cfg.name) for n in networks):
            raise ValueError(f"{ckpt} ({model.cfg.name}) is given twice")
        networks.append({"checkpoint": label, "variant": model.cfg.name, "meta": meta})
        nets.append((model, label))
    model_rows, oracle = [], []
    for model, label in nets:
        model_rows += [model_method(model, s, checkpoint=label) for s in args.s_values]
        if args.gt_flow:
            oracle += [model_method(model, s, gt_flow=True, checkpoint=label)
                       for s in args.s_values]
        if args.no_flow:
            oracle += [model_method(model, s, checkpoint=label, zero_flow=True)
                       for s in args.s_values]
    methods = model_rows + oracle + baseline_methods(_baseline_names(args.baselines),
                                                     gt_flow=args.gt_flow)
    result = evaluate(args.data, methods, fvvdp=not args.no_fvvdp, max_clips=args.max_clips,
                      progress=not args.no_progress,
                      white=None if args.normalise == "gt-max" else SHORT_WHITE)
    result["networks"] = networks
    if len(networks) == 1:  # the single-network fields readers of one-checkpoint results use
        result.update(checkpoint=networks[0]["checkpoint"], variant=networks[0]["variant"],
                      checkpoint_meta=networks[0]["meta"])
    result["machine"] = machine_record()

    table = markdown_table(result["records"])
    print(table)
    if result["fvvdp"]["note"]:
        print(f"\nFovVideoVDP: {result['fvvdp']['note']}")
    if args.json is not None:
        payload = json.dumps(jsonable(result), indent=2, allow_nan=False)
        # the table first: a results file is then never without the table beside it
        atomic_write_bytes(args.json.with_suffix(".md"), (table + "\n").encode())
        atomic_write_bytes(args.json, payload.encode())
    return 0
