"""Input preparation (Eq. 1) and input checks shared by the model and the tools around it."""
from __future__ import annotations

import torch
import torch.nn.functional as F


CENTRES = ("short", "long")  # exposure of a window's centre frame


def _check_window(frames: int) -> None:
    if frames < 3 or frames % 2 == 0:
        raise ValueError(f"a window needs an odd number of frames >= 3 (a centre and as many "
                         f"neighbours before as after it), got {frames!r}")


def window_pattern(centre: str, frames: int) -> tuple[bool, ...]:
    """long_pattern of an alternating window of `frames` frames (odd, >= 3) whose centre has
    exposure `centre` ("short" or "long")."""
    if centre not in CENTRES:
        raise ValueError(f"centre must be one of {CENTRES}, got {centre!r}")
    _check_window(frames)
    # alternating: the frames an even distance from the centre have its exposure
    return tuple(((i - frames // 2) % 2 == 0) == (centre == "long") for i in range(frames))


def neighbour_offsets(frames: int) -> tuple[int, ...]:
    """Time offsets of a window's neighbours from its centre, in time order:
    (-2, -1, 1, 2) for 5 frames."""
    _check_window(frames)
    half = frames // 2
    return tuple(o for o in range(-half, half + 1) if o != 0)


def is_tracing() -> bool:
    """True under torch.export / torch.compile, where data-dependent checks cannot run."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def after(x: torch.Tensor, dep: torch.Tensor) -> torch.Tensor:
    """In an exported graph, x computed once `dep` exists: x + 0 * (one element of dep, clamped
    so that an infinite one still adds exactly 0); x itself in eager mode.

    A warp needs only encoder features and flows, so without this edge a delegate partitioner
    may run every warp of the network in one call, all their corner reads alive at once
    (measured: the 12 reads of FGMA's three levels in one XNNPACK call, 178 MB of planned
    activations at s=0; 122 MB with each level's warps tied to its decoder feature). FGMA ties
    its attention steps the same way, so no partitioner can hold every step's scores at once.
    A slice of every dim, not a reshape: a reshape of a channels-last map makes XNNPACK
    transpose it."""
    if not is_tracing():
        return x
    return x + dep[(slice(0, 1),) * dep.dim()].clamp(-1.0, 1.0) * 0.0


def take(x: torch.Tensor, indices: list[int]) -> torch.Tensor:
    """x[:, indices] as slices and a concat: indexing with a list exports as a portable `index`
    op, slices and concat are delegated."""
    if len(indices) == 1:
        return x[:, indices[0]:indices[0] + 1]
    return torch.cat([x[:, i:i + 1] for i in indices], dim=1)


def neighbours(x: torch.Tensor, centre: int) -> torch.Tensor:
    """x[:, every index but `centre`] along dim 1, in order."""
    return take(x, [i for i in range(x.shape[1]) if i != centre])


def check_frames(frames: torch.Tensor, exposures: torch.Tensor | None, num_frames: int) -> None:
    """Raise ValueError with a precise message for input the network cannot use."""
    if not torch.is_tensor(frames) or frames.dim() != 5:
        raise ValueError("frames must be a (B, T, 3, H, W) tensor, got "
                         f"{getattr(frames, 'shape', type(frames))}")
    b, t, c, h, w = frames.shape
    if t != num_frames:
        raise ValueError(f"expected {num_frames} frames per window, got {t}")
    if c != 3:
        raise ValueError(f"expected 3 colour channels (RGB), got {c}")
    if not frames.is_floating_point():
        raise ValueError(f"frames must be floating point in [0, 1], got {frames.dtype}; "
                         "divide 8-bit input by 255 and 16-bit input by 65535")
    if h < 8 or w < 8:
        raise ValueError(f"frames of {h}x{w} are too small (minimum 8x8)")
    if not torch.isfinite(frames).all():
        raise ValueError("frames contain NaN or Inf")
    lo, hi = frames.min().item(), frames.max().item()
    if lo < 0 or hi > 1 + 1e-4:
        raise ValueError(f"frames must be LDR values in [0, 1], got range [{lo:.4g}, {hi:.4g}]; "
                         "divide 8-bit input by 255 and 16-bit input by 65535")
    if exposures is not None:
        if exposures.shape != (b, t):
            raise ValueError(f"exposures must be (B, T) = {(b, t)}, got {tuple(exposures.shape)}")
        if not torch.isfinite(exposures).all() or (exposures <= 0).any():
            raise ValueError("exposures must be finite and positive")


def long_pattern_from_exposures(exposures: torch.Tensor) -> tuple[bool, ...]:
    """Which positions of the window are long exposures, read from relative exposure times.

    Every sample of a batch must share the pattern (the dual encoders split the batch by it),
    and it must alternate, as the paper's capture does.
    """
    rel = exposures / exposures.min(dim=1, keepdim=True).values
    patterns = {tuple(bool(v) for v in row) for row in (rel > 1.01).tolist()}
    if len(patterns) != 1:
        raise ValueError("samples of one batch have different short/long patterns; "
                         "batch windows whose centre frame has the same exposure")
    pattern = patterns.pop()
    check_alternating(pattern)
    return pattern


def check_alternating(pattern: tuple[bool, ...]) -> None:
    if any(a == b for a, b in zip(pattern, pattern[1:])):
        shown = "".join("L" if p else "S" for p in pattern)
        raise ValueError(f"exposures must alternate short/long, got pattern {shown}")


def exposures_from_pattern(pattern: tuple[bool, ...], ratio: float, batch: int,
                           device: torch.device | None = None) -> torch.Tensor:
    row = torch.tensor([ratio if p else 1.0 for p in pattern], device=device)
    return row.expand(batch, -1).clone()


def relative_exposures(exposures: torch.Tensor) -> torch.Tensor:
    """(B, T) exposure times relative to the shortest of each window (1 and e.g. 8)."""
    return exposures / exposures.min(dim=1, keepdim=True).values


def prepare_inputs(frames: torch.Tensor, exposures: torch.Tensor,
                   gamma: float = 2.2) -> torch.Tensor:
    """Eq. 1: linearise with the inverse gamma, bring every frame to the short exposure's
    brightness (divide by its exposure relative to the shortest of its window), and concatenate
    the linear frame with its gamma-1/gamma version: (B, T, 3, H, W) -> (B, T, 6, H, W).
    """
    rel = relative_exposures(exposures)
    return normalise_exposure(frames, rel.view(*rel.shape, 1, 1, 1), gamma, dim=2)


def normalise_exposure(frames: torch.Tensor, rel: torch.Tensor, gamma: float = 2.2,
                       dim: int = 1) -> torch.Tensor:
    """Eq. 1 for frames whose exposure relative to their window's shortest is known (`rel`,
    broadcastable to the frames): linear / rel and its gamma version, concatenated on `dim`.
    A stream encodes each frame once with this and reuses the result in every window that gives
    the frame the same `rel`."""
    linear = frames.clamp(0, 1) ** gamma / rel
    return torch.cat((linear, linear.clamp_min(1e-8) ** (1.0 / gamma)), dim=dim)


def pooled_guide(frames: torch.Tensor, exposures: torch.Tensor, gamma: float, pad: tuple[int, int],
                 scale: int) -> torch.Tensor:
    """The flow guide of `prepare_inputs` (its clamped gamma half), edge-padded by `pad`
    (bottom, right) and average-pooled by `scale`: (B, T, 3, (H+ph)/scale, (W+pw)/scale).

    Frame by frame, so a whole-frame program keeps one frame's full-resolution intermediates
    alive, not the window's 6-channel input (250 MB at 1080p); the same arithmetic, so equal to
    pooling the guide of the padded `prepare_inputs` output."""
    rel = relative_exposures(exposures)
    out = []
    for i in range(frames.shape[1]):
        linear = frames[:, i].clamp(0, 1) ** gamma / rel[:, i].view(-1, 1, 1, 1)
        guide = (linear.clamp_min(1e-8) ** (1.0 / gamma)).clamp(0, 1)
        if pad[0] or pad[1]:
            guide = F.pad(guide, (0, pad[1], 0, pad[0]), mode="replicate")
        out.append(F.avg_pool2d(guide, scale) if scale > 1 else guide)
    return torch.stack(out, dim=1)


def pad_frames(frames: torch.Tensor, multiple: int) -> torch.Tensor:
    """(B, T, C, H, W) edge-padded at the bottom and right to multiples of `multiple` (how the
    network pads its input, and how a tiled run pads a frame before cutting it)."""
    b, t, c, h, w = frames.shape
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return frames
    flat = F.pad(frames.reshape(b, t * c, h, w), (0, pw, 0, ph), mode="replicate")
    return flat.reshape(b, t, c, h + ph, w + pw)
