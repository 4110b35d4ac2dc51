"""Before/after adaptation on footage without ground truth: no-reference measures of several
reconstructions of the same frames (dealthdr.noref) as JSON, and a side-by-side PNG.

    python -m dealthdr.demo.compare --input vtest_alt --frames 110:150 \
        --method shipped=rec_shipped --method adapted=rec_adapted \
        --json results/vtest_noref.json --png results/vtest_side_by_side.png

Besides the given reconstructions (folders written by `dealthdr reconstruct`), the row "input"
is each input frame alone, linearised and brought to the short exposure's units
(ldr^2.2 / relative exposure): what no fusion at all gives.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..cliargs import configure_logging
from ..data.io import read_hdr
from ..data.sequence import open_sequence
from ..fileio import atomic_write_bytes
from ..noref import MEASURES, measure
from ..reconstruct import preview
from ..reconstruct_cli import frame_range, parse_range


def input_frames(seq, frames: range) -> list[np.ndarray]:
    ref = float(seq.exposures[~seq.long].min())
    return [seq.frame(t).astype(np.float64) ** 2.2 / (seq.exposures[t] / ref) for t in frames]


def method_frames(folder: Path, frames: range) -> list[np.ndarray]:
    missing = [t for t in frames if not (folder / "hdr" / f"{t:06d}.exr").is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: no reconstruction of frame {missing[0]}")
    return [read_hdr(folder / "hdr" / f"{t:06d}.exr") for t in frames]


def _label(img: np.ndarray, text: str) -> np.ndarray:
    import cv2

    out = np.ascontiguousarray(img)
    cv2.rectangle(out, (0, 0), (8 + 7 * len(text), 20), (0, 0, 0), -1)
    cv2.putText(out, text, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                cv2.LINE_AA)
    return out


def side_by_side(rows: dict[str, list[np.ndarray]], picks: list[int], crop: tuple[int, int],
                 frames: range) -> np.ndarray:
    """One column per method; per picked frame a full-frame row and a 2x zoom of the half-size
    region at `crop` (top, left), so noise and blur are visible at the pixel level."""
    import cv2

    lines = []
    for t in picks:
        i = t - frames.start
        full, zoom = [], []
        for name, seq in rows.items():
            img = preview(seq[i])
            h, w = img.shape[:2]
            y, x = crop
            z = cv2.resize(img[y:y + h // 2, x:x + w // 2], (w, h),
                           interpolation=cv2.INTER_NEAREST)
            full.append(_label(img, f"{name}  frame {t}"))
            zoom.append(_label(z, f"{name}  2x zoom"))
        lines += [np.concatenate(full, 1), np.concatenate(zoom, 1)]
    return np.concatenate(lines, 0)


def compare(input_path: Path, frames: range, methods: dict[str, Path], json_out: Path | None,
            png_out: Path | None, crop: tuple[int, int] | None = None,
            extra: dict | None = None, show: int | None = None) -> dict:
    seq = open_sequence(input_path)
    if show is not None and show not in frames:
        raise ValueError(f"--show {show} is not among the measured frames "
                         f"{frames.start}..{frames.stop - 1}")
    h, w = seq.height, seq.width
    crop = crop or (h // 4, w // 4)
    if png_out is not None and not (0 <= crop[0] <= h - h // 2 and 0 <= crop[1] <= w - w // 2):
        # the zoom shows a half-size region: its corner must keep it inside the frame
        raise ValueError(f"--crop {crop[0]} {crop[1]} puts the half-size zoom region outside "
                         f"the {h}x{w} frame (TOP in 0..{h - h // 2}, LEFT in 0..{w - w // 2})")
    rows = {"input": input_frames(seq, frames)}
    for name, folder in methods.items():
        rows[name] = method_frames(Path(folder), frames)
        if rows[name][0].shape != rows["input"][0].shape:
            raise ValueError(f"{folder}: frames of {rows[name][0].shape[0]}x"
                             f"{rows[name][0].shape[1]} px, the input's are {h}x{w}")
    result = {"input": str(input_path), "frames": [frames.start, frames.stop],
              "tonemap": "mu-law (mu=5000) of HDR clipped at the short exposure's white",
              "measures": MEASURES,
              "results": {name: measure(f) for name, f in rows.items()},
              "reconstructions": {k: str(v) for k, v in methods.items()}, **(extra or {})}
    if png_out is not None:
        import cv2

        # by default the middle short-exposure frame: where noise, the domain gap's first
        # symptom, shows; a long one shows what fusion makes of its motion blur
        short = [t for t in frames if not seq.long[t]]
        img = side_by_side(rows, [short[len(short) // 2] if show is None else show], crop,
                           frames)
        ok, buf = cv2.imencode(".png", img[..., ::-1])
        if not ok:
            raise OSError(f"could not encode {png_out}")
        atomic_write_bytes(png_out, buf.tobytes())
    if json_out is not None:  # last: no measures without the image they were asked with
        atomic_write_bytes(json_out, json.dumps(result, indent=2).encode())
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dealthdr.demo.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", type=Path, required=True, help="the input sequence")
    p.add_argument("--frames", type=parse_range, default=(None, None), metavar="START:STOP",
                   help="frames to measure (default: all); every method must have them")
    p.add_argument("--method", action="append", default=[], metavar="NAME=DIR",
                   help="a `dealthdr reconstruct` output folder; repeat for each method")
    p.add_argument("--json", type=Path, default=None, help="write the measures here")
    p.add_argument("--png", type=Path, default=None, help="write the side-by-side image here")
    p.add_argument("--crop", type=int, nargs=2, default=None, metavar=("TOP", "LEFT"),
                   help="corner of the half-size region shown at 2x (default: the centre)")
    p.add_argument("--show", type=int, default=None, metavar="FRAME",
                   help="the frame drawn in the PNG, one of --frames (default: the middle "
                        "short-exposure frame)")
    args = p.parse_args(argv)
    configure_logging(True)
    methods = {}
    for spec in args.method:
        name, _, folder = spec.partition("=")
        if not folder:
            p.error(f"--method must be NAME=DIR, got {spec!r}")
        methods[name] = Path(folder)
    try:
        seq_len = len(open_sequence(args.input))
        result = compare(args.input, frame_range(args.frames, seq_len), methods, args.json,
                         args.png, tuple(args.crop) if args.crop else None, show=args.show)
    except (ValueError, OSError) as e:  # checked before anything is written
        p.error(str(e))
    for name, r in result["results"].items():
        print(f"{name:>16}: " + "  ".join(f"{k} {v:.5f}" for k, v in r.items()
                                          if isinstance(v, float)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
