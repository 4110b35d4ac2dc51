"""Exposure-aware merge: the image the output head refines when `merge_base` is on.

The paper's network regresses the HDR frame from decoder features. A small variant cannot
carry full-resolution detail of the 4 neighbours through a 16-channel feature path, so its
output stays close to the noisy centre frame (the shipped `tiny` lost 1.3 dB PSNR-mu to a
classical flow-and-merge baseline with the plain head). With `merge_base`, the network first
merges the centre frame with its 4 neighbours in the image domain, aligned with its own
SpyNet flow, and the head predicts a residual plus a per-frame log-weight correction:

    w_i = well_exposed(ldr_i) * noise_weight(r_i) * consistency_i * inside_i * exp(delta_i)
    out = relu(sum_i w_i lin_i / sum_i w_i + residual)

With `merge_attention` (a config field), where FGMA's level-1 mask M is executed the merge
takes each neighbour's pixels through that level's attention weights instead of the flow warp:
sum_j a_j lin_j over the window around the flow target, the weights of the features' attention.
Attention then reaches the image itself, not only the decoder features behind the head's
residual and weights, so a wrong flow can be corrected where M is set.

The fixed weights make the `classical` baseline of `dealthdr evaluate` (which calls this module
with OpenCV DIS flow), so a zero head starts from a classical merge with learned flow; the head
learns where to trust which frame (occlusions, blur, flow failures) and what the merge cannot
recover.

Every op is weight-free and export-friendly: one grid_sample over the stacked neighbours,
a separable Gaussian as two constant depthwise convs, channel max/clamp/exp.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import DeAltHDRConfig
from .inputs import neighbours
from .layers import positive_step, replicate_pad
from .spynet import flow_warp

# Well-exposedness: LDR values above SAT_LO lose weight linearly, at SAT_HI they have none
# (a clipped long frame says only "brighter than this").
SAT_LO, SAT_HI = 0.85, 0.97
# Noise model in each frame's own linear units: variance = v * SHOT + READ. Only the ratio
# matters: read noise dominates below v = READ / SHOT, where a long frame (r = 8) is worth
# r^2 = 64 short frames; above it, shot noise, worth r = 8 short frames.
SHOT, READ = 1.0, 2e-3
# Consistency: an aligned neighbour whose (smoothed, gamma-domain) difference to the centre
# exceeds a few CONSISTENCY_SIGMA is a misalignment (occlusion, flow failure), not noise. The
# default is the config's (`merge_consistency`), so a merge built alone matches the network's.
CONSISTENCY_SIGMA = DeAltHDRConfig.merge_consistency
SMOOTH_SIGMA = 1.5  # pixels; smoothing before the consistency test, so noise is not "motion"
CENTRE_FLOOR = 1e-6  # the centre always keeps some weight: the fallback where all else fails
DELTA_LIMIT = 6.0  # learned log-weights stay within exp(+-6): no overflow in fp16


def _gaussian_taps(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


class ExposureMerge(nn.Module):
    """Merge the centre frame with flow-aligned neighbours, exposure- and noise-aware."""

    def __init__(self, channels: int = 3, gamma: float = 2.2,
                 consistency: float = CONSISTENCY_SIGMA) -> None:
        super().__init__()
        self.gamma = gamma
        self.consistency = consistency
        taps = _gaussian_taps(SMOOTH_SIGMA)
        k = taps.numel()
        self.channels = channels
        # Non-persistent constants: not in checkpoints, a constant in exported graphs.
        self.register_buffer("blur_x", taps.view(1, 1, 1, k).repeat(channels, 1, 1, 1),
                             persistent=False)
        self.register_buffer("blur_y", taps.view(1, 1, k, 1).repeat(channels, 1, 1, 1),
                             persistent=False)

    def blur(self, x: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian (sigma SMOOTH_SIGMA) with replicated borders, per channel."""
        r = self.blur_x.shape[-1] // 2
        x = replicate_pad(x, r)
        x = F.conv2d(x, self.blur_x, groups=self.channels)
        return F.conv2d(x, self.blur_y, groups=self.channels)

    def align(self, lin: torch.Tensor, rel: torch.Tensor, flow_t_n: torch.Tensor,
              centre: int, ldr: torch.Tensor | None = None) -> torch.Tensor:
        """The neighbours' linear and LDR images warped by O_{t->n}, (B*(T-1), 6, H, W): one
        warp for both (arguments as in `forward`; `ldr` the frames' LDR where the caller has
        it)."""
        b, t, c, h, w = lin.shape
        if ldr is None:
            ldr = self._ldr(lin, rel.view(b, t, 1, 1, 1))
        stacked = torch.cat((neighbours(lin, centre), neighbours(ldr, centre)), dim=2)
        return flow_warp(stacked.reshape(b * (t - 1), 2 * c, h, w), flow_t_n,
                         padding_mode="border")

    def _ldr(self, lin: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return (lin * r).clamp(0, 1).clamp_min(1e-8) ** (1.0 / self.gamma)

    def forward(self, lin: torch.Tensor, rel: torch.Tensor, flow_t_n: torch.Tensor,
                centre: int, delta: torch.Tensor | None = None,
                warped: torch.Tensor | None = None,
                fetched: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """lin: (B, T, 3, H, W) exposure-normalised linear frames (Eq. 1); rel: (B, T) exposure
        relative to the shortest; flow_t_n: (B*(T-1), 2, H, W) O_{t->n} at full resolution,
        neighbours in time order; delta: (B, T, H, W) learned log-weight corrections or None;
        warped: `align`'s result when the caller has it; fetched: (pixels, M), the
        neighbours' linear pixels taken through attention, zero outside M (B*(T-1), 3, H, W),
        and M (B*(T-1), 1, H, W): they replace the flow-warped pixels where M is set.
        Returns the merged linear image (B, 3, H, W)."""
        b, t, c, h, w = lin.shape
        gamma_inv = 1.0 / self.gamma
        r = rel.view(b, t, 1, 1, 1)
        ldr = self._ldr(lin, r)
        lin_c, ldr_c = lin[:, centre], ldr[:, centre]
        r_c = r[:, centre]

        if warped is None:
            warped = self.align(lin, rel, flow_t_n, centre, ldr)
        warped = warped.reshape(b, t - 1, 2 * c, h, w)
        lin_n, ldr_n = warped[:, :, :c], warped[:, :, c:]
        if fetched is not None:
            pixels, m = (x.reshape(b, t - 1, -1, h, w) for x in fetched)
            lin_n = lin_n * (1.0 - m) + pixels
            ldr_n = ldr_n + m * (self._ldr(pixels, neighbours(r, centre)) - ldr_n)
        inside = _inside(flow_t_n).reshape(b, t - 1, h, w)

        x_c = self.blur(lin_c).amax(dim=1)                    # radiance for the noise model
        centre_clip = 1.0 / r_c                                 # (B, 1, 1, 1)
        g_c = self.blur(lin_c.clamp(0, 1).clamp_min(1e-8) ** gamma_inv)
        g_n = torch.minimum(lin_n, centre_clip.unsqueeze(1)).clamp(0, 1).clamp_min(1e-8)
        g_n = self.blur((g_n ** gamma_inv).reshape(b * (t - 1), c, h, w)).reshape(lin_n.shape)
        diff = (g_n - g_c.unsqueeze(1)).abs().amax(dim=2)
        consistency = torch.exp(-(diff / self.consistency) ** 2)

        r_n = neighbours(r, centre).view(b, t - 1, 1, 1)
        w_c = _well_exposed(ldr_c) * _noise_weight(r_c.view(b, 1, 1), x_c) + CENTRE_FLOOR
        w_n = (_well_exposed(ldr_n) * _noise_weight(r_n, x_c.unsqueeze(1))
               * consistency * inside)
        if delta is not None:
            d = DELTA_LIMIT * torch.tanh(delta / DELTA_LIMIT)
            w_c = w_c * torch.exp(d[:, centre])
            w_n = w_n * torch.exp(neighbours(d, centre))
        num = w_c.unsqueeze(1) * lin_c + (w_n.unsqueeze(2) * lin_n).sum(dim=1)
        den = w_c + w_n.sum(dim=1)
        return num / den.unsqueeze(1)


def _well_exposed(ldr: torch.Tensor) -> torch.Tensor:
    """1 below SAT_LO, 0 from SAT_HI up, on the brightest channel (dim -3 is colour)."""
    return ((SAT_HI - ldr.amax(dim=-3)) / (SAT_HI - SAT_LO)).clamp(0, 1)


def _noise_weight(r: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Inverse variance of the exposure-normalised value, scaled by READ so it stays <= r^2
    (fp16 sums of five weights would overflow at r^2 / READ)."""
    return r * r * READ / (SHOT * r * x + READ)


def _inside(flow: torch.Tensor) -> torch.Tensor:
    """1 where p + flow(p) lands inside the image, (N, 1, H, W). Channel slices of the flow,
    not selects: a select is a portable kernel in ExecuTorch, between two delegate calls."""
    _, _, h, w = flow.shape
    xs = torch.arange(w, dtype=flow.dtype, device=flow.device).view(1, 1, 1, w) + flow[:, :1]
    ys = torch.arange(h, dtype=flow.dtype, device=flow.device).view(1, 1, h, 1) + flow[:, 1:]
    # A product of float steps, not `&` of bools: coremltools has no `__and__`, and XNNPACK
    # delegates neither comparisons nor bool casts. 1 - step(v) is v <= 0.
    return ((1 - positive_step(-xs)) * (1 - positive_step(xs - (w - 1)))
            * (1 - positive_step(-ys)) * (1 - positive_step(ys - (h - 1))))
