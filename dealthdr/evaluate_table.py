"""The markdown table of `dealthdr evaluate`'s records (the `.md` beside its JSON)."""
from __future__ import annotations

import math


def _fmt(v: float | None, digits: int) -> str:
    if v is None:
        return "-"
    if math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}"


def _pair(a: float | None, b: float | None) -> str:
    return "-" if a is None and b is None else f"{_fmt(a, 3)} / {_fmt(b, 3)}"


def markdown_table(records: list[dict]) -> str:
    """The records as a markdown table (higher is better except TWE, tOF, ms)."""
    head = ("| method | variant | s | R | R short / long | tiles | PSNR-μ ↑ | SSIM-μ ↑ "
            "| PSNR-L ↑ | FovVideoVDP (JOD) ↑ | TWE ↓ | tOF ↓ | PSNR-μ hard ↑ | hard share "
            "| frames | clips | ms/frame |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    # the checkpoint is named only where two rows of one variant would otherwise look alike
    seen: dict[str, set] = {}
    for r in records:
        if r.get("variant"):
            seen.setdefault(r["variant"], set()).add(r.get("checkpoint"))
    for r in records:
        s = "-" if r["s"] is None else r["s"]
        variant = r.get("variant") or "-"
        if len(seen.get(r.get("variant"), ())) > 1:
            variant += f" ({r['checkpoint']})"
        lines.append(
            f"| {r['method']} | {variant} | {s} | {_fmt(r.get('attention_ratio'), 3)} | "
            f"{_pair(r.get('attention_ratio_short'), r.get('attention_ratio_long'))} | "
            f"{_fmt(r.get('tile_ratio'), 3)} | {_fmt(r['psnr_mu'], 2)} | "
            f"{_fmt(r['ssim_mu'], 4)} | "
            f"{_fmt(r['psnr_linear'], 2)} | {_fmt(r['fvvdp'], 3)} | {_fmt(r['twe'], 5)} | "
            f"{_fmt(r['tof'], 4)} | {_fmt(r['psnr_mu_hard'], 2)} | "
            f"{_fmt(r['hard_share'], 3)} | {r['frames']} | {r['clips']} | "
            f"{_fmt(r['ms_per_frame'], 1)} |")
    lines += ["", "R: the share of positions FGMA attended (the attention ratio), over all "
              "windows and over the short- and the long-centred ones; tiles: the share of its "
              "tiles that held one, what attention costs."]
    return "\n".join(lines)
