"""Export fixed-shape s-bucket graphs to ExecuTorch .pte programs, parity-gated.

    python export/to_executorch.py --s-buckets 0,1,15,100

The code lives in `dealthdr.export.to_executorch`; this script only runs it (`--help` lists every flag).
"""
import sys

from dealthdr.export.to_executorch import main

if __name__ == "__main__":
    sys.exit(main())
