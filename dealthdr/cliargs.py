"""Flag types and set-up shared by every command line of the project (the `dealthdr`
subcommands and the tools' scripts); imports nothing of the project, so any CLI can use it."""
from __future__ import annotations

import argparse
import logging


def parse_size(text: str) -> tuple[int, int]:
    """'256x256' -> (256, 256) as (height, width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 256x256, got {text!r}") from None
    if h < 8 or w < 8:
        raise argparse.ArgumentTypeError(f"size {text} is below the 8x8 minimum")
    return h, w


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'256x256,1080x1920' -> [(256, 256), (1080, 1920)]."""
    return [parse_size(t) for t in text.split(",") if t.strip()]


def apply_threads(threads: int | None) -> None:
    """--threads of a subcommand: torch intra-op threads, None leaves torch's default."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError("--threads must be >= 1")
    import torch

    torch.set_num_threads(threads)


OUR_PACKAGES = ("dealthdr",)


def configure_logging(verbose: bool = True) -> None:
    """INFO for this project's loggers, WARNING for everything else: the ONNX exporter and
    onnxscript alone log thousands of INFO lines per graph."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in OUR_PACKAGES:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
