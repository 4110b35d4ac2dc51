"""`dealthdr` command line: one subcommand per job, each in its own module.

The tools (export, quantize, bench, calib) have their own flag parsers; `dealthdr TOOL ...`
hands the rest of the command line to the tool's `main`, imported only then, so the network's
commands never load the exporters or their heavy dependencies.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .cliargs import configure_logging

# Tool -> its module, or -> {job: module} where the tool has several jobs.
TOOLS = {
    "export": {"executorch": "dealthdr.export.to_executorch",
               "coreml": "dealthdr.export.to_coreml",
               "onnx": "dealthdr.export.to_onnx"},
    "quantize": "dealthdr.quantize.qat",
    "bench": "dealthdr.bench.cli",
    "calib": {"buckets": "dealthdr.calib.buckets",
              "noise": "dealthdr.calib.noise",
              "darktable": "dealthdr.calib.darktable"},
}
TOOL_HELP = {
    "export": "fixed-shape s-bucket exports: executorch | coreml | onnx (then --help)",
    "quantize": "int8: QAT, a PTQ baseline and the int8 artifacts (--help)",
    "bench": "latency harness, records, Fig. 1 / Table I (--help lists its commands)",
    "calib": "calibration: buckets (attention ratio) | noise (RAW) | darktable (presets)",
}


def run_tool(argv: list[str]) -> int:
    """`dealthdr TOOL [JOB] ARGS...`: the tool's own `main(ARGS)`."""
    tool, rest = argv[0], argv[1:]
    target = TOOLS[tool]
    if isinstance(target, dict):
        if not rest or rest[0] not in target:
            jobs = " | ".join(target)
            if rest and rest[0] in ("-h", "--help"):
                print(f"usage: dealthdr {tool} {{{jobs}}} [--help | ARGS...]\n\n"
                      f"{TOOL_HELP[tool]}")
                return 0
            print(f"usage: dealthdr {tool} {{{jobs}}} [--help | ARGS...]\n"
                  f"dealthdr {tool}: error: choose one of {jobs}", file=sys.stderr)
            return 2
        tool, target, rest = f"{tool} {rest[0]}", target[rest[0]], rest[1:]
    # The tools' parsers name themselves after argv[0] (their script when run by path).
    saved, sys.argv[0] = sys.argv[0], f"dealthdr {tool}"
    try:
        return importlib.import_module(target).main(rest) or 0
    finally:
        sys.argv[0] = saved


def build_parser() -> argparse.ArgumentParser:
    from . import adapt_cli, evaluate_cli, profile_cli, reconstruct_cli, synth_cli, train_cli

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
    for tool, text in TOOL_HELP.items():  # listed for --help; `main` dispatches them first
        sub.add_parser(tool, help=text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in TOOLS:
        return run_tool(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        return args.run(args) or 0
    except (ValueError, OSError) as err:  # bad input, unusable paths: one line, exit 2
        print(f"dealthdr {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
