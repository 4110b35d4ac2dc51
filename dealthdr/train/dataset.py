"""Training windows from clip folders, and a batch sampler that keeps DDP ranks in step.

A batch must share the short/long pattern (the dual encoders split it by exposure), so batches
are built per centre parity. Everything random is a pure function of (seed, epoch, index), so a
resumed run sees exactly the batches the killed run would have seen.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..data.clip import read_clip, list_clips
from ..model.config import DeAltHDRConfig
from ..model.inputs import neighbour_offsets

log = logging.getLogger(__name__)


class WindowDataset(Dataset):
    """Every full window of `frames` frames of every clip under `root`, as tensors.

    Item: frames (T, 3, h, w) LDR, exposures (T,), hdr (3, h, w) centre ground truth, and, when
    the clips carry ground-truth flow, flow_t_n / flow_n_t (T-1, 2, h, w): O_{t->n} and
    O_{n->t} for the neighbours in time order (n = t-2, t-1, t+1, t+2 for T = 5; NaN where
    unknown). Clips are decoded once and kept in memory as float16.

    Args:
        root: folder of clip folders (as written by `dealthdr synth`).
        patch: random crop size (square); None for whole frames.
        flip: random horizontal flips (the flow's dx is negated with the image).
        seed: base seed of the crops and flips.
        frames: window length T, the network's `num_frames`.
    """

    def __init__(self, root: str | Path, patch: int | None = None, flip: bool = True,
                 seed: int = 0, frames: int = DeAltHDRConfig.num_frames) -> None:
        self.patch, self.flip, self.seed, self.epoch = patch, flip, seed, 0
        self.offsets, self.half = neighbour_offsets(frames), frames // 2
        self.clips = []
        for path in list_clips(root):
            clip = read_clip(path)
            if clip.hdr is None:
                raise ValueError(f"{path}: no hdr/ ground truth; training needs it")
            if len(clip) < frames:
                raise ValueError(f"{path}: {len(clip)} frames, a window needs {frames}")
            if patch and (patch > clip.ldr.shape[1] or patch > clip.ldr.shape[2]):
                raise ValueError(f"{path}: frames smaller than the {patch}px patch")
            if clip.flow is not None and not set(self.offsets) <= set(clip.flow_offsets):
                raise ValueError(f"{path}: ground-truth flow for offsets {clip.flow_offsets}, a "
                                 f"{frames}-frame window needs {self.offsets}")
            self.clips.append({
                "ldr": clip.ldr.astype(np.float16), "hdr": clip.hdr.astype(np.float16),
                "flow": None if clip.flow is None else clip.flow.astype(np.float16),
                "offsets": clip.flow_offsets, "exposures": clip.exposures.astype(np.float32)})
        self.index = [(c, t) for c, clip in enumerate(self.clips)
                      for t in range(self.half, len(clip["ldr"]) - self.half)]
        self.has_flow = all(c["flow"] is not None for c in self.clips)
        log.info("%d windows from %d clips (flow: %s)", len(self.index), len(self.clips),
                 self.has_flow)

    def __len__(self) -> int:
        return len(self.index)

    def centre_is_long(self, i: int) -> bool:
        c, t = self.index[i]
        exp = self.clips[c]["exposures"]
        return bool(exp[t] / exp.min() > 1.01)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        c, t = self.index[i]
        clip = self.clips[c]
        rng = np.random.default_rng((self.seed, self.epoch, i))
        h, w = clip["ldr"].shape[1:3]
        y = x = 0
        ph, pw = h, w
        if self.patch:
            ph = pw = self.patch
            y, x = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        sl = (slice(y, y + ph), slice(x, x + pw))
        win = slice(t - self.half, t + self.half + 1)
        item = {"frames": _chw(clip["ldr"][win, sl[0], sl[1]]), "exposures": torch.from_numpy(
                    clip["exposures"][win].copy()),
                "hdr": _chw(clip["hdr"][t, sl[0], sl[1]])}
        if clip["flow"] is not None:
            k = {o: j for j, o in enumerate(clip["offsets"])}
            t_n = np.stack([clip["flow"][t, k[o], :, sl[0], sl[1]] for o in self.offsets])
            n_t = np.stack([clip["flow"][t + o, k[-o], :, sl[0], sl[1]] for o in self.offsets])
            item["flow_t_n"] = torch.from_numpy(t_n.astype(np.float32))
            item["flow_n_t"] = torch.from_numpy(n_t.astype(np.float32))
        if self.flip and rng.random() < 0.5:
            item = {k: v.flip(-1) if v.dim() >= 3 else v for k, v in item.items()}
            for key in ("flow_t_n", "flow_n_t"):
                if key in item:
                    item[key][:, 0] = -item[key][:, 0]
        return item


def _chw(a: np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) float16 -> (..., 3, H, W) float32."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, -3), dtype=np.float32))


class ParityBatchSampler(Sampler[list[int]]):
    """Shuffled batches whose windows share the centre's exposure, sharded across DDP ranks.

    The order of an epoch is a function of (seed, epoch) only; `skip` drops the first batches
    of this rank's share, which is how a resumed run continues mid-epoch.
    """

    def __init__(self, dataset: WindowDataset, batch_size: int, seed: int = 0, rank: int = 0,
                 world: int = 1) -> None:
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world = rank, world
        self.epoch, self.skip = 0, 0
        groups = [[], []]
        for i in range(len(dataset)):
            groups[dataset.centre_is_long(i)].append(i)
        self.groups = [g for g in groups if g]
        if sum(len(g) // batch_size for g in self.groups) < world:
            raise ValueError(f"{len(dataset)} windows make fewer than {world} batches of "
                             f"{batch_size}; synthesise more clips or lower --batch")

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch, 7))
        batches = []
        for g in self.groups:
            order = [g[j] for j in rng.permutation(len(g))]
            batches += [order[i:i + self.batch_size]
                        for i in range(0, len(order) - self.batch_size + 1, self.batch_size)]
        batches = [batches[j] for j in rng.permutation(len(batches))]
        usable = len(batches) - len(batches) % self.world  # every rank takes the same count
        return batches[self.rank:usable:self.world]

    def __iter__(self):
        return iter(self._batches()[self.skip:])

    def __len__(self) -> int:
        return len(self._batches()) - self.skip
