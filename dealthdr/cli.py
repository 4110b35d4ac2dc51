"""`dealthdr` command line: one subcommand per job, each in its own module."""
from __future__ import annotations

import argparse
import logging
import sys

from . import __version__


def parse_size(text: str) -> tuple[int, int]:
    """'256x256' -> (256, 256) as (height, width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 256x256, got {text!r}") from None
    if h < 8 or w < 8:
        raise argparse.ArgumentTypeError(f"size {text} is below the 8x8 minimum")
    return h, w


def apply_threads(threads: int | None) -> None:
    """--threads of a subcommand: torch intra-op threads, None leaves torch's default."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError("--threads must be >= 1")
    import torch

    torch.set_num_threads(threads)


def build_parser() -> argparse.ArgumentParser:
    from . import adapt_cli
    from . import evaluate_cli
    from . import profile_cli
    from . import reconstruct_cli
    from . import synth_cli
    from . import train_cli

    parser = argparse.ArgumentParser(prog="dealthdr", description=__doc__)
    parser.add_argument("--version", action="version", version=f"dealthdr {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    profile_cli.add_parser(sub)
    evaluate_cli.add_parser(sub)
    synth_cli.add_parser(sub)
    train_cli.add_parser(sub)
    reconstruct_cli.add_parser(sub)
    adapt_cli.add_parser(sub)
    return parser


OUR_PACKAGES = ("dealthdr", "export", "calib", "quantize", "device_bench")


def configure_logging(verbose: bool = True) -> None:
    """INFO for this project's loggers, WARNING for everything else: the ONNX exporter and
    onnxscript alone log thousands of INFO lines per graph."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in OUR_PACKAGES:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        return args.run(args) or 0
    except (ValueError, FileNotFoundError) as err:
        print(f"dealthdr {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
