"""int8 DeAltHDR: quantization-aware fine-tuning, a post-training baseline, the int8 artifacts.

A tool package: it imports the network, the network never imports it. Run it as
`dealthdr quantize ...` or `python quantize/qat.py ...` from a checkout."""
