"""What a set of records says: per runtime, latency against attention ratio (a linear fit and its
residual, and whether latency rises with the bucket's budget) and speed relative to torch eager.

"rises" is the fit's slope being positive. "mono" says whether every bucket's median is above
the previous one's: buckets that run the same tiles (s=15 and s=100 where both take every tile
of a level) cost the same, and their order is then the noise of the machine.

    python -m device_bench summary device_bench/results/host_256.jsonl [--json OUT]

A group is one (device, size, threads, runtime, backend, precision, variant). Both centre
graphs of a bucket are points of the fit; per s the two centres are averaged (an alternating
stream runs them in turn). "x eager" is eager's median over the runtime's median on the same
bucket, centre, size and thread count: > 1 is faster than eager.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from dealthdr.bench.schema import is_reference, read_records
from dealthdr.bench.stats import fit_line, geometric_mean
from dealthdr.fileio import atomic_write_bytes

INT8_TARGET = 2.0  # the project's goal: int8 at least 2x faster than eager fp32


def add_parser(sub) -> None:
    p = sub.add_parser("summary", help="fit and speed-ups of a records file",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("records", type=Path, nargs="+", help="JSON-lines record files")
    p.add_argument("--json", type=Path, default=None, help="also write the summary as JSON")
    p.set_defaults(run=run, config=SummaryConfig)


def group_key(r: dict) -> tuple:
    return (r["device"], r["size"], r["threads"], r["runtime"], r["backend"], r["precision"],
            r["variant"])


def _pair_key(r: dict) -> tuple:
    return (r["device"], r["size"], r["threads"], r["variant"], r["s"], r.get("centre"),
            tuple(r["bucket_k"]))


def summarise(records: list[dict]) -> dict:
    ours = [r for r in records if not is_reference(r)]
    eager = {_pair_key(r): r for r in ours if r["runtime"] == "torch"}
    groups = defaultdict(list)
    for r in ours:
        groups[group_key(r)].append(r)
    out = []
    for gk, rs in sorted(groups.items(), key=lambda kv: tuple(str(v) for v in kv[0])):
        by_s = defaultdict(list)
        for r in rs:
            by_s[r["s"]].append(r)
        per_s = []
        for s, members in by_s.items():
            speed = [eager[_pair_key(m)]["latency_ms_median"] / m["latency_ms_median"]
                     for m in members if _pair_key(m) in eager]
            per_s.append({
                "s": s, "attention_ratio": sum(m["attention_ratio"] for m in members)
                / len(members),
                "median_ms": sum(m["latency_ms_median"] for m in members) / len(members),
                "p90_ms": max(m["latency_ms_p90"] for m in members),
                "centres": sorted(str(m.get("centre")) for m in members),
                "vs_eager": geometric_mean(speed) if speed else None})
        per_s.sort(key=lambda p: (p["attention_ratio"], float(p["s"])))
        medians = [p["median_ms"] for p in per_s]
        fit = fit_line([r["attention_ratio"] for r in rs], [r["latency_ms_median"] for r in rs])
        speeds = [p["vs_eager"] for p in per_s if p["vs_eager"] is not None]
        out.append({
            **dict(zip(("device", "size", "threads", "runtime", "backend", "precision",
                        "variant"), gk)),
            "per_s": per_s, "fit": fit,
            "rises": len(per_s) > 1 and fit["slope"] is not None and fit["slope"] > 0,
            "monotone": len(per_s) > 1 and all(b > a for a, b in zip(medians, medians[1:])),
            "vs_eager_geomean": geometric_mean(speeds) if speeds else None})
    int8 = [g for g in out if g["precision"] == "int8" and g["vs_eager_geomean"] is not None]
    return {"groups": out, "int8_target_vs_eager": INT8_TARGET,
            "int8_meets_target": {_name(g): g["vs_eager_geomean"] >= INT8_TARGET for g in int8}}


def _name(g: dict) -> str:
    return f"{g['variant']} {g['runtime']}/{g['backend']} {g['size']} t{g['threads']}"


def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def text(report: dict) -> str:
    lines = ["latency against attention ratio R (median ms; fit over both centres' graphs)",
             f"{'variant':8} {'runtime/backend':24} {'prec':5} {'size':9} {'thr':>3}  "
             f"{'ms per s-bucket (R)':44} {'a ms':>8} {'b ms/R':>8} {'r2':>6} {'max res':>8} "
             f"{'rises':>5} {'mono':>4} {'x eager':>7}"]
    for g in report["groups"]:
        cells = " ".join(f"s{p['s']}:{p['median_ms']:.4g}" for p in g["per_s"])
        fit = g["fit"]
        resid = fit["max_rel_residual"]
        lines.append(
            f"{g['variant']:8} {g['runtime'] + '/' + g['backend']:24} {g['precision']:5} "
            f"{g['size']:9} "
            f"{_fmt(g['threads'], 'd'):>3}  {cells:44} {fit['intercept']:8.4g} "
            f"{_fmt(fit['slope'], '8.4g'):>8} {_fmt(fit['r2'], '6.3f'):>6} "
            f"{_fmt(None if resid is None else 100 * resid, '7.1f'):>7}% "
            f"{'yes' if g['rises'] else 'NO':>5} {'yes' if g['monotone'] else 'no':>4} "
            f"{_fmt(g['vs_eager_geomean'], '6.2f'):>6}x")
    # a bucket's R depends on the weights (the flow decides what the mask selects): per variant
    ratios = defaultdict(dict)
    for g in report["groups"]:
        for p in g["per_s"]:
            ratios[g["variant"]][p["s"]] = p["attention_ratio"]
    for variant, by_s in ratios.items():
        lines.append(f"R per s-bucket, {variant}: "
                     + ", ".join(f"s{s}={r:.4f}" for s, r in by_s.items()))
    lines.append("a + b*R: latency at R=0 and per unit attention ratio; rises: b > 0; mono: every "
                 "bucket slower than the one before; max res: largest |residual| / mean "
                 "latency; x eager: geometric mean over s of eager/runtime")
    for name, ok in report["int8_meets_target"].items():
        g = next(x for x in report["groups"] if x["precision"] == "int8" and _name(x) == name)
        lines.append(f"int8 target (>= {report['int8_target_vs_eager']:.0f}x eager fp32) "
                     f"{name}: {g['vs_eager_geomean']:.2f}x -> {'met' if ok else 'NOT met'}")
    return "\n".join(lines)


def write_json(path: Path, report: dict) -> None:
    atomic_write_bytes(Path(path), (json.dumps(report, indent=2) + "\n").encode())


@dataclass(frozen=True)
class SummaryConfig:
    """`device_bench summary`'s settings, one field per flag (`--help` explains each)."""
    records: list[Path]
    json: Path | None


def run(cfg: SummaryConfig) -> int:
    records = [r for p in cfg.records for r in read_records(p)]
    report = summarise(records)
    print(text(report))
    if cfg.json:
        write_json(cfg.json, report)
    return 0
