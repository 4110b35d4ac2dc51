"""Markdown tables: Table I-style (quality and cost per runtime and s-bucket) and Table G-style
(eager latency per component), plus the per-s aggregation the plots share."""
from __future__ import annotations

from collections import defaultdict

from dealthdr import paper
from dealthdr.bench.schema import is_reference

# Table G's sub-rows of FGMA (the component rows are `breakdown.ROWS`, from the profiler, which
# imports the network: the tables stay light for `summary` and `pick`).
ATTENTION = "FGMA attention"
FGMA_REST = "FGMA warp + mask + selection"


def line_key(r: dict) -> tuple:
    """One curve: device, runtime, backend, precision, size, threads, variant."""
    return (r["device"], r["runtime"], r["backend"], r["precision"], r["size"], r["threads"],
            r["variant"])


def runtime_name(runtime: str, backend: str) -> str:
    return {"torch": "torch eager", "onnxruntime": "onnxruntime",
            "executorch": f"ExecuTorch {backend}"}.get(runtime, f"{runtime} {backend}")


def line_label(k: tuple, with_device: bool = False) -> str:
    device, runtime, backend, precision, size, threads, _ = k
    name = runtime_name(runtime, backend)
    t = "" if threads is None else f", {threads}T"
    return f"{device}: {name} {precision}{t}" if with_device else f"{name} {precision}{t}"


def aggregate(records: list[dict], quality) -> dict[tuple, list[dict]]:
    """Per curve, per s (both centres averaged): ratio, gflops, latency, PSNR-mu, x eager."""
    ours = [r for r in records if not is_reference(r)]
    eager = {(r["device"], r["size"], r["threads"], r["variant"], r["s"], r.get("centre")):
             r["latency_ms_median"] for r in ours if r["runtime"] == "torch"}
    lines = defaultdict(lambda: defaultdict(list))
    for r in ours:
        lines[line_key(r)][r["s"]].append(r)
    out = {}
    for k, by_s in lines.items():
        pts = []
        for s, rs in by_s.items():
            n = len(rs)
            q = [quality.of(r) for r in rs]
            speed = [eager[(r["device"], r["size"], r["threads"], r["variant"], r["s"],
                            r.get("centre"))] / r["latency_ms_median"] for r in rs
                     if (r["device"], r["size"], r["threads"], r["variant"], r["s"],
                         r.get("centre")) in eager]
            gf = [r["gflops"] for r in rs if r["gflops"] is not None]
            pts.append({
                "s": s, "ratio": sum(r["attention_ratio"] for r in rs) / n,
                "gflops": sum(gf) / len(gf) if gf else None,
                "ms": sum(r["latency_ms_median"] for r in rs) / n,
                "p10": sum(r["latency_ms_p10"] for r in rs) / n,
                "p90": sum(r["latency_ms_p90"] for r in rs) / n,
                "load_ms": sum(r["load_ms"] for r in rs) / n,
                "peak_mb": max((r["peak_mem_mb"] for r in rs if r["peak_mem_mb"] is not None),
                               default=None),
                "psnr": sum(v for v, _ in q) / n if all(v is not None for v, _ in q) else None,
                "psnr_source": sorted({src for _, src in q if src}),
                "vs_eager": sum(speed) / len(speed) if speed else None, "centres": n})
        out[k] = sorted(pts, key=lambda p: (p["ratio"], float(p["s"])))
    return out


def _f(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def table_i(records: list[dict], quality) -> str:
    agg = aggregate(records, quality)
    out = ["| device | runtime | precision | threads | size | s | R | PSNR-mu dB | GFLOPs | "
           "ms median | ms p10-p90 | x eager | load ms | peak MB |",
           "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for k in sorted(agg, key=lambda k: tuple(str(v) for v in k)):
        for p in agg[k]:
            out.append(f"| {k[0]} | {runtime_name(k[1], k[2])} | {k[3]} | "
                       f"{_f(k[5], 'd')} | {k[4]} | {p['s']} | {p['ratio']:.3f} | "
                       f"{_f(p['psnr'], '.2f')} | {_f(p['gflops'], '.2f')} | {p['ms']:.1f} | "
                       f"{p['p10']:.1f}-{p['p90']:.1f} | {_f(p['vs_eager'], '.2f')} | "
                       f"{p['load_ms']:.0f} | {_f(p['peak_mb'], '.0f')} |")
    refs = [r for r in records if is_reference(r)]
    if refs:
        out += ["", "Reference records (other models):", "",
                "| model | device | runtime | precision | size | ms median | PSNR-mu dB |",
                "|---|---|---|---|---|---:|---:|"]
        for r in refs:
            out.append(f"| {r['variant']} | {r['device']} | {r['runtime']} {r['backend']} | "
                       f"{r['precision']} | {r['size']} | {r['latency_ms_median']:.1f} | "
                       f"{_f(r.get('psnr_mu'), '.2f')} |")
    first, last = paper.TABLE_I[0], paper.TABLE_I[-1]
    out += ["", f"Paper, Table I (default model, RTX A6000, 256x256): s=0 {first[4]} GFLOPs "
            f"{first[5]} ms {first[1]} dB; s=inf {last[4]} GFLOPs {last[5]} ms {last[1]} dB "
            f"(x{last[4] / first[4]:.2f} FLOPs, x{last[5] / first[5]:.2f} time, "
            f"+{last[1] - first[1]:.2f} dB). PSNR sources: "
            + "; ".join(sorted({s for pts in agg.values() for p in pts
                                for s in p["psnr_source"]}) or ["none given"]) + "."]
    return "\n".join(out) + "\n"


def table_f(records: list[dict], quality, params: dict[str, float], s: str = "15") -> str:
    """Table F-style: per device and variant, size and cost at one s beside held-out quality.

    Latency is the mean of both centres' medians per runtime (one thread count: the largest
    measured on that device); '(x)' divides by the default variant's figure of the same column
    on the same device."""
    ours = [r for r in records if not is_reference(r) and r["s"] == s and r["precision"] == "fp32"]
    cols = [("torch", "eager-cpu", "eager ms"), ("executorch", "xnnpack", "XNNPACK fp32 ms")]
    rows = {}
    keys = sorted({(r["device"], r["variant"]) for r in ours},
                  key=lambda k: (k[0], params.get(k[1], 0)))
    for device, v in keys:
        mine = [r for r in ours if (r["device"], r["variant"]) == (device, v)]
        threads = max((r["threads"] for r in mine if r["threads"] is not None), default=None)
        mine = [r for r in mine if r["threads"] == threads]
        gf = [r["gflops"] for r in mine if r["gflops"] is not None]
        row = {"params": params.get(v), "gmacs": sum(gf) / len(gf) / 2 if gf else None,
               "ratio": sum(r["attention_ratio"] for r in mine) / len(mine)}
        for runtime, backend, name in cols:
            ms = [r["latency_ms_median"] for r in mine
                  if (r["runtime"], r["backend"]) == (runtime, backend)]
            row[name] = sum(ms) / len(ms) if ms else None
        ev = quality.row(v, "dealthdr", s)
        row.update(psnr=ev.get("psnr_mu"), ssim=ev.get("ssim_mu"))
        rows[(device, v)] = row

    def rel(k, key):
        a, b = rows[k].get(key), rows.get((k[0], "default"), {}).get(key)
        return "" if a is None or not b else f" ({a / b:.2f}x)"

    out = [f"| device | variant | params (M) | GMACs s={s} | R | "
           + " | ".join(c[2] for c in cols) + f" | PSNR-mu s={s} | SSIM-mu s={s} |",
           "|---|---|" + "---:|" * (len(cols) + 5)]
    for k, r in rows.items():
        out.append(f"| {k[0]} | {k[1]} | {_f(r['params'], '.2f')} | "
                   f"{_f(r['gmacs'], '.1f')}{rel(k, 'gmacs')} | {r['ratio']:.3f} | "
                   + " | ".join(f"{_f(r[c[2]], '.1f')}{rel(k, c[2])}" for c in cols)
                   + f" | {_f(r['psnr'], '.2f')} | {_f(r['ssim'], '.4f')} |")
    for m in ("classical", "reference"):
        r = quality.row(None, m, None)
        if not r:
            continue
        out.append(f"| - | {m} (no network) | - | - | - | - | - | "
                   f"{_f(r.get('psnr_mu'), '.2f')} | {_f(r.get('ssim_mu'), '.4f')} |")
    out += ["", "(x) = the figure relative to the default variant's. Quality: held-out synthetic "
            "clips, from the --quality evaluation files; a variant without an evaluation row "
            "shows n/a. Paper, Table F: DeAltHDR-S at about 0.8x the default's FLOPs."]
    return "\n".join(out) + "\n"


def table_g(doc: dict) -> str:
    """Component x s-bucket: eager ms and share; GFLOPs at the last bucket; the paper's share."""
    buckets = doc.get("buckets", [])
    if not buckets:
        return "No component breakdown (no eager buckets were measured).\n"
    last = buckets[-1]
    head = ("| component | " + " | ".join(f"s={b['s']} ms (share)" for b in buckets)
            + f" | GFLOPs s={last['s']} | paper s=15 share |")
    out = [f"Eager per-component latency, {last['size']}, {last['threads']} thread(s), "
           f"{last['centre']}-centred window (hooks on the top-level modules; paper Table G: "
           "RTX A6000, default model)", "", head,
           "|---|" + "---:|" * (len(buckets) + 2)]
    paper_share = {"encoders": "encoders", "FGMA": "FGMA (incl. flow)",
                   "flow (SpyNet)": "flow (SpyNet)", ATTENTION: "FGMA attention",
                   FGMA_REST: "FGMA mask", "router": "router", "decoder": "decoder",
                   "other (inputs, padding, glue)": "input processing"}
    order = [r for r in last["rows"] if r not in (ATTENTION, FGMA_REST)]
    order[order.index("FGMA") + 1:order.index("FGMA") + 1] = [ATTENTION, FGMA_REST]
    for row in order:
        name = f"&nbsp;&nbsp;{row}" if row in (ATTENTION, FGMA_REST) else row
        cells = []
        for b in buckets:
            r = b["rows"].get(row)
            cells.append("-" if r is None else f"{r['ms']:.1f} ({100 * r['share']:.0f}%)")
        gf = last["rows"][row]["gflops"]
        p = paper.TABLE_G.get(paper_share.get(row, ""), None)
        out.append(f"| {name} | " + " | ".join(cells) + f" | {_f(gf, '.2f')} | "
                   f"{'-' if p is None else f'{100 * p[1]:.1f}%'} |")
    out.append("| total | " + " | ".join(f"{b['total_ms']:.1f}" for b in buckets)
               + f" | {last['total_gflops']:.2f} | 100% (152 ms) |")
    out += ["", "FGMA's row includes its attention and warp/mask sub-rows. The paper counts "
            "SpyNet inside FGMA alignment and runs it at full resolution; ours runs once at 1/4 "
            "resolution for all levels. Paper 'input processing' is compared with our 'other'."]
    return "\n".join(out) + "\n"
