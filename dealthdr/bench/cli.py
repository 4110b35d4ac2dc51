"""device_bench: latency of the exported s-buckets per runtime, device records, Fig. 1 / Table I.

    python -m device_bench run --artifacts exports/executorch exports/onnx --sizes 256x256
    python -m device_bench summary RESULTS.jsonl
    python -m device_bench plot RESULTS.jsonl --out runs/plots
    python -m device_bench pick --budget-ms 33 --records RESULTS.jsonl --runtime executorch
    python -m device_bench ingest PHONE.jsonl --into RESULTS.jsonl
    python -m device_bench breakdown --size 256x256          # Table G: eager per component
    python -m device_bench apple --artifacts exports/coreml   # macOS: Core ML + compute plan
    python -m device_bench profile-pte PROGRAM.pte --method forward_short   # per-op ETDump
    python -m device_bench layout --s 15       # XNNPACK's NCHW/NHWC conversions, by module
    python -m device_bench tiled PROGRAM.pte --size 1080x1920    # large frames as tiles
    python -m device_bench stream --frames 32         # reconstruct: streaming vs every window

The same commands run as `dealthdr bench COMMAND` from any folder.
"""
from __future__ import annotations

import argparse
import sys

from dealthdr.cliargs import config_from, configure_logging

# What the parser adds beside the subcommand's flags.
_PARSER_ENTRIES = ("quiet", "command", "run", "config")


def build_parser() -> argparse.ArgumentParser:
    from dealthdr.bench import (
        apple,
        breakdown,
        ingest,
        layout,
        pick,
        plot,
        profile_pte,
        run,
        stream,
        summary,
        tiled,
    )

    # `dealthdr bench` names itself in argv[0]; the checkout's `python -m device_bench` does not.
    prog = sys.argv[0] if sys.argv[0].startswith("dealthdr ") else "python -m device_bench"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="log warnings only (default: progress at INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (run, summary, plot, pick, ingest, breakdown, apple, profile_pte, layout,
                   tiled, stream):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from dealthdr.bench.schema import RecordError

    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(not args.quiet)
    cfg = config_from(args.config, args, _PARSER_ENTRIES)
    try:
        return args.run(cfg) or 0
    except (ValueError, OSError, RecordError) as err:  # bad input, unusable paths: exit 2
        print(f"device_bench {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
