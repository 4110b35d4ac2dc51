"""Attention-ratio buckets: for each sensitivity s, the attention budget K of a fixed-shape graph.

FGMA computes attention in whole tiles (the variant's `attn_tile`), and how many tiles hold a
masked position depends on the content, but phones want fixed shapes. For each s this runs the
model (dynamic mask policy) on calibration windows, records the tile ratio (tiles with a masked
position / tiles) per decoder level and per (window, neighbour) item, and keeps a high quantile
as the bucket's ratio budget: the exported graph attends in the top-K tiles by max consistency
difference D, with K = ceil(ratio * tiles at that level). Content above the quantile overflows
gracefully (the least inconsistent tiles fall back to flow). s=0 needs no attention (K=0), s=inf
no selection (K = all tiles).

    python calib/buckets.py --s 0,1,15,100 --out buckets.json
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import torch

from dealthdr.calib.windows import make_windows
from dealthdr.checkpoint import checkpoint_label, load_checkpoint, resolve_checkpoint
from dealthdr.cliargs import configure_logging, parse_size
from dealthdr.fileio import atomic_write_bytes, sha256_file
from dealthdr.model.fgma import tile_max
from dealthdr.sensitivity import parse_s_list, s_text

FORMAT = "dealthdr-buckets/2"  # /1 counted positions, /2 counts tiles
log = logging.getLogger(__name__)


def s_key(s: float) -> str:
    """The bucket's name for s (the project's text form)."""
    return s_text(s)


def item_ratios(model, window, s: float) -> list[np.ndarray]:
    """Per decoder level (1, 2, 3): the tile ratio of each neighbour item (tiles holding an
    executed attention position / tiles)."""
    seen: dict[int, np.ndarray] = {}
    hooks = []
    for i, fgma in enumerate(model.fgma):  # index 0 is level 3
        def hook(m, _inp, out, level=3 - i):
            ran = tile_max(out[1], m.tile) > 0
            seen[level] = ran.flatten(1).double().mean(1).numpy()
        hooks.append(fgma.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(window.frames, window.exposures, s=s)
    finally:
        for h in hooks:
            h.remove()
    return [seen[lv] for lv in (1, 2, 3)]


def calibrate(model, windows, s_values: list[float], quantile: float = 0.95,
              progress: bool = True) -> list[dict]:
    """One record per s: the ratio budget per level (the quantile) and what was observed."""
    from tqdm import tqdm

    if not 0 < quantile <= 1:
        raise ValueError(f"--quantile must be in (0, 1], got {quantile}")
    out = []
    for s in s_values:
        rec = {"s": s_key(s)}
        if s == 0 or math.isinf(s):
            rec["ratio"] = [0.0] * 3 if s == 0 else [1.0] * 3
            rec["why"] = "s=0: flow only, no attention path" if s == 0 else \
                "s=inf: attention everywhere, no selection"
            out.append(rec)
            continue
        per_level = [[], [], []]
        for w in tqdm(windows, desc=f"calibrate s={s_key(s)}", disable=not progress):
            for lv, r in enumerate(item_ratios(model, w, s)):
                per_level[lv].append(r)
        obs = [np.concatenate(v) for v in per_level]
        rec["ratio"] = [float(np.quantile(v, quantile)) for v in obs]
        rec["observed"] = {f"level{lv + 1}": {
            "mean": float(v.mean()), "p50": float(np.quantile(v, 0.5)),
            "max": float(v.max()), "items": int(v.size)} for lv, v in enumerate(obs)}
        out.append(rec)
        log.info("s=%s ratio budget per level %s", rec["s"], [round(r, 4) for r in rec["ratio"]])
    return out


def run_calibration(checkpoint: str, variant: str | None, s_values: list[float],
                    size: tuple[int, int], clips: int, quantile: float, seed: int = 0,
                    progress: bool = True) -> dict:
    path = resolve_checkpoint(checkpoint, variant)
    model, _ = load_checkpoint(path, variant)
    windows = make_windows("train", *size, clips=clips, seed=seed, progress=progress,
                           frames=model.cfg.num_frames)
    return {"format": FORMAT, "variant": model.cfg.name, "tile": model.cfg.attn_tile,
            "checkpoint": checkpoint_label(path),
            "checkpoint_sha256": sha256_file(path), "quantile": quantile,
            "calibration": {"split": "train (bundled panoramas)", "windows": len(windows),
                            "size": list(size), "seed": seed},
            "buckets": calibrate(model, windows, s_values, quantile, progress)}


def read_buckets(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable buckets JSON ({err})") from None
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: format {data.get('format')!r}, expected {FORMAT!r}")
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="default",
                   help="checkpoint (.safetensors) or 'default' (the shipped one of --variant)")
    p.add_argument("--variant", default=None,
                   help="with 'default': whose shipped weights (default tiny); with a path: "
                        "the expected variant, a mismatch is an error")
    p.add_argument("--s-buckets", type=parse_s_list, default=[0.0, 1.0, 15.0, 100.0],
                   help="comma-separated sensitivities s, 'inf' allowed (default 0,1,15,100)")
    p.add_argument("--size", type=parse_size, default=(256, 256),
                   help="calibration frame size HxW (default 256x256)")
    p.add_argument("--clips", type=int, default=4,
                   help="synthetic 6-frame clips; each gives a short- and a long-centred window "
                        "(default 4)")
    p.add_argument("--quantile", type=float, default=0.95,
                   help="quantile of the per-item attention ratio kept as the budget "
                        "(default 0.95; 1.0 = the largest ratio seen)")
    p.add_argument("--seed", type=int, default=0, help="synthesis seed (default 0)")
    p.add_argument("--out", type=Path, default=Path("buckets.json"),
                   help="output JSON (default buckets.json)")
    args = p.parse_args(argv)
    configure_logging()
    try:
        data = run_calibration(args.checkpoint, args.variant, args.s_buckets,
                               args.size, args.clips, args.quantile, args.seed)
        atomic_write_bytes(args.out, (json.dumps(data, indent=2) + "\n").encode())
    except (ValueError, OSError) as err:  # bad input, unusable paths: one line, exit 2
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
