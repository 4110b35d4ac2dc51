"""`python -m device_bench COMMAND`: latency harness, records, Fig. 1 / Table I.

The same as `dealthdr bench COMMAND`; the code lives in `dealthdr.bench` (`--help` lists the
commands).
"""
import sys

from dealthdr.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
