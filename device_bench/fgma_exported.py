"""FGMA's exported branch (one decoder level, XNNPACK) against its bucket size K.

    python device_bench/fgma_exported.py --level 3 --ratios 0,0.5,0.67,0.75,1

The code lives in `dealthdr.bench.fgma_exported`; this script only runs it (`--help` lists every
flag).
"""
import sys

from dealthdr.bench.fgma_exported import main

if __name__ == "__main__":
    sys.exit(main())
