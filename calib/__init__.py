"""Calibration, two jobs: attention-ratio buckets and calibration windows (export, quantize),
and RAW noise profiles (data synthesis). Run the tools as scripts, e.g.
`python calib/buckets.py --help`."""
