"""RAW noise calibration of a camera from DNG/RAW files (rawpy).

    python calib/noise.py --raw RAW_DIR --out profile.json

The code lives in `dealthdr.calib.noise`; this script only runs it (`--help` lists every flag).
"""
import sys

from dealthdr.calib.noise import main

if __name__ == "__main__":
    sys.exit(main())
