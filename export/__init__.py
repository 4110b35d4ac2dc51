"""Fixed-shape s-bucket exports (Core ML, ExecuTorch, ONNX), each behind a parity gate.

Run the exporters as scripts: `python export/to_coreml.py --help`."""
