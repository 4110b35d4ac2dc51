"""Variant configurations. A variant is hyperparameters only; `create_model` builds it."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class DeAltHDRConfig:
    """Hyperparameters of one DeAltHDR variant.

    Args:
        name: variant name, stored in checkpoints so a checkpoint of another variant is refused.
        dim: channels at level 1; levels 2, 3 and the latent use 2x, 4x, 8x.
        encoder_blocks: blocks per encoder level (levels 1-2 ReducedAttn+FFW, level 3 channel
            attention + gated FFW), the same for the short and the long encoder.
        middle_blocks: channel attention + gated FFW blocks at the latent level.
        decoder_blocks: blocks per decoder level, ordered level 3, 2, 1 (coarse to fine).
        decoder_block: "channel": every decoder level uses the middle block (channel attention
            + gated FFW), as App. C has it; "level": the encoder's block of the same level
            (ReducedAttn + FFW at levels 1-2), 0.5x the decoder's level 1-2 FLOPs, what the
            shipped `tiny` weights were trained with.
        heads: channel-attention heads at levels 1, 2, 3 and the latent.
        ffn_expansion: hidden width of the gated FFW as a multiple of the channels (Turtle: 2.5).
        num_frames: input window, centre frame plus neighbours (paper: 5).
        attn_window: side of the square window of the flow-warped neighbour feature each FGMA
            query attends to. Cost per query grows with its square.
        attn_tile: side of the square tiles FGMA selects and computes attention in (whole
            tiles keep the attention dense work for every runtime); an execution setting, the
            weights do not depend on it. 2 * (attn_window // 2) must not exceed it.
        flow_scale: SpyNet runs on frames downsampled by this factor; the flow is upsampled to
            every decoder level. 1 is the release's full-resolution flow (70 % of its FLOPs).
        spynet_width: channel multiplier of the SpyNet level modules; 1.0 is the BasicSR layout
            (the only one that loads BasicSR/`spynet_sintel_final` weights).
        spynet_levels: pyramid levels of SpyNet (BasicSR: 6).
        exposure_ratio: default ratio long/short exposure (3 stops: 8) when none is given.
        gamma: display gamma of the LDR input (Eq. 1 uses 2.2 and its inverse).
        merge_base: the head refines an exposure-aware, flow-aligned merge of the 5 frames
            (residual + per-frame log-weights, see model/merge.py) instead of adding a
            residual to the centre frame. Not in the paper; on for `tiny`, whose 16-channel
            decoder cannot carry the neighbours' full-resolution detail.
        merge_consistency: the merge's consistency scale (gamma-domain difference between an
            aligned neighbour and the centre, both smoothed, at which a neighbour keeps
            exp(-1) of its weight). Small values discard aligned neighbours of a noisy
            centre as if they were misaligned (see model/merge.py); the shipped `tiny` was
            trained with 0.04.
        merge_attention: with `merge_base`, where FGMA's level-1 mask is executed the merge
            takes each neighbour's pixels through that level's attention weights (the window
            around the flow target, weighted as the features are) instead of the flow warp,
            so attention reaches the image and not only the head's inputs. Not in the paper,
            whose network regresses the image from the decoder (see model/merge.py).
    """

    name: str = "default"
    dim: int = 32
    encoder_blocks: tuple[int, int, int] = (2, 4, 6)
    middle_blocks: int = 8
    decoder_blocks: tuple[int, int, int] = (6, 4, 2)
    decoder_block: str = "channel"
    heads: tuple[int, int, int, int] = (1, 2, 4, 8)
    ffn_expansion: float = 2.5
    num_frames: int = 5
    attn_window: int = 7
    attn_tile: int = 8
    flow_scale: int = 4
    spynet_width: float = 1.0
    spynet_levels: int = 6
    exposure_ratio: float = 8.0
    gamma: float = 2.2
    merge_base: bool = False
    merge_consistency: float = 0.04
    merge_attention: bool = False

    def __post_init__(self) -> None:
        if self.decoder_block not in ("channel", "level"):
            raise ValueError(f"decoder_block must be 'channel' or 'level', got "
                             f"{self.decoder_block!r}")
        if self.num_frames < 3 or self.num_frames % 2 == 0:
            raise ValueError(f"num_frames must be odd and >= 3, got {self.num_frames}")
        if self.attn_window % 2 == 0:
            raise ValueError(f"attn_window must be odd, got {self.attn_window}")
        if 2 * (self.attn_window // 2) > self.attn_tile:
            raise ValueError(f"attn_tile must be >= 2 * (attn_window // 2), got tile "
                             f"{self.attn_tile} for window {self.attn_window}")
        if not self.merge_consistency > 0:
            raise ValueError(f"merge_consistency must be > 0, got {self.merge_consistency}")
        if self.merge_attention and not self.merge_base:
            raise ValueError("merge_attention needs merge_base (it changes the merge)")
        if self.flow_scale < 1:
            raise ValueError(f"flow_scale must be >= 1, got {self.flow_scale}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "DeAltHDRConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        tuples = {k: tuple(v) for k, v in data.items() if isinstance(v, list)}
        # Configs written before the field existed describe networks built with level blocks.
        legacy = {} if "decoder_block" in data else {"decoder_block": "level"}
        return cls(**{**data, **tuples, **legacy})


def default() -> DeAltHDRConfig:
    """The paper's network (App. C): encoder 2/4/6, 8 middle blocks, decoder 6/4/2."""
    return DeAltHDRConfig(name="default")


def s() -> DeAltHDRConfig:
    """DeAltHDR-S (Table F): the compact variant, about 0.8x the default's FLOPs at s=15."""
    return DeAltHDRConfig(name="s", encoder_blocks=(2, 3, 4), middle_blocks=3,
                          decoder_blocks=(3, 2, 2))


def tiny() -> DeAltHDRConfig:
    """Fast on one CPU: tests and the shipped checkpoint. Same structure, fewer channels."""
    return DeAltHDRConfig(name="tiny", dim=16, encoder_blocks=(1, 1, 2), middle_blocks=2,
                          decoder_blocks=(2, 1, 1), decoder_block="level", heads=(1, 1, 2, 4),
                          attn_window=5, spynet_width=0.5, merge_base=True)


VARIANTS = {"default": default, "s": s, "tiny": tiny}


def get_config(name: str) -> DeAltHDRConfig:
    try:
        return VARIANTS[name]()
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; choose from {sorted(VARIANTS)}") from None
