"""RAW noise calibration: lambda_shot and lambda_read per ISO (and per CFA colour) from RAW files,
the Eq. B fit across ISOs, a noise-profile JSON for `dealthdr synth --noise-profile`, and a plot.

Every RAW file in --raw is read with rawpy (black and white levels from the file) and normalised
as the synthesis is, X = (code - black) / (white - black) per CFA position (see
dealthdr/data/noise_profile.py). Frames are grouped by (ISO, exposure time, size):
  - a group of >= 2 frames is a burst / flat-field series of one static scene: each pixel's
    variance across the frames (unbiased) is pure noise, whatever the scene;
  - a single frame is measured on flat patches: 8x8 blocks of each CFA plane, a plane fitted and
    removed per block (gradients), the residual variance of the blocks of similar brightness
    summarised by a quantile corrected for its chi-square bias (texture only adds variance, so a
    low --flat-quantile trades precision for robustness on textured images).
Per ISO and colour, (mean, variance) samples are binned by brightness and var = r + s X is fitted
by weighted least squares (weights from the variance of a variance estimate). The RAW's own
quantisation variance step^2 / 12 is subtracted from r: the synthesis quantises again itself.

    python calib/noise.py --raw shots/ --out noise_profile.json
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from dealthdr.cliargs import configure_logging
from dealthdr.data.degrade import mosaic
from dealthdr.data.dng import RawImage, read_raw, write_dng
from dealthdr.data.noise_profile import CHANNELS, IsoEntry, NoiseProfile, make_profile
from dealthdr.fileio import atomic_write_bytes

log = logging.getLogger(__name__)
# Files in a RAW folder that are not frames: sidecars and notes are skipped, anything else must
# be a RAW that LibRaw reads.
SIDECARS = {".xmp", ".txt", ".md", ".json", ".pp3", ".dop", ".pdf"}
METHODS = ("auto", "burst", "single")


def list_raw_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--raw folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() not in SIDECARS)
    if not files:
        raise ValueError(f"no RAW files in {folder}")
    return files


def load_frames(files: list[Path]) -> list[RawImage]:
    frames = []
    for p in files:
        img = read_raw(p)
        if img.iso is None:
            raise ValueError(f"{p}: no ISO in its metadata (EXIF ISOSpeedRatings / ISOSpeed); "
                             "calibration needs the ISO of every frame")
        frames.append(img)
    return frames


def _planes(img: RawImage) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(colour, X plane, clipped mask) for the four CFA positions."""
    x = img.normalised()
    clipped = (img.mosaic == 0) | (img.mosaic >= img.white_level)
    return [(img.cfa[2 * i + j], x[i::2, j::2], clipped[i::2, j::2])
            for i in range(2) for j in range(2)]


def burst_samples(frames: list[RawImage]) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """Per colour: per-pixel brightness, unbiased variance across frames, degrees of freedom.

    The brightness a pixel is binned by is its mean over the frames and its 3x3 neighbourhood
    of the plane: binning on the noisy per-pixel mean alone would sort pixels by their own
    noise (errors in x), which inflates the variance of the darkest bins several-fold.
    """
    from scipy.ndimage import uniform_filter

    per = [_planes(f) for f in frames]
    out: dict[str, list] = defaultdict(lambda: [[], []])
    for k, (colour, _, _) in enumerate(per[0]):
        stack = np.stack([p[k][1] for p in per])
        clipped = np.any(np.stack([p[k][2] for p in per]), axis=0).astype(np.float64)
        ok = uniform_filter(clipped, 3, mode="nearest") == 0  # no clipped pixel nearby
        ok[[0, -1], :] = ok[:, [0, -1]] = False
        out[colour][0].append(uniform_filter(stack.mean(0), 3, mode="nearest")[ok])
        out[colour][1].append(stack.var(0, ddof=1)[ok])
    return {c: (np.concatenate(m), np.concatenate(v), len(frames) - 1) for c, (m, v) in out.items()}


def patch_samples(img: RawImage, block: int = 8
                  ) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """Per colour: block means and residual variances after removing a fitted plane."""
    yy, xx = np.mgrid[0:block, 0:block]
    design = np.stack([np.ones(block * block), yy.ravel(), xx.ravel()], 1)
    proj = np.eye(block * block) - design @ np.linalg.pinv(design)  # residual projector
    dof = block * block - 3
    out: dict[str, list] = defaultdict(lambda: [[], []])
    for colour, x, clipped in _planes(img):
        h, w = (x.shape[0] // block) * block, (x.shape[1] // block) * block
        if h == 0 or w == 0:
            raise ValueError(f"{img.path}: image too small for {block}x{block} patches per CFA "
                             "plane")
        tiles = x[:h, :w].reshape(h // block, block, w // block, block).swapaxes(1, 2)
        tiles = tiles.reshape(-1, block * block)
        bad = clipped[:h, :w].reshape(h // block, block, w // block, block).any(axis=(1, 3))
        resid = tiles @ proj.T
        out[colour][0].append(tiles.mean(1)[~bad.ravel()])
        out[colour][1].append((resid ** 2).sum(1)[~bad.ravel()] / dof)
    return {c: (np.concatenate(m), np.concatenate(v), dof) for c, (m, v) in out.items()}


def bin_samples(mean: np.ndarray, var: np.ndarray, dof: int, method: str, bins: int,
                max_level: float, quantile: float, floor: float, min_dof: int = 300) -> dict:
    """Equal-count brightness bins: x, variance estimate, degrees of freedom behind it.

    Bins need >= `min_dof` degrees of freedom (a variance within ~8 %), so small images get
    fewer bins. Bins within 3 sigma of saturation (X = 1) or of code 0 (X = `floor`) are
    dropped: clipped pixels are masked out there, which truncates the noise and biases the
    variance low.
    """
    from scipy.stats import chi2

    keep = (mean < max_level) & np.isfinite(var)
    mean, var = mean[keep], var[keep]
    bins = int(min(bins, mean.size * dof // min_dof))
    if bins < 1:
        return {"x": [], "var": [], "n": []}
    edges = np.unique(np.quantile(mean, np.linspace(0, 1, bins + 1)))
    idx = np.clip(np.searchsorted(edges, mean, side="right") - 1, 0, len(edges) - 2)
    xs, vs, ns = [], [], []
    # Bias of a chi-square quantile: for dof d, quantile_p(var_hat) = var * chi2.ppf(p, d) / d.
    correction = chi2.ppf(quantile, dof) / dof
    for b in range(len(edges) - 1):
        sel = idx == b
        n = int(sel.sum())
        if n * dof < min_dof:
            continue
        x, lo, hi = float(mean[sel].mean()), mean[sel].min(), mean[sel].max()
        v = var[sel].mean() if method == "burst" else np.quantile(var[sel], quantile) / correction
        if hi + 3 * np.sqrt(v * hi / max(x, 1e-12)) >= 1.0 or lo - 3 * np.sqrt(v) <= floor:
            continue
        xs.append(x)
        vs.append(float(v))
        ns.append(n * dof)
    return {"x": xs, "var": vs, "n": ns}


def fit_line(x: np.ndarray, var: np.ndarray, dof: np.ndarray, iters: int = 4
             ) -> tuple[float, float, np.ndarray]:
    """Weighted least squares var = r + s x; (s, r, relative residuals). A variance estimate
    with d degrees of freedom has variance 2 var^2 / d, so the weights are d / model^2."""
    a = np.stack([np.ones_like(x), x], 1)
    model = np.maximum(var, 1e-30)
    for _ in range(iters):
        w = dof / model ** 2
        r, s = np.linalg.solve(a.T @ (a * w[:, None]), a.T @ (w * var))
        model = np.maximum(r + s * x, 1e-3 * var.max())
    return float(s), float(r), (var - (r + s * x)) / np.maximum(r + s * x, 1e-30)


def calibrate(frames: list[RawImage], method: str = "auto", bins: int = 24, block: int = 8,
              max_level: float = 0.95, quantile: float = 0.5, camera: str = "camera",
              source: str = "") -> NoiseProfile:
    if method not in METHODS:
        raise ValueError(f"--method must be one of {METHODS}, got {method!r}")
    groups: dict[tuple, list[RawImage]] = defaultdict(list)
    for f in frames:
        groups[(f.iso, f.exposure_time, f.mosaic.shape, f.cfa)].append(f)
    by_iso: dict[float, list] = defaultdict(list)
    for (iso, exposure, _, _), group in sorted(groups.items(), key=lambda kv: kv[0][0]):
        if method == "burst" and len(group) < 2:
            raise ValueError(f"--method burst: ISO {iso:g}, exposure {exposure} s has a single "
                             f"frame ({group[0].path.name}); bursts need >= 2")
        if len(group) >= 2 and method != "single":
            by_iso[iso].append(("burst", group, burst_samples(group)))
        else:
            by_iso[iso].extend(("single", [f], patch_samples(f, block)) for f in group)
    entries = []
    for iso, parts in sorted(by_iso.items()):
        quant = max((1.0 / (f.white_level - f.black_level.max())) ** 2 / 12
                    for _, g, _ in parts for f in g)
        # X of code 0 (the lowest black level), where noise clips from below.
        floor = min(-f.black_level.min() / (f.white_level - f.black_level.min())
                    for _, g, _ in parts for f in g)
        binned: dict[str, dict] = {}
        for colour in CHANNELS:
            cols = [bin_samples(*s[colour], kind, bins, max_level, quantile, floor)
                    for kind, _, s in parts if colour in s]
            binned[colour] = {k: sum((c[k] for c in cols), []) for k in ("x", "var", "n")}
        channels, residuals = {}, {}
        for colour in [c for c in CHANNELS if len(binned[c]["x"]) >= 3] + ["all"]:
            pts = binned[colour] if colour != "all" else \
                {k: sum((binned[c][k] for c in CHANNELS), []) for k in ("x", "var", "n")}
            if len(pts["x"]) < 3:
                raise ValueError(f"ISO {iso:g}: fewer than 3 usable brightness bins; the frames "
                                 "need unclipped pixels over a range of brightness")
            s, r, res = fit_line(*(np.asarray(pts[k], float) for k in ("x", "var", "n")))
            channels[colour] = {"lambda_shot": s, "lambda_read": r - quant}
            residuals[colour] = float(np.sqrt(np.mean(res ** 2)))
        pooled = channels.pop("all")
        if pooled["lambda_shot"] <= 0:
            raise ValueError(f"ISO {iso:g}: fitted lambda_shot {pooled['lambda_shot']:.3g} <= 0; "
                             "noise does not grow with brightness in these frames")
        files = [f.path.name for _, g, _ in parts for f in g]
        log.info("ISO %g (%s, %d frames): lambda_shot %.4g, lambda_read %.4g, rms rel. residual "
                 "%.3f", iso, "+".join(sorted({k for k, _, _ in parts})), len(files),
                 pooled["lambda_shot"], pooled["lambda_read"], residuals["all"])
        entries.append(IsoEntry(
            float(iso), pooled["lambda_shot"], max(pooled["lambda_read"], 0.0), channels,
            bool(pooled["lambda_read"] <= 0),
            {"method": sorted({k for k, _, _ in parts}), "files": files,
             "exposure_times": sorted({f.exposure_time for _, g, _ in parts for f in g
                                       if f.exposure_time}),
             "quantisation_variance": quant, "rms_relative_residual": residuals,
             "bins": binned}))
    return make_profile(camera, entries, {"kind": "raw-calibration", "path": source,
                                          "method": method, "bins": bins, "block": block,
                                          "flat_quantile": quantile, "max_level": max_level})


def plot_png(profile: NoiseProfile) -> bytes:
    """Variance vs brightness per ISO (measured bins, fitted lines) and the fit across ISOs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(profile.entries) + 1
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.3 * rows), squeeze=False)
    colours = {"R": "tab:red", "G": "tab:green", "B": "tab:blue"}
    for ax, e in zip(axes.flat, profile.entries):
        bins = e.extra.get("bins", {})
        for c in CHANNELS:
            if c in bins and bins[c]["x"]:
                xs = np.asarray(bins[c]["x"])
                ax.plot(xs[xs > 0], np.asarray(bins[c]["var"])[xs > 0], "o", ms=3,
                        color=colours[c], label=c)
        # log-log: the read-noise floor (dark end) and the shot-noise slope both show.
        x = np.geomspace(1e-3, 1, 60)
        ax.loglog(x, e.lambda_read + e.lambda_shot * x, "k-", lw=1,
                  label=f"fit {e.lambda_read:.3g} + {e.lambda_shot:.3g} X")
        ax.set(title=f"ISO {e.iso:g}", xlabel="X (white-normalised RAW)", ylabel="variance")
        ax.legend(fontsize=7)
    ax = axes.flat[n - 1]
    iso = np.array([e.iso for e in profile.entries])
    ax.loglog(iso, [e.lambda_shot for e in profile.entries], "ko", label="lambda_shot")
    ax.loglog(iso, [max(e.lambda_read, 1e-12) for e in profile.entries], "s", color="gray",
              label="lambda_read")
    if profile.fit is not None:
        grid = np.geomspace(iso.min(), iso.max(), 50)
        shot = np.array([profile.fit.shot(i) for i in grid])
        ax.loglog(grid, shot, "k-", lw=1, label="Eq. B fit")
        ax.loglog(grid, [profile.fit.read(s) for s in shot], "-", color="gray", lw=1)
    ax.set(title=f"{profile.camera}: fit across ISOs", xlabel="ISO", ylabel="lambda")
    ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def clip_raw_noise(noisy: np.ndarray, clean: np.ndarray, meta: dict, gamma: float = 2.2,
                   margin: float = 0.98) -> tuple[np.ndarray, np.ndarray]:
    """RAW noise of a synthesised clip at native CFA sites: (clean X, noisy X - clean X).

    `noisy` and `clean` are the LDR frames (F, H, W, 3) of one clip made with and without noise
    (same seed and index: same scene, camera and exposure). The processing is inverted (gamma,
    CCM, white balance) where nothing clipped; at each pixel's own CFA colour the edge-aware
    demosaic kept the RAW sample, so the difference is the RAW noise plus the difference of two
    10-bit quantisation errors (variance 2 step^2 / 12).
    """
    rgb2cam = np.asarray(meta["pipeline"]["rgb2cam"])
    wb = np.asarray(meta["pipeline"]["wb_gains"])
    xs, ds = [], []
    for n, c in zip(noisy.astype(np.float64), clean.astype(np.float64)):
        cam_n, cam_c = (n ** gamma) @ rgb2cam.T, (c ** gamma) @ rgb2cam.T
        ok = np.all((n > 0) & (n < 1) & (c > 0) & (c < 1) & (cam_n < margin) & (cam_c < margin)
                    & (cam_n > 0) & (cam_c > 0), axis=-1)
        raw_n, raw_c = mosaic(cam_n / wb), mosaic(cam_c / wb)
        xs.append(raw_c[ok])
        ds.append((raw_n - raw_c)[ok])
    return np.concatenate(xs), np.concatenate(ds)


def write_synthetic_raws(folder: str | Path, levels: dict[float, tuple[float, float]],
                         frames: int = 2, size: tuple[int, int] = (256, 384), black: int = 512,
                         white: int = 16383, seed: int = 0, cfa: str = "RGGB") -> list[Path]:
    """DNGs of a brightness ramp with known noise, {iso: (lambda_shot, lambda_read)}: the test
    target of this calibration (tests, acceptance figures)."""
    rng = np.random.default_rng(seed)
    h, w = size
    x = np.broadcast_to(np.geomspace(0.002, 0.9, w // 2).repeat(2), (h, w))
    paths = []
    for iso, (shot, read) in sorted(levels.items()):
        for k in range(frames):
            noisy = x + np.sqrt(read + shot * x) * rng.standard_normal((h, w))
            codes = np.clip(np.round(black + noisy * (white - black)), 0, white)
            paths.append(write_dng(Path(folder) / f"iso{iso:g}_{k:02d}.dng",
                                   codes.astype(np.uint16), black, white, cfa,
                                   exposure_time=1 / 100, iso=iso))
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--raw", type=Path, required=True,
                   help="folder of RAW files (any format LibRaw reads), each with its ISO in "
                        "the metadata; sidecars (.xmp, .txt, .md, .json, .pp3, .dop, .pdf) "
                        "are skipped, any other file must be a readable RAW")
    p.add_argument("--out", type=Path, default=Path("noise_profile.json"),
                   help="noise-profile JSON to write (default: noise_profile.json)")
    p.add_argument("--plot", type=Path, default=None,
                   help="PNG of variance vs brightness per ISO (default: --out with .png)")
    p.add_argument("--camera", default=None,
                   help="camera name stored in the profile (default: the --raw folder name)")
    p.add_argument("--method", choices=METHODS, default="auto",
                   help="burst: frames of equal ISO and exposure are one static scene, "
                        "variance across frames; single: flat patches of each frame; auto: "
                        "burst where a group has >= 2 frames, else single (default: auto)")
    p.add_argument("--bins", type=int, default=24,
                   help="brightness bins per ISO and colour (default: 24)")
    p.add_argument("--block", type=int, default=8,
                   help="flat-patch side in pixels of one CFA plane (default: 8)")
    p.add_argument("--flat-quantile", type=float, default=0.5,
                   help="quantile of the patch variances per bin, bias-corrected; lower is more "
                        "robust to texture (default: 0.5)")
    p.add_argument("--max-level", type=float, default=0.95,
                   help="ignore samples brighter than this X (near saturation; default: 0.95)")
    args = p.parse_args(argv)
    configure_logging()
    try:
        if args.bins < 3 or args.block < 3 or not 0 < args.flat_quantile < 1 \
                or not 0 < args.max_level <= 1:
            raise ValueError("need --bins >= 3, --block >= 3, 0 < --flat-quantile < 1 and "
                             "0 < --max-level <= 1")
        frames = load_frames(list_raw_files(args.raw))
        profile = calibrate(frames, args.method, args.bins, args.block, args.max_level,
                            args.flat_quantile, args.camera or args.raw.resolve().name,
                            str(args.raw))
        if profile.fit is None:
            log.warning("fewer than 2 ISOs with positive noise levels: no fit across ISOs; "
                        "`dealthdr synth --noise-profile` needs one")
        png = plot_png(profile)  # everything computed before anything is written
        atomic_write_bytes(args.plot or args.out.with_suffix(".png"), png)
        atomic_write_bytes(args.out, (json.dumps(profile.to_dict(), indent=1) + "\n").encode())
    except (ValueError, OSError) as err:  # bad input, unusable paths: one line, exit 2
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.info("wrote %s and %s", args.out, args.plot or args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
