"""Tiled programs: a large frame (e.g. 1920x1080) as fixed-shape tiles on a phone.

A tile run alone differs from the whole frame in two places (`dealthdr.tiling`): its flows and
its channel attention's statistics. The tiled export therefore has three kinds of method:

- `guide(frames, exposures) -> guide` at the *tile* size: SpyNet's input for the tile, pooled to
  1/flow_scale (`DeAltHDR.flow_guide`, per position, so the frame's guide is assembled from
  tiles: a whole-frame program would hold 1080p intermediates, ~250 MB, measured);
- `pair_flows(guide_a, guide_b) -> (O_a->b, O_b->a)` on the frame's 1/flow_scale grid: SpyNet
  on the centre and one neighbour (`DeAltHDR.pair_flows_from_guide`), called once per
  neighbour: at 1080p the whole window's eight directions in one call held ~640 MB of XNNPACK
  buffers, one pair ~440 MB (measured; most of it is the 7x7 convolutions' indirection
  buffers, per output pixel, whatever the batch);
- `tile_<centre>(frames, exposures, flow_t_n, flow_n_t, share, frame_sums, frame_wide)
  -> (hdr, partial_sums)` at the *tile* size: the network on one tile with the crops of the
  frame's flows; `share` is the tile's part of each position (blend weight over summed
  weights); `frame_sums` are the frame's channel-attention sums packed in one vector
  (`framestats.pack`), used when `frame_wide` = 1 and ignored at 0 (the first pass);
  `partial_sums` is the tile's share of the sums for the next pass.

`device_bench tiled` runs them with `dealthdr.tiling.run_tiled` (the eager `reconstruct --tile`
uses the same code) and the export gate compares the tiled program with the tiled eager network
on a held-out window of the frame size.
"""
from __future__ import annotations

import torch
from torch import nn

from dealthdr.calib.windows import make_windows
from dealthdr.export.buckets import Bucket, example_inputs
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


def export_tiled(model: DeAltHDR, buckets: list[Bucket], tile: tuple[int, int],
                 frame: tuple[int, int]) -> tuple[dict, int]:
    """({guide, pair_flows, tile_<centre> per bucket: ExportedProgram}, length of the packed
    sums) for buckets of one s."""
    fs = model.cfg.flow_scale
    align = network_align(fs)
    if tile[0] % align or tile[1] % align:
        raise ValueError(f"tile size {tile} must be a multiple of {align}")
    model = model.eval()
    t = model.cfg.num_frames
    grid = [(n + (-n) % align) // fs for n in frame]
    shapes = statistics_shapes(model, buckets[0], tile)
    with torch.no_grad():
        out = {"guide": torch.export.export(GuideGraph(model).eval(),
                                            example_inputs(buckets[0], tile, t), strict=False),
               "pair_flows": torch.export.export(PairFlowGraph(model).eval(),
                                                 (torch.rand(1, 3, *grid), torch.rand(1, 3, *grid)),
                                                 strict=False)}
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


def run_program_tiled(path, centre: str, frames, exposures, tile: int, sums_length: int,
                      flow_scale: int, overlap: int = 32, passes: int = 2):
    """A window through a tiled .pte: the frame's guide tile by tile, its flows pair by pair,
    then the tile method per tile and pass.

    A loaded Program caches its methods, and each keeps its XNNPACK runtime (SpyNet's on the
    whole frame), so the guide and flows run in a Program that is dropped before the tile
    method loads in a fresh one."""
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(str(path))
    if "pair_flows" not in program.method_names:
        raise ValueError(f"{path}: no pair_flows method (methods: "
                         f"{sorted(program.method_names)}); re-export it with "
                         "export/to_executorch.py --tiled-frame")
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
    flows = tuple(torch.cat([p[d] for p in pairs]) for d in (0, 1))
    del guide_method, pair, pairs, program, guide
    tile_program = Runtime.get().load_program(str(path))   # alive while its method runs
    result = tiled_through(program_tile_run(tile_program.load_method(f"tile_{centre}"),
                                            sums_length),
                           flows, frames, exposures, tile, overlap, flow_scale, passes)
    del tile_program
    return result


def gate_tiled(path, model: DeAltHDR, bucket: Bucket, frame: tuple[int, int], tile: int,
               sums_length: int, overlap: int = 32, passes: int = 2) -> dict:
    """Parity of a tiled program with the tiled eager network (same bucket, flows, passes) on
    a held-out window of the frame size. Raises GateFailed below the fp32 threshold."""
    win = next(w for w in make_windows("heldout", *frame, clips=1, seed=1,
                                       frames=model.cfg.num_frames)
               if w.centre == bucket.centre)
    got = run_program_tiled(path, bucket.centre, win.frames, win.exposures, tile, sums_length,
                            model.cfg.flow_scale, overlap, passes).hdr
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
