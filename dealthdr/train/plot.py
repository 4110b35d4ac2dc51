"""Loss curve PNG from a training log (JSON lines)."""
from __future__ import annotations

import json
from pathlib import Path

from ..fileio import atomic_write_bytes


def plot_loss_curve(log_path: Path, png: Path) -> None:
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(ln) for ln in log_path.read_text().splitlines() if ln.strip()]
    phases = [p for p in ("spynet", "joint", "adapt") if any(r["phase"] == p for r in recs)]
    if not phases:
        return
    fig, axes = plt.subplots(1, len(phases), figsize=(6 * len(phases), 4), squeeze=False)
    labels = {"spynet": "SpyNet pre-training: flow EPE (px)",
              "joint": "joint training: L1 (+ VGG) in the mu-law domain",
              "adapt": "self-supervised adaptation: L_time + beta L_ema (mu-law L1)"}
    for ax, phase in zip(axes[0], phases):
        steps = [r["step"] for r in recs if r["phase"] == phase]
        loss = [r["loss"] for r in recs if r["phase"] == phase]
        ax.plot(steps, loss, alpha=0.3, lw=0.8, label="per step")
        smooth, acc = [], None
        for v in loss:
            acc = v if acc is None else 0.95 * acc + 0.05 * v
            smooth.append(acc)
        ax.plot(steps, smooth, lw=1.5, label="EMA 0.95")
        title = labels[phase]
        if phase == "joint" and any("epe" in r for r in recs if r["phase"] == phase):
            # the flow-supervision term is part of the loss: show the image term on its own
            l1 = [r.get("l1", r["loss"]) for r in recs if r["phase"] == phase]
            smooth, acc = [], None
            for v in l1:
                acc = v if acc is None else 0.95 * acc + 0.05 * v
                smooth.append(acc)
            ax.plot(steps, smooth, lw=1.5, label="L1 term alone, EMA 0.95")
            title = "joint training: L1 (+ VGG) + flow weight x SpyNet EPE"
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(png, buf.getvalue())
