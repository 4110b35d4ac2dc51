"""Time FGMA's attention branch alone against the ratio R of tiles it attends in.

The claim under test: FGMA's cost follows s. FGMA computes attention in whole tiles, so for one
decoder level at a given input size the branch (tile selection, tables, windowed attention,
scatter) is timed at exactly controlled ratios R (a random R-share of the tiles masked per
neighbour), and t(R) - t(0) is compared with R * (t(1) - t(0)). The fixed overheads, paid
whatever R is, are timed on their own: the forward-backward mask (Eq. 4-6), dynamic selection
(nonzero over tiles), bucket selection (top-K tiles) at each K, and the halo table that only
the exported s=inf graph builds (eager calls gather halos per tile).

    python device_bench/fgma_scaling.py                       # default variant, level 1, 256x256
    python device_bench/fgma_scaling.py --level 2 --ratios 0,0.25,0.5,1 --out my.json
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dealthdr.cliargs import allocator_note, parse_size, reuse_freed_memory
from dealthdr.export.config import parse_config
from dealthdr.fileio import atomic_write_bytes
from dealthdr.model import get_config
from dealthdr.model.fgma import (
    FGMA,
    attention_mask,
    consistency_difference,
    select_bucket,
    select_dynamic,
    tile_grid,
)
from dealthdr.sysinfo import machine_record

log = logging.getLogger("fgma_scaling")


@dataclass(frozen=True)
class ScalingConfig:
    """What `run` times; the flags of `build_parser` one to one (their help says what each
    means)."""
    variant: str = "default"
    level: int = 1
    size: tuple[int, int] = (256, 256)
    neighbours: int = 4
    ratios: str = "0,0.1,0.5,1"
    repeats: int = 15
    warmup: int = 2
    threads: int = 1
    tolerance: float = 0.15
    out: Path = Path("runs/fgma_scaling.json")


def add_level_flags(p: argparse.ArgumentParser, d) -> None:
    """--variant, --level, --size, --neighbours: which decoder level of which variant FGMA's
    benchmarks time (this script and `fgma_exported`); `d` holds the defaults."""
    p.add_argument("--variant", default=d.variant,
                   help=f"variant whose level to time (default: {d.variant})")
    p.add_argument("--level", type=int, choices=(1, 2, 3), default=d.level,
                   help=f"decoder level: 1 = full resolution, 2 = 1/2, 3 = 1/4 (default: "
                        f"{d.level})")
    p.add_argument("--size", type=parse_size, default=d.size,
                   help="network input size HxW; the level works at size / 2^(level-1) "
                        f"(default: {d.size[0]}x{d.size[1]})")
    p.add_argument("--neighbours", type=int, default=d.neighbours,
                   help=f"neighbours aligned (paper: 4; default: {d.neighbours})")


def check_counts(cfg) -> None:
    """The counts both FGMA benchmarks take (`threads`, `repeats`, `warmup`, `neighbours` of
    their configs), refused with a clear error before anything runs."""
    if cfg.threads < 1 or cfg.repeats < 1 or cfg.warmup < 0 or cfg.neighbours < 1:
        raise ValueError("--threads, --repeats and --neighbours must be >= 1, --warmup >= 0")


def level_shape(variant: str, level: int, size: tuple[int, int]):
    """(variant config, channels, height, width) of decoder level `level` for input `size`."""
    cfg = get_config(variant)
    return (cfg, cfg.dim * 2 ** (level - 1), size[0] >> (level - 1), size[1] >> (level - 1))


def build_parser() -> argparse.ArgumentParser:
    d = ScalingConfig()                              # the defaults live in the config only
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_level_flags(p, d)
    p.add_argument("--ratios", default=d.ratios,
                   help=f"tile ratios R to time, comma-separated (default: {d.ratios})")
    p.add_argument("--repeats", type=int, default=d.repeats,
                   help="timed rounds; each round times every R once, interleaved, and the "
                        f"median over rounds is reported (default: {d.repeats})")
    p.add_argument("--warmup", type=int, default=d.warmup,
                   help=f"untimed rounds first (default: {d.warmup})")
    p.add_argument("--threads", type=int, default=d.threads,
                   help=f"torch threads (default: {d.threads}, as the device benchmark's "
                        "acceptance runs; with every core of a small machine busy, R=0.1's few "
                        "milliseconds swing by more than the tolerance from run to run)")
    p.add_argument("--tolerance", type=float, default=d.tolerance,
                   help=f"allowed |(t(R)-t(0)) / (R (t(1)-t(0))) - 1| (default: {d.tolerance})")
    p.add_argument("--out", type=Path, default=d.out,
                   help=f"JSON record to write (default: {d.out})")
    return p


def timed(fn, rounds: list[float]) -> None:
    start = time.perf_counter()
    fn()
    rounds.append((time.perf_counter() - start) * 1e3)


def run(args: ScalingConfig) -> dict:
    check_counts(args)
    torch.set_num_threads(args.threads)
    ratios = [float(r) for r in args.ratios.split(",")]
    if any(not 0 <= r <= 1 for r in ratios) or 0.0 not in ratios or 1.0 not in ratios:
        raise ValueError("--ratios must lie in [0, 1] and include 0 and 1")
    cfg, c, h, w = level_shape(args.variant, args.level, args.size)
    num = args.neighbours
    torch.manual_seed(0)
    tile = cfg.attn_tile
    fgma = FGMA(c, cfg.attn_window, tile).eval()
    current = torch.randn(num, c, h, w)
    warped = torch.randn(num, c, h, w)
    image = torch.rand(num, 3, h, w)
    flow = torch.randn(num, 2, h, w)
    d = torch.rand(num, 1, h, w)
    a, b = tile_grid(h, w, tile)
    masks = {}
    for r in ratios:  # exactly round(R * tiles) whole tiles masked per neighbour
        k = round(r * a * b)
        order = torch.rand(num, a * b).argsort(dim=1)
        m = torch.zeros(num, a * b)
        m.scatter_(1, order[:, :k], 1.0)
        m = m.view(num, 1, a, b).repeat_interleave(tile, 2).repeat_interleave(tile, 3)
        masks[r] = m[..., :h, :w].contiguous()

    def branch(r):
        fgma.attend(current, warped, masks[r], select_dynamic(masks[r], tile))

    times = {r: [] for r in ratios}
    over = {"mask (Eq. 4-6)": [], "select dynamic (nonzero)": [], "halo table (exported graphs)": []}
    topk = {r: [] for r in ratios}
    with torch.no_grad():
        for i in range(args.warmup + args.repeats):
            sink = i >= args.warmup
            for r in ratios:
                rounds = times[r] if sink else []
                timed(lambda: branch(r), rounds)
                timed(lambda: select_bucket(d, max(1, round(r * a * b)), tile),
                      topk[r] if sink else [])
            timed(lambda: attention_mask(consistency_difference(image, flow, -flow), 15.0),
                  over["mask (Eq. 4-6)"] if sink else [])
            timed(lambda: select_dynamic(masks[1.0], tile),
                  over["select dynamic (nonzero)"] if sink else [])
            timed(lambda: fgma.halo_table(warped),
                  over["halo table (exported graphs)"] if sink else [])
    med = {r: statistics.median(v) for r, v in times.items()}
    span = med[1.0] - med[0.0]
    rows = []
    for r in ratios:
        predicted = r * span
        measured = med[r] - med[0.0]
        dev = (measured / predicted - 1) if predicted > 0 else 0.0
        rows.append({"R": r, "tiles": round(r * a * b) * num, "t_ms_median": med[r],
                     "t_ms_p10": sorted(times[r])[len(times[r]) // 10],
                     "t_ms_p90": sorted(times[r])[-1 - len(times[r]) // 10],
                     "increment_ms": measured, "linear_prediction_ms": predicted,
                     "deviation": dev, "topk_select_ms": statistics.median(topk[r])})
    worst = max(abs(row["deviation"]) for row in rows if 0 < row["R"] < 1) if len(rows) > 2 \
        else 0.0
    return {
        "benchmark": "fgma_attention_branch_scaling",
        "variant": cfg.name, "level": args.level, "channels": c, "window": cfg.attn_window,
        "tile": tile,
        "level_size": f"{h}x{w}", "input_size": f"{args.size[0]}x{args.size[1]}",
        "neighbours": num, "repeats": args.repeats, "rows": rows,
        "fixed_overhead_ms": {k: statistics.median(v) for k, v in over.items()},
        "worst_deviation": worst, "tolerance": args.tolerance,
        "linear_within_tolerance": worst <= args.tolerance,
        "machine": machine_record(), "allocator": allocator_note(),
    }


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    reuse_freed_memory()  # eager timed as `dealthdr reconstruct` runs it
    args = parse_config(build_parser(), ScalingConfig, argv)
    try:
        result = run(args)
    except ValueError as err:
        log.error("fgma_scaling: error: %s", err)
        return 2
    atomic_write_bytes(args.out, json.dumps(result, indent=2).encode())
    for row in result["rows"]:
        log.info("R=%.2f  t=%8.2f ms  t-t0=%8.2f  R(t1-t0)=%8.2f  dev=%+6.1f%%  topK=%.2f ms",
                 row["R"], row["t_ms_median"], row["increment_ms"], row["linear_prediction_ms"],
                 100 * row["deviation"], row["topk_select_ms"])
    log.info("fixed overhead (ms): %s", {k: round(v, 2) for k, v in
                                         result["fixed_overhead_ms"].items()})
    log.info("worst deviation from linear: %.1f %% (tolerance %.0f %%) -> %s",
             100 * result["worst_deviation"], 100 * args.tolerance,
             "LINEAR" if result["linear_within_tolerance"] else "NOT LINEAR")
    log.info("wrote %s", args.out)
    return 0 if result["linear_within_tolerance"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
