"""`python -m device_bench plot RESULTS... --out DIR`: Fig. 1-style curves and the tables.

Writes into DIR, per input size:
  fig1_<size>.png      PSNR-mu against GFLOPs and against measured latency, one line per
                       runtime/precision, points labelled by s, reference records as labelled
                       stars; a third panel puts our curves and the paper's (Table I) on
                       normalised axes (cost / cost at s=0, PSNR gain over s=0): shape only,
                       since the paper's model, data and GPU are not ours.
  latency_<size>.png   latency (median, p10-p90 bars) against attention ratio per runtime,
                       with the linear fit.
  breakdown.png        eager latency per component and s-bucket (Table G), with --breakdown.
  table_i.md, table_g.md
  table_f.md           per device and variant: params, GMACs, attention ratio and latency
                       (eager, XNNPACK fp32) at s=15, held-out PSNR-mu/SSIM-mu, and the
                       classical/reference rows
Quality comes from --quality files (dealthdr/bench/quality.py); fig1 uses one thread count per
device (--threads, default the largest measured), the latency figure all of them.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from dealthdr import paper
from dealthdr.bench.breakdown import ROWS
from dealthdr.bench.quality import load_quality
from dealthdr.bench.schema import is_reference, read_records
from dealthdr.bench.stats import fit_line
from dealthdr.bench.tables import (ATTENTION, FGMA_REST, aggregate, line_label, table_f, table_g,
                                   table_i)

log = logging.getLogger(__name__)
COLOURS = {"torch": "#444444", "onnxruntime": "#1f77b4", "executorch": "#d62728",
           "coreml": "#2ca02c"}
MARKERS = {"fp32": "o", "fp16": "s", "int8": "^"}
STYLES = {"fp32": "-", "fp16": "-.", "int8": "--"}
# Several variants in one figure: same colours per runtime, told apart by width and marker face.
VARIANT_LOOK = {"tiny": (1.2, None), "s": (2.2, "white"), "default": (3.2, "#dddddd")}


def default_quality() -> list[Path]:
    p = Path(__file__).resolve().parents[1] / "weights/eval_heldout.json"
    return [p] if p.is_file() else []


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="Fig. 1 / Table I curves and tables from records",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("records", type=Path, nargs="+", metavar="RESULTS",
                   help="records files (run output, ingested device records)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--quality", type=Path, nargs="*", default=None, metavar="FILE",
                   help="PSNR-mu sources: quantize_report.json, `dealthdr evaluate --json` "
                        "output (default dealthdr/weights/eval_heldout.json)")
    p.add_argument("--breakdown", type=Path, default=None,
                   help="`device_bench breakdown` JSON for breakdown.png and table_g.md")
    p.add_argument("--threads", type=int, default=None,
                   help="thread count drawn in fig1 (default: the largest per device)")
    p.set_defaults(run=run, config=PlotConfig)


def _label_points(ax, xs, ys, labels, colour) -> None:
    for i, (x, y, s) in enumerate(zip(xs, ys, labels)):
        ax.annotate(f"s={s}", (x, y), textcoords="offset points", fontsize=7, color=colour,
                    xytext=(4, -10 if i % 2 == 0 else 5))


def _fig1(agg: dict, refs: list[dict], size: str, threads, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (a_gf, a_ms, a_norm) = plt.subplots(1, 3, figsize=(17, 5.2))
    devices, variants = {k[0] for k in agg}, {k[6] for k in agg}
    drawn_gflops = {}
    any_q = False
    for k, pts in sorted(agg.items(), key=lambda kv: tuple(str(v) for v in kv[0])):
        c, m, ls = COLOURS.get(k[1], "#9467bd"), MARKERS.get(k[3], "o"), STYLES.get(k[3], "-")
        label = line_label(k, len(devices) > 1)
        look = {}
        if len(variants) > 1:
            label = f"{k[6]}: {label}"
            lw, face = VARIANT_LOOK.get(k[6], (1.5, None))
            look = {"lw": lw, "mfc": face} if face else {"lw": lw}
        q = [p for p in pts if p["psnr"] is not None]
        if q:
            any_q = True
            xs, ys = [p["ms"] for p in q], [p["psnr"] for p in q]
            a_ms.plot(xs, ys, ls, marker=m, color=c, label=label, **look)
            _label_points(a_ms, xs, ys, [p["s"] for p in q], c)
            g = [p for p in q if p["gflops"] is not None]
            # Same graph, same FLOPs and quality for every runtime of a precision: one line.
            curve = tuple((p["s"], round(p["gflops"], 3), round(p["psnr"], 3)) for p in g)
            if g and curve not in drawn_gflops:
                drawn_gflops[curve] = k[3]
                name = f"{k[6]} " if len(variants) > 1 else ""
                a_gf.plot([p["gflops"] for p in g], [p["psnr"] for p in g], ls, marker=m,
                          color="black" if k[3] == "fp32" else c, **look,
                          label=name + f"{k[3]}" + (
                              " (every runtime: same graph)" if k[3] == "fp32"
                              else f" ({line_label(k).split(' int8')[0]})"))
                _label_points(a_gf, [p["gflops"] for p in g], [p["psnr"] for p in g],
                              [p["s"] for p in g], "black")
        # Normalised at the flow-only bucket, so it must be among the points with a quality.
        if len(q) > 1 and q[0] is pts[0]:
            a_norm.plot([p["ms"] / q[0]["ms"] for p in q], [p["psnr"] - q[0]["psnr"] for p in q],
                        ls, marker=m, color=c, label=f"ours, time: {label}", **look)
    for gf_curve in list(drawn_gflops)[:1]:
        g0 = gf_curve[0]
        if g0[0] != "0" or len(gf_curve) < 2:
            break
        xs = [v[1] / g0[1] for v in gf_curve]
        a_norm.plot(xs, [v[2] - g0[2] for v in gf_curve], ":", marker="o", color="black",
                    mfc="white", label="ours, GFLOPs")
    for column, style in (("gflops", "P-"), ("ms", "X-")):
        xs, ys, labels = paper.normalised_curve(column)
        a_norm.plot(xs, ys, style, color="#ff7f0e" if column == "ms" else "#8c564b",
                    ms=5, lw=1.2, alpha=0.85,
                    label=f"paper Table I, {'time' if column == 'ms' else 'FLOPs'}")
        for x, y, s in zip(xs, ys, labels):
            if s in ("0", "1", "15", "100", "inf"):
                a_norm.annotate(f"s={s}", (x, y), textcoords="offset points", xytext=(3, -10),
                                fontsize=7, color="#8c564b")
    for r in refs:
        a_ms.plot(r["latency_ms_median"], r["psnr_mu"], "*", ms=13, color="#9467bd")
        a_ms.annotate(f"{r['variant']} ({r['device']}, {r['runtime']})",
                      (r["latency_ms_median"], r["psnr_mu"]), textcoords="offset points",
                      xytext=(6, 2), fontsize=8, color="#9467bd")
    if not any_q:
        for ax in (a_gf, a_ms):
            ax.text(0.5, 0.5, "no PSNR-mu source covers these buckets\n(pass --quality)",
                    ha="center", va="center", transform=ax.transAxes)
    shown = sorted({k[5] for k in agg}, key=lambda v: (v is None, v or 0))
    t = ", ".join("n/a" if v is None else str(v) for v in shown)
    # Name the line as well as the buckets: int8 records have no quality without a quantize
    # report even where the fp32 line is complete.
    missing = {}
    for k, pts in agg.items():
        lost = [p["s"] for p in pts if p["psnr"] is None]
        if lost:
            missing.setdefault(line_label(k, len(devices) > 1), set()).update(lost)
    note = ("".join(f"\nnot drawn, no PSNR-mu source: {name}, s = "
                    f"{', '.join(sorted(v, key=float))}" for name, v in sorted(missing.items()))
            if missing and any_q else "")
    a_gf.set(xlabel="GFLOPs per frame (profiler, everything counted)" + note,
             ylabel="PSNR-mu (dB, held-out synthetic)", title=f"Quality vs compute, {size}")
    a_ms.set(xlabel="latency per frame, median (ms)" + note, ylabel="PSNR-mu (dB)",
             title=f"Quality vs measured latency, {size}, threads: {t}")
    a_norm.set(xlabel="cost relative to s=0 (flow only)", ylabel="PSNR gain over s=0 (dB)",
               title="Shape beside the paper (normalised axes)")
    for ax in (a_gf, a_ms, a_norm):
        ax.grid(alpha=0.3)
        ax.margins(0.08)
        if ax.lines:  # "best": with several variants a fixed corner hides a curve
            ax.legend(fontsize=7, loc="best", framealpha=0.7)
    fig.text(0.5, 0.005, f"Orange/brown: {paper.SOURCE}; their PSNR is on their test set, "
             "ours on held-out synthetic clips: compare the shape, not the values.",
             ha="center", fontsize=8, style="italic")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _latency(agg: dict, size: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    threads = sorted({k[5] for k in agg}, key=lambda t: (t is None, t or 0))
    fig, axes = plt.subplots(1, len(threads), figsize=(8 * len(threads), 5.5), sharey=True,
                             squeeze=False)
    several_devices = len({k[0] for k in agg}) > 1
    for ax, t in zip(axes[0], threads):
        for k, pts in sorted(agg.items(), key=lambda kv: tuple(str(v) for v in kv[0])):
            if k[5] != t:
                continue
            c, m = COLOURS.get(k[1], "#9467bd"), MARKERS.get(k[3], "o")
            xs, ys = [p["ratio"] for p in pts], [p["ms"] for p in pts]
            err = [[p["ms"] - p["p10"] for p in pts], [p["p90"] - p["ms"] for p in pts]]
            ax.errorbar(xs, ys, yerr=err, fmt=m, color=c, capsize=3, ms=6)
            label = line_label(k, several_devices)
            if len(pts) > 1:
                fit = fit_line(xs, ys)
                label += (f": {fit['intercept']:.0f} + {fit['slope']:.0f}·R ms, max residual "
                          f"{100 * fit['max_rel_residual']:.1f}%")
                ax.plot([0, 1], [fit["intercept"], fit["intercept"] + fit["slope"]],
                        STYLES.get(k[3], "-"), color=c, lw=1.2, alpha=0.8, label=label)
            for p in pts:
                if p is pts[-1] or p["ratio"] > 0.05:
                    ax.annotate(f"s={p['s']}", (p["ratio"], p["ms"]), fontsize=7, color=c,
                                textcoords="offset points", xytext=(5, -3))
        ax.set(xlabel="attention ratio R of the bucket (share of FGMA tiles attended)",
               title=f"{size}, {'?' if t is None else t} thread(s)")
        ax.set_xlim(-0.03, 1.1)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel("latency per frame (ms): median, bars p10-p90")
    fig.suptitle("Latency against the s-bucket's attention budget, with the linear fit "
                 "(solid: fp32, dashed: int8)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _breakdown(doc: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    buckets = doc["buckets"]
    parts = [r for r in ROWS if r != "FGMA"] + [FGMA_REST, ATTENTION,
                                                "other (inputs, padding, glue)"]
    fig, ax = plt.subplots(figsize=(11, 1.6 + 0.7 * len(buckets)))
    cmap = plt.get_cmap("tab10")
    for i, b in enumerate(buckets):
        left = 0.0
        for j, part in enumerate(parts):
            ms = b["rows"][part]["ms"]
            ax.barh(i, ms, left=left, color=cmap(j), label=part if i == 0 else None)
            if ms / b["total_ms"] > 0.06:
                ax.text(left + ms / 2, i, f"{ms:.0f}", ha="center", va="center", fontsize=7,
                        color="white")
            left += ms
    ax.set_yticks(range(len(buckets)), [f"s={b['s']}" for b in buckets])
    ax.set(xlabel="eager latency (ms)", title=f"Where the time goes (Table G style), "
           f"{buckets[0]['size']}, {buckets[0]['threads']} thread(s)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _params(records: list[dict]) -> dict[str, float]:
    """Millions of parameters per variant of the records, counted on meta tensors (no memory,
    no weights needed)."""
    import torch

    from dealthdr.model import VARIANTS, create_model

    out = {}
    for v in {r["variant"] for r in records if r["variant"] in VARIANTS}:
        with torch.device("meta"):
            out[v] = sum(p.numel() for p in create_model(v).parameters()) / 1e6
    return out


def draw(record_files: list[Path], out: Path, quality_files, breakdown_file=None,
         threads: int | None = None) -> list[str]:
    """Write every figure and table; return one line per file written."""
    import json

    import matplotlib
    matplotlib.use("Agg")


    records = [r for p in record_files for r in read_records(p)]
    if not records:
        raise ValueError(f"no records in {[str(p) for p in record_files]}")
    quality = load_quality(quality_files)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    refs = [r for r in records if is_reference(r) and r.get("psnr_mu") is not None]
    for size in sorted({r["size"] for r in records if not is_reference(r)}):
        mine = [r for r in records if r["size"] == size and not is_reference(r)]
        agg = aggregate(mine, quality)
        best = {}
        for k in agg:
            if k[5] is not None:
                best[k[0]] = max(best.get(k[0], 0), k[5])
        pick = {k: v for k, v in agg.items()
                if k[5] is None or k[5] == (threads if threads is not None else best[k[0]])}
        if not pick:
            raise ValueError(f"no records with --threads {threads} at {size}")
        _fig1(pick, [r for r in refs if r["size"] == size], size, threads, out / f"fig1_{size}.png")
        _latency(agg, size, out / f"latency_{size}.png")
        written += [str(out / f"fig1_{size}.png"), str(out / f"latency_{size}.png")]
    (out / "table_i.md").write_text(table_i(records, quality))
    (out / "table_f.md").write_text(table_f(records, quality, _params(records)))
    written += [str(out / "table_i.md"), str(out / "table_f.md")]
    if breakdown_file is not None:
        doc = json.loads(Path(breakdown_file).read_text())
        (out / "table_g.md").write_text(table_g(doc))
        written.append(str(out / "table_g.md"))
        if doc.get("buckets"):
            _breakdown(doc, out / "breakdown.png")
            written.append(str(out / "breakdown.png"))
    return [f"wrote {w}" for w in written]


@dataclass(frozen=True)
class PlotConfig:
    """`device_bench plot`'s settings, one field per flag (`--help` explains each)."""
    records: list[Path]
    out: Path
    quality: list[Path] | None
    breakdown: Path | None
    threads: int | None


def run(cfg: PlotConfig) -> int:
    quality = cfg.quality if cfg.quality is not None else default_quality()
    for line in draw(cfg.records, cfg.out, quality, cfg.breakdown, cfg.threads):
        print(line)
    return 0
