"""`python -m device_bench pick --budget-ms X --records FILE`: the best-quality s-bucket that
fits a frame budget on a device / runtime — the paper's adaptive inference cost, made usable.

For each (device, runtime, backend, precision, size, threads) among the records (narrow them
with the flags), a bucket fits when both of its centre graphs (an alternating stream runs
them in turn) meet the budget at the chosen statistic (`--statistic p90`, the default, holds
for 9 frames in 10; `median` for the typical frame). Among those that fit, the highest PSNR-mu
wins (`--quality`); where no quality is known for a bucket the attention ratio decides,
since quality rises with it (paper, Table I), and the answer says so. Exit 0 when a bucket
fits, 1 when none does (the message names the fastest bucket and its latency).
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from dealthdr.bench.plot import default_quality
from dealthdr.bench.quality import load_quality
from dealthdr.bench.schema import is_reference, read_records


def add_parser(sub) -> None:
    p = sub.add_parser("pick", help="best-quality s-bucket within a latency budget",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-ms", type=float, required=True,
                   help="latency budget per frame in ms (30 fps: 33)")
    p.add_argument("--records", type=Path, nargs="+", required=True, help="records files")
    p.add_argument("--device", default=None, help="only this device (default: every device)")
    p.add_argument("--runtime", default=None,
                   help="only this runtime: torch, onnxruntime, executorch, coreml "
                        "(default: every runtime)")
    p.add_argument("--precision", default=None, help="only fp32, fp16 or int8 (default: all)")
    p.add_argument("--size", default=None, help="only this size HxW (default: all)")
    p.add_argument("--threads", type=int, default=None, help="only this thread count")
    p.add_argument("--statistic", choices=("p90", "median"), default="p90",
                   help="latency that must fit the budget (default p90)")
    p.add_argument("--quality", type=Path, nargs="*", default=None, metavar="FILE",
                   help="PSNR-mu sources (eval JSON, quantize_report.json); default "
                        "dealthdr/weights/eval_heldout.json")
    p.add_argument("--json", action="store_true", help="print the picks as JSON")
    p.set_defaults(run=run, config=PickConfig)


def choose(records: list[dict], budget_ms: float, statistic: str = "p90", quality=None) -> list:
    """One answer per group: {group, pick | None, fastest, candidates, ranked_by}."""
    field = "latency_ms_p90" if statistic == "p90" else "latency_ms_median"
    groups = defaultdict(lambda: defaultdict(list))
    for r in records:
        if is_reference(r):
            continue
        g = (r["device"], r["runtime"], r["backend"], r["precision"], r["size"], r["threads"],
             r["variant"])
        groups[g][r["s"]].append(r)
    answers = []
    for g, by_s in sorted(groups.items(), key=lambda kv: tuple(str(v) for v in kv[0])):
        cands = []
        for s, rs in by_s.items():
            q = [quality.of(r)[0] for r in rs] if quality is not None else [None]
            known = [v for v in q if v is not None]
            cands.append({"s": s, "latency_ms": max(r[field] for r in rs),
                          "attention_ratio": max(r["attention_ratio"] for r in rs),
                          "psnr_mu": sum(known) / len(known) if known and len(known) == len(q)
                          else None, "centres": sorted(str(r.get("centre")) for r in rs)})
        fits = [c for c in cands if c["latency_ms"] <= budget_ms]
        with_q = all(c["psnr_mu"] is not None for c in fits) and fits
        ranked_by = "psnr_mu" if with_q else "attention_ratio"
        best = max(fits, key=lambda c: (c[ranked_by], -c["latency_ms"])) if fits else None
        answers.append({"group": dict(zip(("device", "runtime", "backend", "precision", "size",
                                           "threads", "variant"), g)),
                        "pick": best, "ranked_by": ranked_by if fits else None,
                        "fastest": min(cands, key=lambda c: c["latency_ms"]),
                        "candidates": sorted(cands, key=lambda c: c["attention_ratio"])})
    return answers


def describe(a: dict, budget_ms: float, statistic: str) -> str:
    g = a["group"]
    where = (f"{g['device']} {g['runtime']}/{g['backend']} {g['precision']} {g['size']} "
             f"{g['threads']} thread(s)")
    if a["pick"] is None:
        f = a["fastest"]
        return (f"{where}: no s-bucket fits {budget_ms:g} ms ({statistic}); the fastest is "
                f"s={f['s']} at {f['latency_ms']:.1f} ms")
    p = a["pick"]
    why = (f"PSNR-mu {p['psnr_mu']:.2f} dB" if a["ranked_by"] == "psnr_mu" else
           f"attention ratio {p['attention_ratio']:.3f} (no quality known for every fitting "
           "bucket: ranked by attention ratio, which quality follows)")
    return f"{where}: s={p['s']} ({p['latency_ms']:.1f} ms {statistic} <= {budget_ms:g} ms; {why})"


@dataclass(frozen=True)
class PickConfig:
    """`device_bench pick`'s settings, one field per flag (`--help` explains each)."""
    budget_ms: float
    records: list[Path]
    device: str | None
    runtime: str | None
    precision: str | None
    size: str | None
    threads: int | None
    statistic: str
    quality: list[Path] | None
    json: bool


def run(cfg: PickConfig) -> int:
    if not cfg.budget_ms > 0:  # NaN too
        raise ValueError(f"--budget-ms must be positive, got {cfg.budget_ms}")
    records = [r for p in cfg.records for r in read_records(p)]
    flt = {"device": cfg.device, "runtime": cfg.runtime, "precision": cfg.precision,
           "size": cfg.size, "threads": cfg.threads}
    records = [r for r in records if all(v is None or r[k] == v for k, v in flt.items())]
    if not records:
        given = {k: v for k, v in flt.items() if v is not None}
        raise ValueError(f"no records match {given} in {[str(p) for p in cfg.records]}")
    quality = load_quality(cfg.quality if cfg.quality is not None else default_quality())
    answers = choose(records, cfg.budget_ms, cfg.statistic, quality)
    if cfg.json:
        print(json.dumps(answers, indent=2))
    else:
        for a in answers:
            print(describe(a, cfg.budget_ms, cfg.statistic))
    return 0 if any(a["pick"] is not None for a in answers) else 1
