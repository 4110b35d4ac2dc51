"""Export s-bucket graphs to Core ML .mlpackage files, structure-validated here, gated on macOS.

    python export/to_coreml.py --s-buckets 0,1,15,100

The code lives in `dealthdr.export.to_coreml`; this script only runs it (`--help` lists every flag).
"""
import sys

from dealthdr.export.to_coreml import main

if __name__ == "__main__":
    sys.exit(main())
