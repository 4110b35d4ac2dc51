"""darktable noise profiles -> dealthdr noise profiles (and back), and the derivation of the
conversion constant. The conversion itself is dealthdr/data/noise_profile.py; calib/README.md
explains it.

    python calib/darktable.py list [--match sony]
    python calib/darktable.py import "Sony DSC-RX100M7" --out rx100m7.json
    python calib/darktable.py export noise_profile.json --out for_darktable.json
    python calib/darktable.py kappa          # re-derive DARKTABLE_KAPPA by simulation

The darktable file is --darktable PATH, else $DEALTHDR_DARKTABLE_NOISEPROFILES, else
/usr/share/darktable/noiseprofiles.json (Debian package darktable; GPL, not shipped here).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from dealthdr.cliargs import configure_logging
from dealthdr.data import noise_profile as npf
from dealthdr.fileio import atomic_write_bytes

log = logging.getLogger(__name__)


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """out[y, x] = a[y + dy, x + dx] (periodic; callers discard a border)."""
    return np.roll(a, (-dy, -dx), (0, 1))


def ppg_demosaic(mosaic: np.ndarray) -> np.ndarray:
    """Patterned-pixel-grouping demosaic (darktable's default for Bayer profiling exports) of an
    RGGB float mosaic; (H, W, 3), valid away from a 4-pixel border.

    Green at red/blue sites: of the horizontal and vertical estimates (neighbour greens plus a
    Laplacian correction from the site's own colour), the one along the smaller gradient,
    limited to its two greens. Red/blue at green sites: colour difference to green along the
    row or column holding that colour. Blue at red sites and vice versa: colour difference
    along the diagonal of smaller gradient (their mean when equal).
    """
    m = np.asarray(mosaic, dtype=np.float64)
    h, w = m.shape
    yy, xx = np.mgrid[0:h, 0:w]
    is_r, is_b = (yy % 2 == 0) & (xx % 2 == 0), (yy % 2 == 1) & (xx % 2 == 1)
    is_g = ~(is_r | is_b)
    s = _shift
    guess, grad = [], []
    for dy, dx in ((0, 1), (1, 0)):
        g = ((s(m, -dy, -dx) + m + s(m, dy, dx)) * 2 - s(m, -2 * dy, -2 * dx)
             - s(m, 2 * dy, 2 * dx)) / 4
        grad.append((np.abs(s(m, -2 * dy, -2 * dx) - m) + np.abs(s(m, 2 * dy, 2 * dx) - m)
                     + np.abs(s(m, -dy, -dx) - s(m, dy, dx))) * 3
                    + (np.abs(s(m, 3 * dy, 3 * dx) - s(m, dy, dx))
                       + np.abs(s(m, -3 * dy, -3 * dx) - s(m, -dy, -dx))) * 2)
        lo = np.minimum(s(m, -dy, -dx), s(m, dy, dx))
        guess.append(np.clip(g, lo, np.maximum(s(m, -dy, -dx), s(m, dy, dx))))
    green = np.where(is_g, m, np.where(grad[0] > grad[1], guess[1], guess[0]))
    red, blue = np.where(is_r, m, 0.0), np.where(is_b, m, 0.0)
    for chan, site in ((red, is_r), (blue, is_b)):
        for dy, dx in ((0, 1), (1, 0)):
            est = (s(chan, -dy, -dx) + s(chan, dy, dx) + 2 * green - s(green, -dy, -dx)
                   - s(green, dy, dx)) / 2
            at = is_g & s(site, dy, dx)
            chan[at] = est[at]
    for chan, at in ((blue, is_r), (red, is_b)):
        est, grad = [], []
        for dy, dx in ((-1, -1), (-1, 1)):
            grad.append(np.abs(s(chan, dy, dx) - s(chan, -dy, -dx))
                        + np.abs(s(green, dy, dx) - green) + np.abs(s(green, -dy, -dx) - green))
            est.append(s(chan, dy, dx) + s(chan, -dy, -dx) + 2 * green - s(green, dy, dx)
                       - s(green, -dy, -dx))
        val = np.where(grad[0] > grad[1], est[1] / 2,
                       np.where(grad[0] < grad[1], est[0] / 2, (est[0] + est[1]) / 4))
        chan[at] = val[at]
    return np.stack([red, green, blue], -1)


def haar_hh_variance(rgb: np.ndarray) -> np.ndarray:
    """darktable's profiling statistic per channel, squared: the finest Haar HH band
    ((x11 - x10) - (x01 - x00)) / 4 of 2x2 blocks, sigma = median(|HH|) / 0.6745."""
    a, b, c, d = rgb[0::2, 0::2], rgb[0::2, 1::2], rgb[1::2, 0::2], rgb[1::2, 1::2]
    hh = ((d - c) - (b - a)) / 4
    return (np.median(np.abs(hh), axis=(0, 1)) / 0.6745) ** 2


def derive_kappa(size: int = 1024, level: float = 0.3, var: float = 1e-4, seed: int = 0
                 ) -> np.ndarray:
    """(kappa_R, kappa_G, kappa_B): darktable's statistic / the per-pixel variance of white
    Gaussian RAW noise, on a flat RGGB field demosaicked with PPG."""
    rng = np.random.default_rng(seed)
    mosaic = level + np.sqrt(var) * rng.standard_normal((size, size))
    return haar_hh_variance(ppg_demosaic(mosaic)[8:-8, 8:-8]) / var


def _write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--darktable", type=Path, default=None, metavar="JSON",
                   help="darktable noiseprofiles.json (default: $DEALTHDR_DARKTABLE_NOISEPROFILES"
                        ", else /usr/share/darktable/noiseprofiles.json)")
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("list", help="list the cameras (name, ISO count and range)")
    q.add_argument("--match", default="", help="only names containing this (case-insensitive)")
    q = sub.add_parser("import", help="convert one camera to a dealthdr noise-profile JSON")
    q.add_argument("camera", help="'Maker Model' as listed, or a unique model name")
    q.add_argument("--out", type=Path, required=True, help="noise-profile JSON to write")
    q = sub.add_parser("export", help="a dealthdr noise profile as a darktable "
                                      "noiseprofiles.json (darktable --noiseprofiles FILE)")
    q.add_argument("profile", type=Path, help="dealthdr noise-profile JSON")
    q.add_argument("--maker", default="dealthdr", help="maker name in the file (default: "
                                                      "dealthdr)")
    q.add_argument("--out", type=Path, required=True, help="darktable-format JSON to write")
    q = sub.add_parser("kappa", help="re-derive the conversion constant by simulating "
                                     "darktable's profiling measurement")
    q.add_argument("--size", type=int, default=1024, help="simulated mosaic side (default 1024)")
    q.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    args = p.parse_args(argv)
    configure_logging()
    try:
        if args.command == "list":
            data, path = npf.load_darktable(args.darktable)
            cams = [c for c in npf.darktable_cameras(data) if args.match.lower() in c[0].lower()]
            for name, model in cams:
                isos = [pr["iso"] for pr in model.get("profiles", []) if not pr.get("skip")]
                span = f"ISO {min(isos):g}-{max(isos):g}" if isos else "no usable ISO"
                print(f"{name}\t{len(isos)} ISOs\t{span}")
            log.info("%d of %d cameras in %s", len(cams), len(npf.darktable_cameras(data)), path)
        elif args.command == "import":
            data, path = npf.load_darktable(args.darktable)
            camera, model = npf.find_darktable_camera(data, args.camera)
            profile = npf.from_darktable(camera, model, str(path))
            npf.write_profile(args.out, profile)
            lo, hi = profile.iso_range
            log.info("wrote %s: %s, %d ISOs (%g-%g)", args.out, camera, len(profile.entries),
                     lo, hi)
        elif args.command == "export":
            profile = npf.read_profile(args.profile)
            _write_json(args.out, {"version": 0, "noiseprofiles": [
                {"maker": args.maker, "models": [npf.to_darktable(profile)]}]})
            log.info("wrote %s", args.out)
        else:
            if args.size < 64:
                raise ValueError(f"--size must be >= 64, got {args.size}")
            k = derive_kappa(args.size, seed=args.seed)
            print(f"kappa R {k[0]:.4f}  G {k[1]:.4f}  B {k[2]:.4f}   (in use: green "
                  f"{npf.DARKTABLE_KAPPA}, red/blue {npf.DARKTABLE_KAPPA_RB})")
    except (ValueError, OSError) as err:  # bad input, unusable paths: one line, exit 2
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
