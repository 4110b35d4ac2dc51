"""`python -m device_bench` from a checkout; the code lives in `dealthdr.bench`."""
