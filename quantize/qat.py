"""int8 DeAltHDR: quantization-aware fine-tuning, a post-training baseline and the artifacts.

    python quantize/qat.py

The code lives in `dealthdr.quantize.qat`; this script only runs it (`--help` lists every flag).
"""
import sys

from dealthdr.quantize.qat import main

if __name__ == "__main__":
    sys.exit(main())
