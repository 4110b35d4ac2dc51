"""Non-learned baselines for `dealthdr evaluate`, on the model's own input window.

Each takes a window of 5 gamma-encoded LDR frames (5, 3, H, W) in [0, 1] with their exposure
times (5,) (`classical_gt_flow` also the window's ground-truth flows), and returns the centre
frame's linear HDR (3, H, W) in the short exposure's units, like the network.

- `reference`: the centre frame alone, linearised and exposure-normalised (Eq. 1); the paper's
  head adds a learned residual to it.
- `classical`: the centre frame merged with its 4 neighbours after classical optical-flow
  alignment (OpenCV DIS), with exposure-aware per-pixel weights: the merge the `tiny` head
  refines, with DIS flow instead of the network's, no learned correction, and its own
  consistency scale (`CLASSICAL_CONSISTENCY`).
- `unaligned`: the same merge with zero flow. Against `classical` it measures how much
  alignment matters on a set of clips at all; against `classical_gt_flow` (the same merge with
  the clips' ground-truth flow, `dealthdr evaluate --gt-flow`), how much better alignment than
  DIS's could still buy.
"""
from __future__ import annotations

import numpy as np
import torch

from .model.merge import ExposureMerge

GAMMA = 2.2
# The merge's consistency scale for `classical`, chosen on the training split (32 clips of
# `dealthdr synth --split train --seed 1`, 128x128): PSNR-mu 24.17 / 25.70 / 25.96 / 26.01 /
# 26.01 dB at 0.04 / 0.08 / 0.12 / 0.16 / 0.24. Stricter scales read a noisy short centre's
# own noise as misalignment and throw away its aligned neighbours, which made the baseline
# look 2 dB worse than a classical merge is.
CLASSICAL_CONSISTENCY = 0.16


def _window(frames: np.ndarray | torch.Tensor, exposures: np.ndarray | torch.Tensor,
            ) -> tuple[np.ndarray, np.ndarray]:
    """Check and convert to float32 (T, H, W, 3) LDR and relative exposures (T,)."""
    if torch.is_tensor(frames):
        frames = frames.detach().cpu().numpy()
    if torch.is_tensor(exposures):
        exposures = exposures.detach().cpu().numpy()
    frames = np.asarray(frames, dtype=np.float32)
    exposures = np.asarray(exposures, dtype=np.float64).reshape(-1)
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[0] % 2 == 0:
        raise ValueError(f"frames must be (T, 3, H, W) with T odd, got {frames.shape}")
    if exposures.shape != (frames.shape[0],):
        raise ValueError(f"{frames.shape[0]} frames but exposures of shape {exposures.shape}")
    if not np.isfinite(exposures).all() or (exposures <= 0).any():
        raise ValueError("exposures must be finite and positive")
    return frames.transpose(0, 2, 3, 1).clip(0, 1), exposures / exposures.min()


def _linear(ldr: np.ndarray, rel: float) -> np.ndarray:
    """Eq. 1: inverse gamma, then divide by the exposure relative to the shortest."""
    return ldr ** GAMMA / rel


def reference(frames: np.ndarray | torch.Tensor, exposures: np.ndarray | torch.Tensor,
              ) -> np.ndarray:
    """The exposure-normalised linearised centre frame, (3, H, W) float32."""
    ldr, rel = _window(frames, exposures)
    c = len(ldr) // 2
    return _linear(ldr[c], rel[c]).transpose(2, 0, 1).astype(np.float32)


def dis_flow(ref: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """DIS flow O_{ref->moving} (H, W, 2): ref(p) ~ moving(p + flow(p)). Grey uint8 inputs."""
    import cv2

    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return dis.calc(ref, moving, None)


def grey_u8(img: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(np.round(img.clip(0, 1) * 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)


def classical(frames: np.ndarray | torch.Tensor, exposures: np.ndarray | torch.Tensor,
              ) -> np.ndarray:
    """Align every neighbour to the centre with DIS flow and merge, (3, H, W) float32.

    Flow is computed on exposure-normalised gamma images (the network's guide images), where a
    short and a long frame of the same scene look alike except for clipping and noise. The
    merge is the network's own `ExposureMerge` (dealthdr/model/merge.py) with these flows and no
    learned correction: each frame contributes its linear image with weight
        well-exposedness(ldr_i) * noise weight(r_i) * consistency(i, centre) * in-bounds,
    the noise weight being the inverse variance of the exposure-normalised value at the
    centre's smoothed radiance (a long frame collects r times the light), and consistency
    dropping pixels whose aligned neighbour disagrees with the centre (checked against the
    centre's clipping level, since a saturated centre only says "at least this bright").
    """
    lin, rel, c = _linear_window(frames, exposures)
    grey = [grey_u8(np.clip(x, 0, 1) ** (1 / GAMMA)) for x in lin]
    flows = np.stack([dis_flow(grey[c], grey[i]) for i in range(len(lin)) if i != c])
    return _merge(lin, rel, c, flows.transpose(0, 3, 1, 2))


def unaligned(frames: np.ndarray | torch.Tensor, exposures: np.ndarray | torch.Tensor,
              ) -> np.ndarray:
    """`classical`'s merge with zero flow: every neighbour taken where it lies."""
    lin, rel, c = _linear_window(frames, exposures)
    return _merge(lin, rel, c, np.zeros((len(lin) - 1, 2, *lin.shape[1:3]), np.float32))


def classical_gt_flow(frames: np.ndarray | torch.Tensor, exposures: np.ndarray | torch.Tensor,
                      gt_flows: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """`classical`'s merge with the window's ground-truth O_{t->n} ((T-1, 2, H, W) pixels, the
    first of `dealthdr.evaluate.window_gt_flows`) in place of DIS's: an oracle."""
    lin, rel, c = _linear_window(frames, exposures)
    return _merge(lin, rel, c, np.asarray(gt_flows[0], dtype=np.float32))


def _linear_window(frames: np.ndarray | torch.Tensor, exposures: np.ndarray | torch.Tensor,
                   ) -> tuple[np.ndarray, np.ndarray, int]:
    """The checked window as linear frames (T, H, W, 3), relative exposures and the centre."""
    ldr, rel = _window(frames, exposures)
    lin = np.stack([_linear(ldr[i], rel[i]) for i in range(len(ldr))]).astype(np.float32)
    return lin, rel, len(ldr) // 2


def _merge(lin: np.ndarray, rel: np.ndarray, c: int, flows: np.ndarray) -> np.ndarray:
    """The merge of `classical` with flows (T-1, 2, H, W) O_{t->n}, (3, H, W) float32."""
    shape = (len(lin) - 1, 2, *lin.shape[1:3])
    if flows.shape != shape:
        raise ValueError(f"flows must be {shape}, got {flows.shape}")
    # (T, H, W, 3) frames to the merge's (1, T, 3, H, W); flows are (T-1, 2, H, W) already
    with torch.no_grad():
        out = ExposureMerge(gamma=GAMMA, consistency=CLASSICAL_CONSISTENCY)(
            torch.from_numpy(lin.transpose(0, 3, 1, 2).copy()).unsqueeze(0),
            torch.from_numpy(rel.astype(np.float32)).unsqueeze(0),
            torch.from_numpy(np.ascontiguousarray(flows, dtype=np.float32)), c)
    return out[0].numpy().astype(np.float32)


BASELINES = {"reference": reference, "classical": classical, "unaligned": unaligned}
# Baselines with a ground-truth-flow oracle row under `dealthdr evaluate --gt-flow`.
GT_FLOW_BASELINES = {"classical": classical_gt_flow}
