"""Export s-bucket graphs to ONNX, parity-gated in onnxruntime.

    python export/to_onnx.py --s-buckets 0,1,15,100

The code lives in `dealthdr.export.to_onnx`; this script only runs it (`--help` lists every flag).
"""
import sys

from dealthdr.export.to_onnx import main

if __name__ == "__main__":
    sys.exit(main())
