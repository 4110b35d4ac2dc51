"""Calibration: attention-ratio buckets for export (issue 4), RAW noise (issue 8), quantization
calibration sets (issue 5). Run the tools as scripts: `python calib/buckets.py --help`."""
