"""Time FGMA's exported branch (one decoder level, lowered to XNNPACK) against its bucket size.

    python device_bench/fgma_exported.py                          # tiny, level 1, 256x256
    python device_bench/fgma_exported.py --level 3 --ratios 0,0.25,0.5,0.67,0.75,1

An exported program runs FGMA at each level with a fixed K (tiles per neighbour, K = R x the
level's tiles); from `DENSE_FROM` of the tiles on, the graph takes every tile by static slices
instead of gathering K of them. This lowers one level's FGMA forward (warps, D, selection,
attention, the concatenation) for each R the way the exporter does, and times the programs in
the ExecuTorch runtime, interleaved round by round, beside torch eager on the same inputs and
bucket: the measurement behind `DENSE_FROM` and the quick check for a change to the exported
attention, without exporting and timing whole programs.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from dealthdr.bench.fgma_scaling import add_level_flags, check_counts, level_shape, timed
from dealthdr.cliargs import reuse_freed_memory
from dealthdr.export.config import parse_config
from dealthdr.fileio import atomic_write_bytes
from dealthdr.model.fgma import FGMA, bucket_tiles, tile_grid
from dealthdr.sysinfo import machine_record

log = logging.getLogger("fgma_exported")


@dataclass(frozen=True)
class ExportedScalingConfig:
    """What `run` times; the flags of `build_parser` one to one (their help says what each
    means)."""
    variant: str = "tiny"
    level: int = 1
    size: tuple[int, int] = (256, 256)
    neighbours: int = 4
    ratios: str = "0,0.1,0.5,0.74,1"
    s: float = 15.0
    repeats: int = 7
    warmup: int = 1
    threads: int = 1
    out: Path = Path("runs/fgma_exported.json")
    keep_programs: Path | None = None


def build_parser() -> argparse.ArgumentParser:
    d = ExportedScalingConfig()                      # the defaults live in the config only
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_level_flags(p, d)
    p.add_argument("--ratios", default=d.ratios,
                   help="bucket sizes as shares R of the level's tiles, comma-separated; "
                        "K = round(R x tiles) per neighbour, 0 is the flow-only graph "
                        f"(default: {d.ratios})")
    p.add_argument("--s", type=float, default=d.s,
                   help=f"sensitivity the graphs are exported for (default: {d.s:g})")
    p.add_argument("--repeats", type=int, default=d.repeats,
                   help="timed rounds; each round runs every program and eager once, "
                        f"interleaved, and medians over rounds are reported (default: "
                        f"{d.repeats})")
    p.add_argument("--warmup", type=int, default=d.warmup,
                   help=f"untimed rounds first (default: {d.warmup})")
    p.add_argument("--threads", type=int, default=d.threads,
                   help=f"XNNPACK and torch threads (default: {d.threads})")
    p.add_argument("--out", type=Path, default=d.out,
                   help=f"JSON record to write (default: {d.out})")
    p.add_argument("--keep-programs", type=Path, default=d.keep_programs, metavar="DIR",
                   help="also keep each lowered branch as DIR/fgma_l<level>_k<K>.pte (method "
                        "`forward`), e.g. for `python -m device_bench profile-pte`, which "
                        "splits one op by op (default: programs live in a temporary folder)")
    return p


class _Branch(torch.nn.Module):
    """One level's FGMA forward with a fixed bucket, as an exported program runs it."""

    def __init__(self, fgma: FGMA, s: float, k: int) -> None:
        super().__init__()
        self.fgma, self.s, self.k = fgma, s, k

    def forward(self, current, neighbours, flow_t_to_n, flow_n_to_t, image):
        return self.fgma(current, neighbours, flow_t_to_n, flow_n_to_t, image, self.s, self.k)[0]


def _lowered_method(branch: torch.nn.Module, inputs: tuple, folder: Path, name: str):
    """The branch exported and lowered as the exporter lowers programs, loaded in the runtime."""
    from executorch.runtime import Runtime

    from dealthdr.export.to_executorch import lower

    with torch.no_grad():
        program, _ = lower({"forward": torch.export.export(branch, inputs)}, "xnnpack")
    path = folder / f"{name}.pte"
    atomic_write_bytes(path, program.buffer)
    return Runtime.get().load_program(str(path)).load_method("forward"), path


def run(cfg: ExportedScalingConfig) -> dict:
    try:
        ratios = [float(r) for r in cfg.ratios.split(",")]
    except ValueError:
        raise ValueError(f"--ratios must be comma-separated numbers, got {cfg.ratios!r}") from None
    if not ratios or any(not 0 <= r <= 1 for r in ratios):
        raise ValueError("--ratios must lie in [0, 1]")
    check_counts(cfg)
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    torch.set_num_threads(cfg.threads)
    _unsafe_reset_threadpool(cfg.threads)
    model_cfg, c, h, w = level_shape(cfg.variant, cfg.level, cfg.size)
    a, b = tile_grid(h, w, model_cfg.attn_tile)
    torch.manual_seed(0)
    fgma = FGMA(c, model_cfg.attn_window, model_cfg.attn_tile).eval()
    n = cfg.neighbours
    inputs = (torch.randn(1, c, h, w), torch.randn(n, c, h, w), torch.randn(n, 2, h, w) * 2,
              torch.randn(n, 2, h, w) * 2, torch.rand(1, 3, h, w))
    ks = [round(r * a * b) for r in ratios]
    programs, eager = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) if cfg.keep_programs is None else cfg.keep_programs
        for k in dict.fromkeys(ks):
            branch = _Branch(fgma, cfg.s, k).eval()
            method, path = _lowered_method(branch, inputs, folder, f"fgma_l{cfg.level}_k{k}")
            programs[k] = (method, path.stat().st_size, path)
            eager[k] = branch
            log.info("lowered K=%d of %d tiles (%d bytes)", k, a * b, programs[k][1])
        pte_ms = {k: [] for k in programs}
        eager_ms = {k: [] for k in programs}
        with torch.no_grad():
            for i in range(cfg.warmup + cfg.repeats):
                sink = i >= cfg.warmup
                for k, (method, _, _) in programs.items():
                    timed(lambda: method.execute(list(inputs)), pte_ms[k] if sink else [])
                    timed(lambda: eager[k](*inputs), eager_ms[k] if sink else [])
    rows = [{"R": r, "k": k, "tiles_per_neighbour": a * b,
             "dense": k > 0 and bucket_tiles(k, a * b) == a * b,
             "pte_ms_median": statistics.median(pte_ms[k]),
             "eager_ms_median": statistics.median(eager_ms[k]),
             "pte_bytes": programs[k][1],
             **({} if cfg.keep_programs is None else {"program": str(programs[k][2])})}
            for r, k in zip(ratios, ks)]
    return {"benchmark": "fgma_exported_branch", "variant": model_cfg.name, "level": cfg.level,
            "channels": c, "window": model_cfg.attn_window, "tile": model_cfg.attn_tile,
            "level_size": f"{h}x{w}", "input_size": f"{cfg.size[0]}x{cfg.size[1]}",
            "neighbours": n, "s": cfg.s, "repeats": cfg.repeats, "threads": cfg.threads,
            "backend": "executorch-xnnpack fp32", "rows": rows, "machine": machine_record()}


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    reuse_freed_memory()  # eager timed as `dealthdr reconstruct` runs it
    cfg = parse_config(build_parser(), ExportedScalingConfig, argv)
    try:
        result = run(cfg)
    except ValueError as err:
        log.error("fgma_exported: error: %s", err)
        return 2
    atomic_write_bytes(cfg.out, (json.dumps(result, indent=2) + "\n").encode())
    for row in result["rows"]:
        kind = "dense" if row["dense"] else "gather" if row["k"] else "flow only"
        log.info("R=%.2f  K=%4d/%d %-9s  XNNPACK %8.2f ms  eager %8.2f ms", row["R"], row["k"],
                 row["tiles_per_neighbour"], kind, row["pte_ms_median"], row["eager_ms_median"])
    log.info("wrote %s", cfg.out)
    return 0
