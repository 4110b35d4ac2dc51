"""Noise profiles from darktable's camera presets, in the form data synthesis reads.

    python calib/darktable.py --help

The code lives in `dealthdr.calib.darktable`; this script only runs it (`--help` lists every flag).
"""
import sys

from dealthdr.calib.darktable import main

if __name__ == "__main__":
    sys.exit(main())
