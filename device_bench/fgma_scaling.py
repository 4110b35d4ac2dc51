"""FGMA's eager cost against the attention ratio R (is it linear?).

    python device_bench/fgma_scaling.py

The code lives in `dealthdr.bench.fgma_scaling`; this script only runs it (`--help` lists every flag).
"""
import sys

from dealthdr.bench.fgma_scaling import main

if __name__ == "__main__":
    sys.exit(main())
