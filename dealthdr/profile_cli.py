"""`dealthdr profile`: MACs, FLOPs, attention ratio and CPU latency per variant and s."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from . import paper
from .checkpoint import load_checkpoint, shipped_variants
from .cliargs import parse_size
from .fileio import atomic_write_bytes, jsonable
from .model import VARIANTS, create_model
from .profile import linear_fit, profile_model
from .sensitivity import parse_s_list, s_text
from .sysinfo import machine_record
from .testclip import make_clip


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="cost table of the variants (MACs, FLOPs, latency)",
                       description=__doc__ + " Runs on a deterministic built-in clip with global "
                       "and local motion, so no data is needed.")
    p.add_argument("--variant", default="tiny,s,default",
                   help="comma-separated variants to profile (default: tiny,s,default)")
    p.add_argument("--size", type=parse_size, default=(256, 256),
                   help="input size HxW of the 5-frame window (default: 256x256)")
    p.add_argument("--s", type=parse_s_list, default=[0, 1, 15, 100, math.inf], dest="s_values",
                   help="FGMA sensitivities, comma-separated; 0 = flow only, inf = attention "
                        "only (default: 0,1,15,100,inf)")
    p.add_argument("--checkpoint", default=None, metavar="PATH|default",
                   help="weights to profile (.safetensors with its .json, or 'default'); "
                        "attention ratios depend on the flow, so untrained weights give "
                        "untypical ratios. Default: the shipped checkpoint for its variant "
                        "(tiny), random initialisation with --seed for the others")
    p.add_argument("--random-init", action="store_true",
                   help="profile every variant with random weights, even where one ships")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    p.add_argument("--threads", type=int, default=2,
                   help="torch intra-op threads for the latency runs (default: 2)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed forwards per point; the median is reported (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed forwards first (default: 1)")
    p.add_argument("--no-latency", action="store_true", help="count FLOPs only, skip timing")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                   help="write the records as JSON to PATH, or to stdout when no PATH is given "
                        "(the table then goes to stderr)")
    p.set_defaults(run=run)


def _table(records: list[dict]) -> str:
    lines = [f"{'variant':8} {'s':>6} {'R':>6} {'tiles':>6} {'GMACs':>8} {'GFLOPs':>8} "
             f"{'params(M)':>9} {'latency ms':>11}"]
    for r in records:
        lat = f"{r['latency_ms']:11.0f}" if "latency_ms" in r else f"{'-':>11}"
        lines.append(f"{r['variant']:8} {r['s']:>6g} {r['attention_ratio']:6.3f} "
                     f"{r['tile_ratio']:6.3f} {r['gmacs']:8.2f} {r['gflops']:8.2f} "
                     f"{r['params'] / 1e6:9.2f} {lat}")
    return "\n".join(lines)


def _summary(records: list[dict]) -> list[str]:
    cost = {row[0]: row[4] for row in paper.TABLE_I}  # s text -> FLOPs (G)
    paper_0, paper_inf = cost["0"], cost["inf"]
    out = []
    for name in dict.fromkeys(r["variant"] for r in records):
        rs = [r for r in records if r["variant"] == name]
        by_s = {r["s"]: r for r in rs}
        line = f"{name}: "
        if len({r["tile_ratio"] for r in rs}) >= 2:
            _, slope, resid = linear_fit([r["tile_ratio"] for r in rs],
                                         [r["gflops"] for r in rs])
            line += (f"GFLOPs = a + {slope:.2f} * tile ratio, max residual {100 * resid:.2f} % "
                     "of mean; ")
        if 0 in by_s and math.inf in by_s:
            ratio = by_s[math.inf]["gflops"] / by_s[0]["gflops"]
            line += (f"GFLOPs(s=inf)/GFLOPs(s=0) = {ratio:.3f} (paper: {paper_inf:g}/"
                     f"{paper_0:g} = {paper_inf / paper_0:.3f})")
        out.append(line)
    return out


def run(args: argparse.Namespace) -> int:
    variants = [v.strip() for v in args.variant.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {sorted(VARIANTS)}")
    if args.checkpoint and len(variants) != 1:
        raise ValueError("--checkpoint profiles one variant: pass --variant NAME")
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        raise ValueError("--threads and --repeats must be >= 1, --warmup >= 0")
    torch.set_num_threads(args.threads)
    frames, exposures, _ = make_clip(*args.size)
    records = []
    machine = machine_record()
    for name in variants:
        shipped = shipped_variants() if not args.random_init else []
        if args.checkpoint or name in shipped:
            model, _ = load_checkpoint(args.checkpoint or "default", variant=name)
            weights = str(args.checkpoint or "default (shipped)")
        else:
            torch.manual_seed(args.seed)
            model = create_model(name).eval()
            weights = f"random-init(seed={args.seed})"
        for rec in profile_model(model, frames, exposures, args.s_values, args.repeats,
                                 args.warmup, latency=not args.no_latency):
            rec["weights"] = weights
            rec["machine"] = machine
            records.append(rec)

    text = _table(records) + "\n" + "\n".join(_summary(records))
    if any(r["weights"].startswith("random") for r in records):
        text += ("\nnote: random weights for some variants (no checkpoint of theirs); their "
                 "attention ratios follow an untrained "
                 "flow. FLOPs/latency vs R still hold.")
    table_out = sys.stderr if args.json == "-" else sys.stdout
    print(text, file=table_out)
    if args.json:
        # s in its text form ("0", "15", "inf"), as every other record of the project writes it
        payload = json.dumps(jsonable([{**r, "s": s_text(r["s"])} for r in records]), indent=2,
                             allow_nan=False)
        if args.json == "-":
            print(payload)
        else:
            atomic_write_bytes(Path(args.json), payload.encode())
    return 0
