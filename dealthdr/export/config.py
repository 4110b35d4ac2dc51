"""Typed settings of the exporters: what the flags parse into and what the library functions
take (`export_executorch(ExecuTorchConfig(...))` runs the same job as the script, with no
argparse involved). One dataclass per tool; the shared fields are `ExportConfig`'s."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from dealthdr.cliargs import config_from

T = TypeVar("T")


@dataclass(frozen=True)
class ExportConfig:
    """Settings every exporter shares (flags of `artifacts.add_common_flags`).

    s_buckets: sensitivities s, one fixed-shape graph each. checkpoint: weights or 'default'.
    variant: the variant the checkpoint must be (None: whatever it is). size: (H, W) input.
    centre: 'both', 'short' or 'long'. buckets: a bucket calibration JSON, or None to
    calibrate now with `quantile` on `calib_clips` synthetic clips. parity_clips: held-out
    clips for the parity gate. out: output folder (replaced only with force)."""
    s_buckets: tuple[float, ...] = (0.0, 1.0, 15.0, 100.0)
    checkpoint: str = "default"
    variant: str | None = None
    size: tuple[int, int] = (256, 256)
    centre: str = "both"
    buckets: Path | None = None
    quantile: float = 0.95
    calib_clips: int = 2
    parity_clips: int = 1
    out: Path = Path("exports/export")
    force: bool = False

    @property
    def centres(self) -> tuple[str, ...]:
        return ("short", "long") if self.centre == "both" else (self.centre,)


@dataclass(frozen=True)
class ExecuTorchConfig(ExportConfig):
    """`to_executorch`: backend 'xnnpack' or 'coreml', precision 'fp32' (or 'fp16' with
    coreml); no_rewrites lowers the graph as exported; tiled_frame (H, W) adds a tiled program
    per s; stream adds a streaming program per s; bundle adds a BundledProgram."""
    out: Path = Path("exports/executorch")
    backend: str = "xnnpack"
    precision: str = "fp32"
    no_rewrites: bool = False
    tiled_frame: tuple[int, int] | None = None
    stream: bool = False
    bundle: bool = False


@dataclass(frozen=True)
class CoreMLConfig(ExportConfig):
    """`to_coreml`: precision 'fp16' or 'fp32'; deployment_target 'iOS18' (one multifunction
    package) or 'iOS17' (one package per graph); compute_units a key of COMPUTE_UNITS; stream
    adds a streaming multifunction package per s; readable_names keeps the exporter's variable
    names in the program text (bigger packages, for debugging)."""
    out: Path = Path("exports/coreml")
    precision: str = "fp16"
    deployment_target: str = "iOS18"
    compute_units: str = "all"
    stream: bool = False
    readable_names: bool = False


@dataclass(frozen=True)
class OnnxConfig(ExportConfig):
    """`to_onnx`: the shared settings only."""
    out: Path = Path("exports/onnx")


def parse_config(parser: argparse.ArgumentParser, cls: type[T], argv: list[str] | None) -> T:
    """Parse `argv` into `cls`. Every flag must be a field and every field a flag: a flag the
    library never sees, or a setting no flag reaches, is a bug caught on the first run."""
    return config_from(cls, parser.parse_args(argv), tuples=True)
