"""Attention-ratio bucket calibration: the tile budget K per s that export uses.

    python calib/buckets.py --s-buckets 0,1,15,100

The code lives in `dealthdr.calib.buckets`; this script only runs it (`--help` lists every flag).
"""
import sys

from dealthdr.calib.buckets import main

if __name__ == "__main__":
    sys.exit(main())
