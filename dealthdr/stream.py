"""Streaming inference: each input frame is encoded once and each frame pair's flow computed
once, however many windows use them.

A video's 5-frame windows overlap: frame i belongs to the windows centred at i-2 .. i+2, and the
pair (i, j), |i - j| <= 2, to the windows centred at i and at j. The window path recomputes both
every time (each frame through its encoder 5 times, each flow twice). `FrameStream` keeps, in
a ring bounded by the window, each frame's encoder features and each directed pair's SpyNet
flow, and per output frame runs only what is new plus the fusion (`DeAltHDR.fuse`: router,
middle, FGMA, decoder, head, merge). The numbers are the window path's: the same modules on the
same inputs, batched differently (tested to 1e-5).

Eq. 1 brings each frame to the brightness of the shortest exposure of its window, so a frame's
input, features and flows depend on that window's exposures. Cache entries are therefore keyed
by (frame index, relative exposure): with a fixed alternating schedule every window gives a frame
the same relative exposure and everything is reused; when exposures change mid-stream (auto
exposure), the frames of a window whose shortest exposure changed are encoded again.
"""
from __future__ import annotations

import torch

from .model import DeAltHDR
from .model.inputs import (check_alternating, check_frames, long_pattern_from_exposures,
                           relative_exposures)
from .model.network import ForwardStats

Key = tuple[int, float]  # (frame index in the sequence, exposure relative to its window's min)


class FrameStream:
    """Per-window reconstruction with encoder features and flows cached across windows.

    Call it with consecutive windows (as `dealthdr reconstruct` builds them, indices reflected
    at the sequence ends); entries of frames before the current window are dropped, so memory
    holds one window's features and flows. Untiled frames only: a tiled frame's tiles are
    separate inputs (`dealthdr.tiling` runs windows).
    """

    def __init__(self, model: DeAltHDR, s: float, budget: tuple[int, int, int] | None = None,
                 ) -> None:
        self.model, self.s, self.budget = model, s, budget
        self.features: dict[Key, list[torch.Tensor]] = {}
        self.flows: dict[tuple[Key, Key], torch.Tensor] = {}
        self.encoded = 0   # frames run through an encoder (what a window path would run 5x)
        self.estimated = 0  # directed pairs run through SpyNet

    @torch.no_grad()
    def __call__(self, indices: list[int], frames: torch.Tensor, exposures: torch.Tensor,
                 ) -> tuple[torch.Tensor, ForwardStats]:
        """frames (1, T, 3, H, W) gamma LDR of the frames `indices`, exposures (1, T) ->
        HDR (1, 3, H, W) of the centre frame in units of the window's shortest exposure."""
        model = self.model
        if frames.shape[0] != 1 or len(indices) != frames.shape[1]:
            raise ValueError("FrameStream takes one window: frames (1, T, 3, H, W) and T indices")
        check_frames(frames, exposures, model.cfg.num_frames)
        pattern = long_pattern_from_exposures(exposures)
        check_alternating(pattern)
        h, w = frames.shape[-2:]
        x = model._padded_inputs(frames, exposures)
        rel = relative_exposures(exposures)
        keys = [(i, float(r)) for i, r in zip(indices, rel[0].tolist())]
        self._forget(min(indices), keys)
        self._encode_missing(x, keys, pattern)
        centre = len(keys) // 2
        near = _neighbours(keys, centre)
        feats = [(self.features[keys[centre]][lv], torch.cat([self.features[k][lv] for k in near]))
                 for lv in range(4)]
        self._estimate_missing(x, keys, centre)
        flows = (torch.cat([self.flows[keys[centre], n] for n in near]),
                 torch.cat([self.flows[n, keys[centre]] for n in near]))
        out, stats = model.fuse(x, rel, feats, flows, self.s, self.budget)
        return out[..., :h, :w], stats

    def _forget(self, first: int, keep: list[Key]) -> None:
        """Drop entries of frames before the window, and stale exposures of frames in it."""
        wanted, frames = set(keep), {i for i, _ in keep}
        for k in [k for k in self.features if k[0] < first or
                  (k not in wanted and k[0] in frames)]:
            del self.features[k]
        for pair in [p for p in self.flows if not (p[0] in self.features and
                                                     p[1] in self.features)]:
            del self.flows[pair]

    def _encode_missing(self, x: torch.Tensor, keys: list[Key],
                        pattern: tuple[bool, ...]) -> None:
        """Run each exposure's encoder once on its frames not cached yet."""
        todo: dict[Key, int] = {}
        for pos, k in enumerate(keys):
            if k not in self.features and k not in todo:
                todo[k] = pos
        for is_long, encoder in ((False, self.model.encoder_short),
                                 (True, self.model.encoder_long)):
            part = [(k, pos) for k, pos in todo.items() if pattern[pos] == is_long]
            if not part:
                continue
            out = encoder(x[0, [pos for _, pos in part]])
            for j, (k, _) in enumerate(part):
                self.features[k] = [level[j:j + 1] for level in out]
            self.encoded += len(part)

    def _estimate_missing(self, x: torch.Tensor, keys: list[Key], centre: int) -> None:
        """SpyNet once, on every directed (centre, neighbour) pair not cached yet."""
        guide = {k: x[0, pos, 3:].clamp(0, 1) for pos, k in enumerate(keys)}
        todo = []
        for n in _neighbours(keys, centre):
            for pair in ((keys[centre], n), (n, keys[centre])):
                if pair not in self.flows and pair not in todo:
                    todo.append(pair)
        if not todo:
            return
        ref = torch.stack([guide[a] for a, _ in todo])
        supp = torch.stack([guide[b] for _, b in todo])
        flow = self.model.spynet.estimate(ref, supp, self.model.cfg.flow_scale)
        for j, pair in enumerate(todo):
            self.flows[pair] = flow[j:j + 1]
        self.estimated += len(todo)


def _neighbours(keys: list[Key], centre: int) -> list[Key]:
    """The window's frames other than the centre, in time order (as `inputs.neighbours`)."""
    return [k for j, k in enumerate(keys) if j != centre]
