"""Typed settings of `dealthdr.quantize` and the state one run shares between its stages."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dealthdr.export.config import ExportConfig

# Settings that change no stage's result (where it is written, which stages run, threads): a
# resumed run with other values reuses the finished stages.
NEUTRAL = {"neutral": True}


@dataclass(frozen=True)
class QuantizeConfig(ExportConfig):
    """`qat.py`'s settings on top of the exporters' (see `qat.build_parser` for each flag's
    meaning and default reasons). Fields marked NEUTRAL leave the resume fingerprint alone."""
    out: Path = field(default=Path("exports/int8"), metadata=NEUTRAL)
    force: bool = field(default=False, metadata=NEUTRAL)
    parity_clips: int = 4
    backend: tuple[str, ...] = field(default=("xnnpack", "coreml"), metadata=NEUTRAL)
    steps: int = 100
    lr: float = 1e-5
    distill: float = 1.0
    tie: str = "all"
    share_ranges: bool = True
    train_clips: int = 4
    float_groups: tuple[str, ...] = ("merge", "io", "head", "router", "decoder", "decoder_l1")
    float_groups_short: tuple[str, ...] = ()
    float_groups_long: tuple[str, ...] = ()
    ptq_observer: str = "minmax"
    onnx_max_drop: float | None = None
    no_latency: bool = False
    no_sensitivity: bool = field(default=False, metadata=NEUTRAL)
    deployment_target: str = "iOS18"
    readable_names: bool = False
    state: Path | None = field(default=None, metadata=NEUTRAL)
    threads: int = field(default=0, metadata=NEUTRAL)

    @property
    def state_dir(self) -> Path:
        """The resume folder: `state`, or `<out>.qat-state` next to the output."""
        return self.state or self.out.with_name(self.out.name + ".qat-state")

    def float_groups_by_centre(self) -> dict[str, tuple[str, ...]]:
        return {"short": tuple(dict.fromkeys(self.float_groups + self.float_groups_short)),
                "long": tuple(dict.fromkeys(self.float_groups + self.float_groups_long))}


@dataclass
class QuantizeContext:
    """What every stage of one run shares: the float model, its buckets, the held-out parity
    windows, the training windows, the float exported graphs, the resume folder."""
    model: object
    buckets: list
    windows: list
    train_windows: list
    programs: dict
    state: Path
    checkpoint_sha256: str
