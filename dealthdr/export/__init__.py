"""Fixed-shape s-bucket exports (ExecuTorch, Core ML, ONNX), each behind a parity gate.

A tool package: it imports the network, the network never imports it. Run the exporters as
`dealthdr export executorch|coreml|onnx ...` or `python export/to_coreml.py ...` from a
checkout."""
