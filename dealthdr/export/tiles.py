"""Tiled programs: a large frame (e.g. 1920x1080) as fixed-shape tiles on a phone.

A tile run alone differs from the whole frame in two places (`dealthdr.tiling`): its flows and
its channel attention's statistics. A tiled export therefore writes two programs:

- a *frame flows* program, one per frame size whatever the s (it holds SpyNet, no bucket):
  - `guide(frames, exposures) -> guide` at the *tile* size: SpyNet's input for the tile, pooled
    to 1/flow_scale (`DeAltHDR.flow_guide`, per position, so the frame's guide is assembled
    from tiles: a whole-frame program would hold 1080p intermediates, ~250 MB, measured);
  - `pair_flows(guide_a, guide_b) -> (O_a->b, O_b->a)` on the frame's 1/flow_scale grid:
    SpyNet on the centre and one neighbour (`DeAltHDR.pair_flows_from_guide`), called once
    per neighbour: at 1080p the whole window's eight directions in one call held ~640 MB of
    XNNPACK buffers, one pair ~430 MB (measured; most of it is the 7x7 convolutions'
    indirection buffers, per output pixel, whatever the batch);
- a *tile* program per s with `tile_<centre>(frames, exposures, flow_t_n, flow_n_t, share,
  frame_sums, frame_wide) -> (hdr, partial_sums)` at the tile size: the network on one tile
  with the crops of the frame's flows; `share` is the tile's part of each position (blend
  weight over summed weights); `frame_sums` are the frame's channel-attention sums packed in
  one vector (`framestats.pack`), used when `frame_wide` = 1 and ignored at 0 (the first
  pass); `partial_sums` is the tile's share of the sums for the next pass.

Two programs, not one: the runtime plans one activation arena per program, sized by its largest
method and held from load, so in one program SpyNet's frame-sized buffers came on top of the
tile method's arena (165 MB at 256x256 for `tiny`). Apart, the flows run in a 31 MB arena, the
flows program is dropped, and only then the tile program loads: measured at 1080p, the
runner's peak RSS fell by the tile arena.

`device_bench tiled` runs them with `dealthdr.tiling.run_tiled` (the eager `reconstruct --tile`
uses the same code) and the export gate compares the tiled program with the tiled eager network
on a held-out window of the frame size.
"""
from __future__ import annotations

import torch
from torch import nn

from dealthdr.calib.windows import make_windows
from dealthdr.export.buckets import Bucket, example_inputs, window_inputs
from dealthdr.export.gate import THRESHOLD_DB, GateFailed
from dealthdr.metrics import psnr_mu
from dealthdr.model import DeAltHDR
from dealthdr.model.framestats import frame_statistics, pack, sum_shapes, unpack
from dealthdr.model.inputs import pad_frames, window_pattern
from dealthdr.tiling import Tile, TileRun, eager_tile_run, network_align, run_tiled, tile_starts


class GuideGraph(nn.Module):
    def __init__(self, model: DeAltHDR) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor, exposures: torch.Tensor) -> torch.Tensor:
        return self.model.flow_guide(frames, exposures)


class PairFlowGraph(nn.Module):
    def __init__(self, model: DeAltHDR) -> None:
        super().__init__()
        self.model = model

    def forward(self, guide_a: torch.Tensor, guide_b: torch.Tensor):
        return self.model.pair_flows_from_guide(guide_a, guide_b)


class TileGraph(nn.Module):
    def __init__(self, model: DeAltHDR, bucket: Bucket, shapes: list) -> None:
        super().__init__()
        self.model = model
        self.bucket = bucket
        self.shapes = shapes
        self.long_pattern = window_pattern(bucket.centre, model.cfg.num_frames)

    def forward(self, frames, exposures, flow_t_n, flow_n_t, share, frame_sums, frame_wide):
        given = unpack(frame_sums, self.shapes)
        with frame_statistics(share, given, frame_wide) as record:
            out = self.model(frames, exposures, s=self.bucket.s, budget=self.bucket.budget,
                             long_pattern=self.long_pattern, flows=(flow_t_n, flow_n_t))
        return out, pack(record.partials)


def statistics_shapes(model: DeAltHDR, bucket: Bucket, size: tuple[int, int]) -> list:
    """Shapes of the channel-attention sums of one forward (independent of the size)."""
    frames, exposures = example_inputs(bucket, size, model.cfg.num_frames)
    with torch.no_grad(), frame_statistics(torch.ones(1, 1, *size)) as record:
        model.eval()(frames, exposures, s=0.0)
    return sum_shapes(record.partials)


def tile_inputs(model: DeAltHDR, bucket: Bucket, size: tuple[int, int], shapes: list):
    frames, exposures = example_inputs(bucket, size, model.cfg.num_frames)
    fs = model.cfg.flow_scale
    flow = torch.zeros(model.cfg.num_frames - 1, 2, size[0] // fs, size[1] // fs)
    n = sum(torch.Size(s).numel() for group in shapes for s in group)
    return (frames, exposures, flow, flow.clone(), torch.ones(1, 1, *size), torch.zeros(n),
            torch.zeros(1))


def _check_tile(model: DeAltHDR, tile: tuple[int, int]) -> int:
    align = network_align(model.cfg.flow_scale)
    if tile[0] % align or tile[1] % align:
        raise ValueError(f"tile size {tile} must be a multiple of {align}")
    return align


def frame_flow_inputs(model: DeAltHDR, tile: tuple[int, int], frame: tuple[int, int]) -> dict:
    """Example inputs of the frame flows program's methods."""
    align = _check_tile(model, tile)
    grid = [(n + (-n) % align) // model.cfg.flow_scale for n in frame]
    return {"guide": window_inputs("short", tile, model.cfg.num_frames),
            "pair_flows": (torch.rand(1, 3, *grid), torch.rand(1, 3, *grid))}


def export_frame_flows(model: DeAltHDR, tile: tuple[int, int], frame: tuple[int, int]) -> dict:
    """{guide, pair_flows: ExportedProgram}: the frame flows program of a tiled export (no
    bucket: the same for every s)."""
    model = model.eval()
    ex = frame_flow_inputs(model, tile, frame)
    with torch.no_grad():
        return {"guide": torch.export.export(GuideGraph(model).eval(), ex["guide"],
                                             strict=False),
                "pair_flows": torch.export.export(PairFlowGraph(model).eval(),
                                                  ex["pair_flows"], strict=False)}


def export_tiled(model: DeAltHDR, buckets: list[Bucket], tile: tuple[int, int],
                 ) -> tuple[dict, int]:
    """({tile_<centre> per bucket: ExportedProgram}, length of the packed sums) for buckets of
    one s: the tile program of a tiled export."""
    _check_tile(model, tile)
    model = model.eval()
    shapes = statistics_shapes(model, buckets[0], tile)
    out = {}
    with torch.no_grad():
        for b in buckets:
            out[f"tile_{b.centre}"] = torch.export.export(
                TileGraph(model, b, shapes).eval(), tile_inputs(model, b, tile, shapes),
                strict=False)
    return out, sum(torch.Size(s).numel() for group in shapes for s in group)


def program_tile_run(method, sums_length: int) -> TileRun:
    """A loaded `tile_<centre>` method as a TileRun; the first pass sends zeros, frame_wide 0."""
    first, on, off = torch.zeros(sums_length), torch.ones(1), torch.zeros(1)

    def run(t: Tile):
        sums, wide = (first, off) if t.given is None else (pack(t.given), on)
        out, partials = method.execute([t.frames, t.exposures, *t.flows, t.share.contiguous(),
                                        sums, wide])
        return out.numpy(), [(partials,)]
    return run


def tiled_through(run: TileRun, flows: tuple[torch.Tensor, torch.Tensor], frames, exposures,
                  tile: int, overlap: int, flow_scale: int, passes: int):
    """One window through a TileRun, flows given; the packed sums travel as one tensor."""
    return run_tiled(run, frames, exposures, tile, overlap, flows=flows, flow_scale=flow_scale,
                     passes=passes, align=network_align(flow_scale))


def eager_tiled(model: DeAltHDR, s: float, frames, exposures, tile: int, overlap: int,
                passes: int, budget: tuple[int, int, int] | None = None):
    with torch.no_grad():
        flows = model.window_flows(frames, exposures)
    return tiled_through(eager_tile_run(model, s, budget), flows, frames, exposures, tile,
                         overlap, model.cfg.flow_scale, passes)


def _load(path, needs: list[str], what: str):
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(str(path))
    missing = [m for m in needs if m not in program.method_names]
    if missing:
        raise ValueError(f"{path}: not a {what} (no method {missing[0]}; it has "
                         f"{sorted(program.method_names)}); export it with "
                         "export/to_executorch.py --tiled-frame")
    return program


def frame_flows(flows_path, frames, exposures, tile: int, flow_scale: int,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """O_{t->n}, O_{n->t} of a window from a frame flows program: its guide tile by tile, then
    SpyNet pair by pair. The program (and its XNNPACK buffers) is gone when this returns."""
    program = _load(flows_path, ["guide", "pair_flows"], "frame flows program")
    align = network_align(flow_scale)
    padded = pad_frames(frames, align)
    hp, wp = padded.shape[-2:]
    th, tw = min(tile, hp), min(tile, wp)
    guide = torch.zeros(1, padded.shape[1], 3, hp // flow_scale, wp // flow_scale)
    guide_method = program.load_method("guide")
    for y in tile_starts(hp, th, 0, align):
        for x in tile_starts(wp, tw, 0, align):
            crop = padded[..., y:y + th, x:x + tw].contiguous()
            guide[..., y // flow_scale:(y + th) // flow_scale,
                  x // flow_scale:(x + tw) // flow_scale] = \
                guide_method.execute([crop, exposures])[0]
    pair, c = program.load_method("pair_flows"), guide.shape[1] // 2
    pairs = [pair.execute([guide[:, c].contiguous(), guide[:, j].contiguous()])
             for j in range(guide.shape[1]) if j != c]
    return tuple(torch.cat([p[d] for p in pairs]) for d in (0, 1))


def run_program_tiled(path, flows_path, centre: str, frames, exposures, tile: int,
                      sums_length: int, flow_scale: int, overlap: int = 32, passes: int = 2):
    """A window through a tiled export: the frame's flows from the frame flows program at
    `flows_path`, then the tile program's `tile_<centre>` per tile and pass. The tile program
    loads only after the flows program is dropped (see the module's docstring)."""
    method = f"tile_{centre}"
    flows = frame_flows(flows_path, frames, exposures, tile, flow_scale)
    tile_program = _load(path, [method], f"tile program for the {centre} centre")
    result = tiled_through(program_tile_run(tile_program.load_method(method), sums_length),
                           flows, frames, exposures, tile, overlap, flow_scale, passes)
    del tile_program
    return result


def gate_tiled(path, flows_path, model: DeAltHDR, bucket: Bucket, frame: tuple[int, int],
               tile: int, sums_length: int, overlap: int = 32, passes: int = 2) -> dict:
    """Parity of a tiled program with the tiled eager network (same bucket, flows, passes) on
    a held-out window of the frame size. Raises GateFailed below the fp32 threshold."""
    win = next(w for w in make_windows("heldout", *frame, clips=1, seed=1,
                                       frames=model.cfg.num_frames)
               if w.centre == bucket.centre)
    got = run_program_tiled(path, flows_path, bucket.centre, win.frames, win.exposures, tile,
                            sums_length, model.cfg.flow_scale, overlap, passes).hdr
    ref = eager_tiled(model, bucket.s, win.frames, win.exposures, tile, overlap, passes,
                      bucket.budget).hdr
    p = psnr_mu(torch.from_numpy(got), torch.from_numpy(ref), peak=1.0)
    result = {"psnr_mu_db": p, "max_abs": float(abs(got - ref).max()), "windows": 1,
              "threshold_db": THRESHOLD_DB["fp32"], "passes": passes, "overlap": overlap,
              "ran_on": "executorch runtime (XNNPACK + portable kernels), tiled",
              "passed": p >= THRESHOLD_DB["fp32"]}
    if not result["passed"]:
        raise GateFailed(f"tiled {bucket.name}: parity {p:.2f} dB PSNR-mu < "
                         f"{THRESHOLD_DB['fp32']:.0f} dB; nothing written")
    return result
