"""Calibration, two independent jobs:

- attention-ratio buckets (`buckets`, with the synthetic calibration windows of `windows`):
  the tile budget K of every exported s-bucket. `dealthdr.export` and `dealthdr.quantize`
  depend on this half;
- RAW noise profiles (`noise` from a camera's RAW files, `darktable` from darktable's presets):
  JSON profiles that `dealthdr synth --noise-profile` reads. Nothing else imports this half.

A tool package: it imports the network, the network never imports it. Run it as
`dealthdr calib buckets|noise|darktable ...` or `python calib/buckets.py ...`."""
