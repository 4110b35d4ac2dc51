"""The DeAltHDR network (Fig. 2, App. C): dual encoders, a router-fused middle, and a 3-level
decoder that aligns the 4 neighbours with FGMA and fuses them with the frame history router.

Every weight-holding module runs once per forward on a stacked batch (short frames, long
frames, the 8 flow pairs, the neighbours): a module called twice breaks int8 XNNPACK lowering,
and one larger batch is faster on every runtime.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .align import AlignProjection
from .blocks import make_level
from .config import DeAltHDRConfig
from .encoder import Encoder
from .fgma import FGMA, bucket_tiles, tile_grid, tile_max
from .inputs import (after, check_alternating, check_frames, exposures_from_pattern, is_tracing,
                     long_pattern_from_exposures, neighbours, normalise_exposure, pad_frames,
                     pooled_guide, prepare_inputs, relative_exposures, take)
from .layers import Upsample
from .merge import ExposureMerge
from .router import FrameHistoryRouter
from .spynet import SpyNet, resize_flow

PAD_MULTIPLE = 8  # three pixel-unshuffle downsamplings


@dataclass
class ForwardStats:
    """What one forward did: per decoder level (1, 2, 3) the executed attention positions and
    the positions available, summed over batch and neighbours, and the tiles attention ran in
    (the branch's cost) and the tiles available."""
    attended: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    tiles: list[int] = field(default_factory=list)
    tiles_total: list[int] = field(default_factory=list)

    @property
    def attention_ratio(self) -> float:
        total = sum(self.positions)
        return sum(self.attended) / total if total else 0.0

    @property
    def tile_ratio(self) -> float:
        total = sum(self.tiles_total)
        return sum(self.tiles) / total if total else 0.0


def flow_grid(size: tuple[int, int], flow_scale: int) -> tuple[int, int]:
    """The grid `window_flows` returns and `forward(flows=)` takes for a padded input size."""
    return size[0] // flow_scale, size[1] // flow_scale


def level_tiles(size: tuple[int, int], tile: int) -> tuple[int, int, int]:
    """FGMA tiles per neighbour at decoder levels 1, 2, 3 for an input size (after padding)."""
    h = math.ceil(size[0] / PAD_MULTIPLE) * PAD_MULTIPLE
    w = math.ceil(size[1] / PAD_MULTIPLE) * PAD_MULTIPLE
    return tuple(math.prod(tile_grid(h >> lv, w >> lv, tile)) for lv in range(3))


def bucket_budget(ratio: float, size: tuple[int, int], tile: int) -> tuple[int, int, int]:
    """Per-level bucket sizes K (tiles per neighbour, levels 1, 2, 3) for a tile ratio."""
    return tuple(math.ceil(ratio * n) for n in level_tiles(size, tile))


class DeAltHDR(nn.Module):
    """HDR of the centre frame from a window of alternating-exposure LDR frames.

    forward(frames, exposures, s, budget, long_pattern):
        frames: (B, T, 3, H, W) gamma-encoded LDR in [0, 1], any H x W (padded internally).
        exposures: (B, T) relative exposure times (e.g. 1 and 8); None uses `long_pattern` and
            the config's exposure ratio.
        s: FGMA sensitivity; 0 = flow only, inf = attention only.
        budget: None for the dynamic mask policy, or K per decoder level (1, 2, 3) for the
            fixed-shape bucket policy used in export.
        long_pattern: which positions are long exposures; read from `exposures` when None
            (eager only; export passes it, since it fixes the graph).
    Returns (B, 3, H, W) linear HDR, non-negative, in the short exposure's units.
    """

    def __init__(self, cfg: DeAltHDRConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dims = [cfg.dim * 2 ** i for i in range(4)]
        self.encoder_short = Encoder(cfg)
        self.encoder_long = Encoder(cfg)
        self.spynet = SpyNet(cfg.spynet_levels, cfg.spynet_width)
        self.middle_router = FrameHistoryRouter(dims[3], cfg.heads[3], cfg.ffn_expansion)
        self.middle = make_level(4, dims[3], cfg.middle_blocks, cfg.heads[3], cfg.ffn_expansion)
        # Decoder modules are listed coarse to fine: index 0 is level 3.
        levels = (3, 2, 1)
        self.ups = nn.ModuleList([Upsample(dims[lv]) for lv in levels])
        self.skips = nn.ModuleList([nn.Conv2d(2 * dims[lv - 1], dims[lv - 1], 1) for lv in levels])
        self.fgma = nn.ModuleList([FGMA(dims[lv - 1], cfg.attn_window, cfg.attn_tile)
                                   for lv in levels])
        self.align_proj = nn.ModuleList([AlignProjection(dims[lv - 1]) for lv in levels])
        self.routers = nn.ModuleList([FrameHistoryRouter(dims[lv - 1], cfg.heads[lv - 1],
                                                         cfg.ffn_expansion) for lv in levels])
        self.decoder = nn.ModuleList([
            make_level(4 if cfg.decoder_block == "channel" else lv, dims[lv - 1], n,
                       cfg.heads[lv - 1], cfg.ffn_expansion)
            for lv, n in zip(levels, cfg.decoder_blocks)])
        if cfg.merge_base:
            # Residual (3) + one log-weight per frame; zero at init, so an untrained head
            # outputs the fixed exposure-aware merge.
            self.merge = ExposureMerge(gamma=cfg.gamma, consistency=cfg.merge_consistency)
            self.head = nn.Conv2d(dims[0], 3 + cfg.num_frames, 3, padding=1)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        else:
            self.head = nn.Conv2d(dims[0], 3, 3, padding=1)

    def forward(self, frames: torch.Tensor, exposures: torch.Tensor | None = None,
                s: float = 15.0, budget: tuple[int, int, int] | None = None,
                long_pattern: tuple[bool, ...] | None = None,
                flows: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        return self.forward_with_stats(frames, exposures, s, budget, long_pattern, flows)[0]

    def forward_with_stats(self, frames: torch.Tensor, exposures: torch.Tensor | None = None,
                           s: float = 15.0, budget: tuple[int, int, int] | None = None,
                           long_pattern: tuple[bool, ...] | None = None,
                           flows: tuple[torch.Tensor, torch.Tensor] | None = None,
                           ) -> tuple[torch.Tensor, ForwardStats]:
        cfg = self.cfg
        if not is_tracing():
            check_frames(frames, exposures, cfg.num_frames)
            if exposures is not None and long_pattern is None:
                long_pattern = long_pattern_from_exposures(exposures)
        if long_pattern is None:
            raise ValueError("give exposures or long_pattern")
        check_alternating(long_pattern)
        if len(long_pattern) != frames.shape[1]:
            raise ValueError(f"long_pattern has {len(long_pattern)} entries for "
                             f"{frames.shape[1]} frames")
        if budget is None and is_tracing() and s != 0:
            raise ValueError("export needs the bucket policy: pass budget=(K1, K2, K3)")
        b, t, _, h, w = frames.shape
        if exposures is None:
            exposures = exposures_from_pattern(long_pattern, cfg.exposure_ratio, b, frames.device)
        x = self._padded_inputs(frames, exposures)
        if flows is not None:
            grid = flow_grid(x.shape[-2:], cfg.flow_scale)
            if any(tuple(f.shape[-2:]) != grid for f in flows):
                raise ValueError(f"flows must be on the {grid[0]}x{grid[1]} grid of this "
                                 f"input, got {[tuple(f.shape[-2:]) for f in flows]}")
        out, stats = self._reconstruct(x, relative_exposures(exposures), long_pattern, s, budget,
                                       flows)
        ph, pw = x.shape[-2] - h, x.shape[-1] - w
        if ph or pw:  # a no-op slice would export as `alias`, which coremltools rejects
            out = out[..., :h, :w]
        return out, stats

    def window_flows(self, frames: torch.Tensor, exposures: torch.Tensor,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """O_{t->n} and O_{n->t} of a window, each (B*T', 2, H'/f, W'/f) on the padded frame's
        grid at 1/flow_scale: crops of them are a tile's flows (`forward(..., flows=)`), so a
        tiled run aligns with the whole frame's motion, not each tile's."""
        if not is_tracing():
            check_frames(frames, exposures, self.cfg.num_frames)
        h, w = frames.shape[-2:]
        size = (h + (-h) % PAD_MULTIPLE, w + (-w) % PAD_MULTIPLE)
        if size[0] % self.cfg.flow_scale or size[1] % self.cfg.flow_scale:
            # SpyNet resamples instead of pooling: no per-position guide to split
            flows = self._flows(self._padded_inputs(frames, exposures)[:, :, 3:].clamp(0, 1),
                                frames.shape[1] // 2)
            grid = flow_grid(size, self.cfg.flow_scale)
            return resize_flow(flows[0], grid), resize_flow(flows[1], grid)
        return self.flows_from_guide(self.flow_guide(frames, exposures))

    def flow_guide(self, frames: torch.Tensor, exposures: torch.Tensor) -> torch.Tensor:
        """SpyNet's input, the window's exposure-normalised frames padded and pooled to
        1/flow_scale: (B, T, 3, H'/f, W'/f). Per position, so a tile's guide is the crop of the
        frame's (tile origins on multiples of lcm(8, f)); a program computes it tile by tile
        and never holds a full-resolution intermediate."""
        h, w = frames.shape[-2:]
        pad = ((-h) % PAD_MULTIPLE, (-w) % PAD_MULTIPLE)
        fs = self.cfg.flow_scale
        if (h + pad[0]) % fs or (w + pad[1]) % fs:
            raise ValueError(f"flow_scale {fs} does not divide the padded size "
                             f"{h + pad[0]}x{w + pad[1]}")
        return pooled_guide(frames, exposures, self.cfg.gamma, pad, fs)

    def flows_from_guide(self, guide: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`window_flows` from a whole frame's `flow_guide`, on its grid: every neighbour's
        pair in one SpyNet call."""
        nb = neighbours(guide, guide.shape[1] // 2)
        cur = guide[:, guide.shape[1] // 2:guide.shape[1] // 2 + 1].expand_as(nb)
        return self.pair_flows_from_guide(_stack(cur), _stack(nb))

    def pair_flows_from_guide(self, guide_a: torch.Tensor, guide_b: torch.Tensor,
                              ) -> tuple[torch.Tensor, torch.Tensor]:
        """O_{a->b} and O_{b->a}, each (N, 2, h, w), of frames' guides (N, 3, h, w): the rows of
        `flows_from_guide` for the centre a and one neighbour b. SpyNet's pairs are
        independent, so a window's flows are these, one neighbour at a time (a program that
        runs them so holds one pair's buffers instead of the window's)."""
        n, grid = guide_a.shape[0], tuple(guide_a.shape[-2:])
        flow = self.spynet.estimate(torch.cat((guide_a, guide_b)), torch.cat((guide_b, guide_a)),
                                    1)
        return resize_flow(flow[:n], grid), resize_flow(flow[n:], grid)

    def _padded_inputs(self, frames: torch.Tensor, exposures: torch.Tensor) -> torch.Tensor:
        return pad_frames(prepare_inputs(frames, exposures, self.cfg.gamma), PAD_MULTIPLE)

    def frame_inputs(self, frames: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
        """Single frames' padded Eq. 1 input: frames (N, 3, H, W) gamma LDR, rel (N, 1) each
        frame's exposure relative to the shortest of the window it serves -> (N, 6, H', W'),
        what `_padded_inputs` gives those frames inside that window (an encoder's input)."""
        x = normalise_exposure(frames, rel.reshape(-1, 1, 1, 1), self.cfg.gamma)
        return pad_frames(x.unsqueeze(0), PAD_MULTIPLE)[0]

    def _reconstruct(self, x: torch.Tensor, rel: torch.Tensor, pattern: tuple[bool, ...],
                     s: float, budget: tuple[int, int, int] | None,
                     flows: tuple[torch.Tensor, torch.Tensor] | None = None,
                     ) -> tuple[torch.Tensor, ForwardStats]:
        feats = self._encode(x, pattern)        # 4 x (centre, neighbours)
        if flows is None:
            flows = self._flows(x[:, :, 3:].clamp(0, 1), x.shape[1] // 2)
        if self.training and not is_tracing():
            # Read by training for its flow-supervision term (a step's loss must reach SpyNet
            # through the same forward, also under DDP); never set in eval or export.
            self.last_flows = flows
        return self.fuse(x, rel, feats, flows, s, budget)

    def fuse(self, x: torch.Tensor, rel: torch.Tensor, feats: list[torch.Tensor],
             flows: tuple[torch.Tensor, torch.Tensor], s: float,
             budget: tuple[int, int, int] | None = None) -> tuple[torch.Tensor, ForwardStats]:
        """Everything after the encoders and SpyNet, for the centre frame of a window.

        x: (B, T, 6, H, W) padded Eq. 1 input; rel: (B, T) relative exposures; feats: per
        level 1, 2, 3 and the latent, the encoder features of the centre frame (B, C, h, w) and
        of its neighbours (B*T', C, h, w), batch-major in time order (`_encode`); flows:
        O_{t->n}, O_{n->t} as (B*T', 2, h', w') on SpyNet's grid. A stream that encodes each
        frame once and computes each flow once (`dealthdr.stream`) calls this per window.
        Returns the padded HDR (B, 3, H, W) and what FGMA did.
        """
        b, t, _, h, w = x.shape
        centre = t // 2
        flow_t_n, flow_n_t = flows
        cur = self.middle_router(*feats[3])
        cur = self.middle(cur)
        stats = ForwardStats()
        # Eq. 4-5 compute D on L_t, the centre frame as captured (its own exposure, gamma
        # domain), not on the exposure-normalised guide: there a long centre is 8^(1/2.2) = 2.6x
        # darker, its D as much smaller, and one s would select far fewer positions for it.
        own = rel[:, centre].view(-1, 1, 1, 1) ** (1.0 / self.cfg.gamma)
        frame_t = (x[:, centre, 3:].clamp(0, 1) * own).clamp(0, 1)
        # Inference hands FGMA's output to its projection as parts (`dealthdr.model.align`);
        # exported graphs and training keep one concatenation and one convolution.
        parts = not (is_tracing() or torch.is_grad_enabled())
        warped_images = fetched = None  # the merge's inputs where attention fetches pixels
        for i, level in enumerate((3, 2, 1)):
            skip, near = feats[level - 1]  # the centre's encoder features and its neighbours'
            cur = self.skips[i](torch.cat((self.ups[i](cur), skip), 1))
            size = cur.shape[-2:]
            scale = 2 ** (level - 1)
            frame_l = F.avg_pool2d(frame_t, scale) if scale > 1 else frame_t
            k = None if budget is None else budget[level - 1]
            pixels = None
            if level == 1 and self.cfg.merge_attention and s != 0 and k != 0:
                # The merge's warp moves up to this level: its linear images are the values
                # FGMA fetches the neighbours' pixels with.
                warped_images = self.merge.align(x[:, :, :3], rel,
                                                  resize_flow(flow_t_n, (h, w)), centre)
                pixels = warped_images[:, :3]
            aligned, executed, *taken = self.fgma[i](
                cur, near, resize_flow(flow_t_n, size), resize_flow(flow_n_t, size), frame_l,
                s, k, parts=parts, pixels=pixels)
            if taken:
                fetched = (taken[0], executed)
            cur = self.routers[i](cur, self.align_proj[i](aligned))
            cur = self.decoder[i](cur)
            if not is_tracing():
                stats.attended.insert(0, int(executed.sum().item()))
                stats.positions.insert(0, executed.numel())
                ran, total = _tiles_run(executed, self.cfg.attn_tile, s,
                                        None if budget is None else budget[level - 1])
                stats.tiles.insert(0, ran)
                stats.tiles_total.insert(0, total)
        head = self.head(cur)
        if not self.cfg.merge_base:
            return F.relu(x[:, centre, :3] + head), stats
        # The merge's warp reads its corners after the decoder, not beside FGMA's level-1 warp.
        base = self.merge(x[:, :, :3], rel, after(resize_flow(flow_t_n, (h, w)), head), centre,
                          head[:, 3:], warped_images, fetched)
        return F.relu(base + head[:, :3]), stats

    def _encode(self, x: torch.Tensor, pattern: tuple[bool, ...],
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Run each encoder once on its frames. Returns per level 1, 2, 3 and the latent the
        centre frame's features (B, C, h, w) and the neighbours' (B*T', C, h, w), batch-major in
        time order: what `fuse` reads, taken straight from the two encoders' outputs. Putting
        all frames back in time order first would copy every level twice more, and those copies
        live until the decoder reaches their level (a third of an exported graph's arena)."""
        b, t = x.shape[:2]
        short = [i for i in range(t) if not pattern[i]]
        long_ = [i for i in range(t) if pattern[i]]
        centre = t // 2
        # The centre exposure's encoder first: an exported graph's delegate calls then take
        # their inputs in the same order for both centres (the centre exposure's frames, then
        # the other's), so the calls downstream of the encoders serialise to the same bytes in
        # the two methods of a program and are stored once.
        if pattern[centre]:
            fl = self.encoder_long(_stack(take(x, long_)))
            fs = self.encoder_short(_stack(take(x, short)))
        else:
            fs = self.encoder_short(_stack(take(x, short)))
            fl = self.encoder_long(_stack(take(x, long_)))
        out = []
        for per_short, per_long in zip(fs, fl):
            def frame(i: int) -> torch.Tensor:  # (B, C, h, w) of frame i
                src, order = (per_long, long_) if pattern[i] else (per_short, short)
                j = order.index(i)
                if b == 1:  # a reshape is free in eager but a copy inside a delegate
                    return src[j:j + 1]
                return src.reshape(b, len(order), *src.shape[1:])[:, j]
            near = [frame(i) for i in range(t) if i != centre]
            near = torch.cat(near) if b == 1 else _stack(torch.stack(near, 1))
            out.append((frame(centre), near))
        return out

    def _flows(self, guide: torch.Tensor, centre: int, scale: int | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both directions for every neighbour in one SpyNet call on 2*B*T' pairs.
        Returns O_{t->n} and O_{n->t}, each (B*T', 2, h', w') at SpyNet's working resolution."""
        nb = neighbours(guide, centre)
        cur = guide[:, centre:centre + 1].expand(-1, nb.shape[1], -1, -1, -1)
        ref = torch.cat((_stack(cur), _stack(nb)), dim=0)
        supp = torch.cat((_stack(nb), _stack(cur)), dim=0)
        flow = self.spynet.estimate(ref, supp, self.cfg.flow_scale if scale is None else scale)
        half = flow.shape[0] // 2
        return flow[:half], flow[half:]


def _tiles_run(executed: torch.Tensor, tile: int, s: float, k: int | None) -> tuple[int, int]:
    """Tiles FGMA's attention ran in at one level, and the tiles there are (all neighbours)."""
    per = math.prod(tile_grid(*executed.shape[-2:], tile))
    total = executed.shape[0] * per
    if s == 0 or k == 0:
        return 0, total
    if k is None:  # dynamic: every tile holding a masked position
        return int((tile_max(executed, tile) > 0).sum()), total
    return executed.shape[0] * bucket_tiles(min(k, per), per), total


def _stack(x: torch.Tensor) -> torch.Tensor:
    """(B, T, ...) -> (B*T, ...), batch-major."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])
