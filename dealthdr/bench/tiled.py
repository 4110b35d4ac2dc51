"""`python -m device_bench tiled`: a large frame through a fixed-shape .pte, tile by tile.

    python export/to_executorch.py --s-buckets 15 --tiled-frame 1080x1920
    python -m device_bench tiled exports/executorch/dealthdr_tiny_s15_xnnpack_tiled1080x1920.pte \\
        --centre short --out runs/tiled_1080p_s15_short.json

A phone runs a 256x256 (or 512x512) program over a 1920x1080 window as overlapping tiles
(`dealthdr.tiling`: the same code `dealthdr reconstruct --tile` uses for the eager model), so
memory stays that of one tile's program whatever the frame size. A tiled program
(`--tiled-frame`) comes with a frame flows program named in its manifest record: the worker
assembles the frame's 1/4-resolution flow guide from that program's `guide` method on the tiles
and runs its `pair_flows` method once per neighbour, drops it, then loads the tile program and
runs its `tile_<centre>` method on every tile for `--passes` passes, each after the first with
the frame's channel-attention statistics; a plain bucket program (`forward_<centre>`) runs each
tile alone (own flows and statistics: visible seams), for comparison.

The parent synthesises one held-out window and hands it over as .npy; a fresh worker process
loads it and the programs, runs the window, blends the tiles, and reports its peak RSS (the
process's high-water mark: runtime, window and runner), the part above its baseline after
imports and the window (`peak_mem_mb`, as `run` measures) and wall time; the parent then runs
the eager model untiled on the same window (dynamic mask policy, same s) and records the seam
quality as PSNR-mu and max |diff| of the tiled program's output against it. The record is JSON
with the machine, the versions and the artifact's sha256.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dealthdr.bench.jobs import read_manifest
from dealthdr.bench.worker import peak_memory, start_memory_watch
from dealthdr.calib.windows import make_windows
from dealthdr.checkpoint import load_checkpoint
from dealthdr.cliargs import parse_size
from dealthdr.export.tiles import run_program_tiled
from dealthdr.fileio import atomic_write_bytes, jsonable, sha256_file
from dealthdr.metrics import psnr_mu
from dealthdr.sysinfo import machine_record
from dealthdr.tiling import run_tiled

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("tiled", help="a large frame through a fixed-shape .pte as blended tiles",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pte", type=Path, help="an exported .pte listed in the manifest.json beside it")
    p.add_argument("--centre", choices=("short", "long"), default="short",
                   help="exposure of the window's centre frame: which methods run "
                        "(default short)")
    p.add_argument("--passes", type=int, default=2,
                   help="passes over the tiles of a tiled program; from the second on, tiles "
                        "attend with the frame's statistics (default 2; plain programs: 1)")
    p.add_argument("--size", type=parse_size, default=(1080, 1920),
                   help="frame size HxW to run, at least the program's size (default 1080x1920)")
    p.add_argument("--overlap", type=int, default=32,
                   help="pixels shared by neighbouring tiles, blended (default 32)")
    p.add_argument("--threads", type=int, default=1, help="runtime threads (default 1)")
    p.add_argument("--checkpoint", default="default",
                   help="checkpoint of the untiled eager reference (default: the shipped one of "
                        "the program's variant)")
    p.add_argument("--out", type=Path, default=Path("runs/tiled.json"),
                   help="record to write (default runs/tiled.json)")
    p.set_defaults(run=run, config=TiledConfig)


def _artifacts(pte: Path) -> tuple[dict, list[dict]]:
    """The manifest beside `pte` and its records of that file (one per method)."""
    manifest_path = pte.parent / "manifest.json"
    if not pte.is_file():
        raise FileNotFoundError(f"{pte}: no such program")
    if not manifest_path.is_file():
        raise ValueError(f"{pte}: no manifest.json beside it (export with export/ or quantize/)")
    manifest = read_manifest(manifest_path)
    return manifest, [a for a in manifest["artifacts"] if a.get("file") == pte.name]


@dataclass(frozen=True)
class TiledConfig:
    """`device_bench tiled`'s settings, one field per flag (`--help` explains each)."""
    pte: Path
    centre: str
    passes: int
    size: tuple[int, int]
    overlap: int
    threads: int
    checkpoint: str
    out: Path


def run(cfg: TiledConfig) -> int:
    manifest, arts = _artifacts(cfg.pte)
    tiled = any("tiled" in a for a in arts)
    method = f"tile_{cfg.centre}" if tiled else f"forward_{cfg.centre}"
    art = next((a for a in arts if a.get("method") == method), None)
    if art is None:
        raise ValueError(f"the manifest beside {cfg.pte} lists no method {method!r} for it")
    passes = cfg.passes if tiled else 1
    if passes < 1:
        raise ValueError(f"--passes must be >= 1, got {passes}")
    if tiled and tuple(art["tiled"]["frame"]) != tuple(cfg.size):
        raise ValueError(f"{cfg.pte.name} was exported for {art['tiled']['frame']} frames; "
                         f"--size is {list(cfg.size)}")
    tile_h, tile_w = art["input_shape"]["frames"][-2:]
    if tile_h != tile_w or cfg.size[0] < tile_h or cfg.size[1] < tile_w:
        raise ValueError(f"--size {cfg.size[0]}x{cfg.size[1]} must be at least the program's "
                         f"square size {tile_h}x{tile_w}")
    if not 0 <= cfg.overlap < tile_h // 2:
        raise ValueError(f"--overlap must be in [0, {tile_h // 2}), got {cfg.overlap}")
    if sha256_file(cfg.pte) != art["sha256"]:
        raise ValueError(f"{cfg.pte}: sha256 differs from its manifest; re-export")
    flows = _flows_program(cfg.pte, manifest, art) if tiled else None   # (path, sha256)
    job = {"pte": str(cfg.pte), "flows_pte": flows and str(flows[0]), "method": method,
           "size": list(cfg.size),
           "tile": tile_h, "overlap": cfg.overlap, "threads": cfg.threads,
           "centre": art["centre"], "passes": passes,
           "frames": art["input_shape"]["frames"][1],
           "sums_length": art["tiled"]["sums_length"] if tiled else None,
           "flow_scale": art["tiled"]["flow_scale"] if tiled else None}
    win = _window(tuple(cfg.size), art["centre"], job["frames"])
    with tempfile.TemporaryDirectory() as tmp:
        spec, result, output = (Path(tmp) / n for n in ("job.json", "result.json", "out.npy"))
        # synthesised here: the worker's memory is then what a frame loop holds (the runtime,
        # the window, the runner), not the synthesis' freed heap
        for name, a in (("frames", win.frames), ("exposures", win.exposures)):
            job[name] = str(Path(tmp) / f"{name}.npy")
            np.save(job[name], a.numpy())
        job["output"] = str(output)
        spec.write_text(json.dumps(job))
        proc = subprocess.run([sys.executable, "-m", "dealthdr.bench.tiled", str(spec),
                               str(result)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"tiled worker exited {proc.returncode}:\n{proc.stderr[-2000:]}")
        measured = json.loads(result.read_text())
        quality = _against_eager(cfg, art, manifest["model"]["variant"], win, output)
    record = {"benchmark": "tiled_pte", "artifact": cfg.pte.name, "sha256": art["sha256"],
              **({"flows_artifact": flows[0].name, "flows_sha256": flows[1]} if flows else {}),
              "method": method, "passes": passes,
              "mode": "frame flows and statistics" if tiled else "tiles alone",
              "variant": manifest["model"]["variant"], "s": art["s"],
              "bucket_k": art["bucket_k"], "program_size": [tile_h, tile_w],
              "size": list(cfg.size), "overlap": cfg.overlap, "threads": cfg.threads,
              **measured, **quality, "machine": machine_record()}
    atomic_write_bytes(cfg.out, (json.dumps(jsonable(record), indent=2) + "\n").encode())
    log.info("%s %s at %dx%d: %d tiles, %.1f s, peak RSS %.0f MB, PSNR-mu vs untiled eager "
             "%.2f dB; wrote %s", cfg.pte.name, method, *cfg.size, measured["tiles"],
             measured["wall_s"], measured["peak_rss_mb"], quality["psnr_mu_vs_untiled_eager"],
             cfg.out)
    return 0


def _flows_program(pte: Path, manifest: dict, art: dict) -> tuple[Path, str]:
    """The frame flows program a tile program's record names, and its sha256, checked against
    its own record."""
    name = art["tiled"].get("flows_program")
    if name is None:
        raise ValueError(f"{pte.name}: its record names no frame flows program (exported "
                         "before tiled exports wrote one); re-export with --tiled-frame")
    path = pte.parent / name
    rec = next((a for a in manifest["artifacts"] if a["file"] == name), None)
    if rec is None or not path.is_file():
        raise FileNotFoundError(f"{path}: the frame flows program of {pte.name} is missing")
    if sha256_file(path) != rec["sha256"]:
        raise ValueError(f"{path}: sha256 differs from its manifest; re-export")
    return path, rec["sha256"]


def _window(size: tuple[int, int], centre: str, frames: int):
    windows = make_windows("heldout", *size, clips=1, seed=1, frames=frames)
    return next(w for w in windows if w.centre == centre)


def _against_eager(cfg: TiledConfig, art: dict, variant: str, win, output: Path) -> dict:
    import math

    import torch

    torch.set_num_threads(max(1, cfg.threads))
    model, _ = load_checkpoint(cfg.checkpoint, variant)
    s = math.inf if art["s"] == "inf" else float(art["s"])
    with torch.no_grad():
        ref = model.eval()(win.frames, win.exposures, s=s)
    tiled = torch.from_numpy(np.load(output)).permute(2, 0, 1)[None]
    return {"psnr_mu_vs_untiled_eager": psnr_mu(tiled, ref, peak=1.0),
            "max_abs_vs_untiled_eager": float((tiled - ref).abs().max())}


def _worker(job: dict) -> dict:
    """In a fresh process: load the program, run every tile, blend; peak memory and time."""
    import torch
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
    from executorch.runtime import Runtime

    _unsafe_reset_threadpool(job["threads"])
    frames, exposures = (torch.from_numpy(np.load(job[n])) for n in ("frames", "exposures"))
    watch = start_memory_watch()
    start = time.perf_counter()
    if job["sums_length"] is None:
        method = Runtime.get().load_program(job["pte"]).load_method(job["method"])
        result = run_tiled(lambda t: (method.execute([t.frames, t.exposures])[0].numpy(), []),
                           frames, exposures, job["tile"], job["overlap"])
    else:
        with torch.no_grad():
            result = run_program_tiled(job["pte"], job["flows_pte"], job["centre"], frames,
                                       exposures, job["tile"], job["sums_length"],
                                       job["flow_scale"], job["overlap"], job["passes"])
    wall = time.perf_counter() - start
    mem = peak_memory(watch)
    np.save(job["output"], result.hdr)
    runs = result.tiles * job["passes"]
    return {"tiles": result.tiles, "wall_s": wall, "ms_per_tile_run": 1e3 * wall / runs, **mem}


if __name__ == "__main__":
    spec, out = sys.argv[1:3]
    Path(out).write_text(json.dumps(_worker(json.loads(Path(spec).read_text()))))
