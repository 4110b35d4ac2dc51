"""The noise calibration's checks, written next to this file.

1. Synthetic DNGs with known noise at three ISOs, calibrated back by calib/noise.py (burst and
   single-frame): synthetic_dng_recovery.json (+ the calibration's plots).
2. `dealthdr synth --noise-profile CAMERA` (a darktable camera): the RAW noise of each clip,
   measured against its noise-free twin (same seed and index, noise_scale 0), vs the variance
   the profile predicts: synth_profile_noise.json / .png.

    python calib/results/acceptance.py --camera "Sony DSC-RX100M7" --darktable PATH
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from dealthdr.calib.noise import clip_raw_noise, main as calib_main, write_synthetic_raws

HERE = Path(__file__).resolve().parent
TRUE = {100: (3.23e-4, 2.67e-6), 800: (2.584e-3, 4.0e-5), 3200: (1.0336e-2, 2.4e-4)}


def dng_recovery(tmp: Path) -> dict:
    rows = {}
    for frames, name in ((2, "burst"), (1, "single")):
        raw = tmp / name
        write_synthetic_raws(raw, TRUE, frames=frames, size=(768, 1024), black=2048, seed=frames)
        out = HERE / f"synthetic_dng_{name}.json"
        assert calib_main(["--raw", str(raw), "--out", str(out), "--camera",
                           f"synthetic DNGs ({name})"]) == 0
        prof = json.loads(out.read_text())
        rows[name] = [{"iso": e["iso"], "true_shot": TRUE[int(e["iso"])][0],
                       "est_shot": e["lambda_shot"], "true_read": TRUE[int(e["iso"])][1],
                       "est_read": e["lambda_read"],
                       "per_channel": {c: v for c, v in e["channels"].items()}}
                      for e in prof["isos"]]
        out.unlink()  # the table keeps the numbers; the plot stays
    return rows


def synth_noise(tmp: Path, camera: str, darktable: str, clips: int) -> dict:
    from dealthdr.data.clip import read_clip
    from dealthdr.data.noise_profile import resolve_profile
    from dealthdr.data.synth import BUNDLED_HDRI, SynthConfig, load_panoramas, synth_clip
    from dealthdr.data.degrade import DegradeConfig

    out = tmp / "clips"
    cmd = [sys.executable, "-m", "dealthdr", "synth", "--out", str(out), "--clips", str(clips),
           "--size", "192x256", "--frames", "6", "--subframes", "16", "--seed", "11",
           "--noise-profile", camera, "--darktable-profiles", darktable]
    subprocess.run(cmd, check=True)
    prof = resolve_profile(camera, darktable)
    cfg = SynthConfig(frames=6, height=192, width=256, degrade=DegradeConfig(subframes=16))
    src = load_panoramas(BUNDLED_HDRI, "train", cfg)
    clean_cfg = replace(cfg, degrade=replace(cfg.degrade, noise_scale=0.0))
    quant = 2 * (1 / 1023) ** 2 / 12
    results = []
    for i in range(clips):
        meta = json.loads((out / f"clip_{i:06d}" / "meta.json").read_text())
        ldr = read_clip(out / f"clip_{i:06d}").ldr  # the files the CLI wrote
        clean = synth_clip(clean_cfg, src, 11, i, prof)
        assert clean.meta["noise"] == meta["noise"]
        x, d = clip_raw_noise(np.asarray(ldr), clean.ldr, meta)
        edges = np.quantile(x[x > 0.003], np.linspace(0, 1, 17))
        n = meta["noise"]
        # The darktable entry nearest the drawn ISO, converted: what the sensor measured there.
        near = min(prof.entries, key=lambda e: abs(np.log(e.iso / n["iso"])))
        bins = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            b = (x >= lo) & (x < hi)
            xm = float(x[b].mean())
            bins.append({"x": xm, "measured_var": float(d[b].var()), "n": int(b.sum()),
                         "predicted_var": n["lambda_read"] + n["lambda_shot"] * xm + quant})
        mid = [b for b in bins if 0.05 <= b["x"] <= 0.5]
        ratio = [b["measured_var"] / b["predicted_var"] for b in mid]
        results.append({"clip": i, "iso": n["iso"], "lambda_shot": n["lambda_shot"],
                        "lambda_read": n["lambda_read"], "quantisation_var": quant,
                        "nearest_darktable_iso": near.iso,
                        "nearest_darktable_lambda_shot": near.lambda_shot,
                        "nearest_darktable_lambda_read": near.lambda_read, "bins": bins,
                        "ratio_0.05_0.5": {"mean": float(np.mean(ratio)),
                                           "min": float(np.min(ratio)),
                                           "max": float(np.max(ratio))}})
    return {"camera": prof.camera, "command": " ".join(cmd[1:]), "clips": results,
            "profile_iso_range": list(prof.iso_range), "fit": prof.summary()["fit"]}


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    clips = res["clips"]
    fig, axes = plt.subplots(1, len(clips), figsize=(4.2 * len(clips), 3.6), squeeze=False)
    for ax, c in zip(axes[0], clips):
        x = np.array([b["x"] for b in c["bins"]])
        ax.loglog(x, [b["measured_var"] for b in c["bins"]], "o", ms=4,
                  label="measured (synth output)")
        g = np.geomspace(x.min(), x.max(), 50)
        ax.loglog(g, c["lambda_read"] + c["lambda_shot"] * g + c["quantisation_var"], "k-",
                  lw=1, label="profile fit at drawn ISO (+10-bit quant.)")
        ax.loglog(g, c["nearest_darktable_lambda_read"] + c["nearest_darktable_lambda_shot"] * g,
                  "--", color="tab:orange", lw=1,
                  label=f"darktable entry ISO {c['nearest_darktable_iso']:g}")
        ax.axvspan(x.min(), 0.05, color="0.9", zorder=0)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set(title=f"clip {c['clip']}: ISO {c['iso']:.0f}", xlabel="clean RAW X",
               ylabel="noise variance")
        ax.legend(fontsize=7)
    fig.suptitle(f"dealthdr synth --noise-profile '{res['camera']}': RAW noise vs brightness "
                 "(grey: X < 0.05, noisy values clip at 0)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--camera", default="Sony DSC-RX100M7", help="darktable camera")
    p.add_argument("--darktable", default="/usr/share/darktable/noiseprofiles.json",
                   help="darktable noiseprofiles.json")
    p.add_argument("--clips", type=int, default=4, help="clips to synthesise (default 4)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        table = dng_recovery(Path(tmp))
        (HERE / "synthetic_dng_recovery.json").write_text(json.dumps(table, indent=1) + "\n")
        res = synth_noise(Path(tmp), args.camera, args.darktable, args.clips)
    (HERE / "synth_profile_noise.json").write_text(json.dumps(res, indent=1) + "\n")
    plot(res, HERE / "synth_profile_noise.png")
    for name, rows in table.items():
        for r in rows:
            print(f"{name:6s} ISO {r['iso']:5g}  shot {r['est_shot']:.4g} / {r['true_shot']:.4g} "
                  f"= {r['est_shot'] / r['true_shot']:.3f}   read {r['est_read']:.4g} / "
                  f"{r['true_read']:.4g} = {r['est_read'] / r['true_read']:.3f}")
    for c in res["clips"]:
        print(f"clip {c['clip']} ISO {c['iso']:.0f}: measured / predicted variance (X 0.05-0.5) "
              f"{c['ratio_0.05_0.5']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
