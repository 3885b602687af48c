"""The exporter: model → unrolled sampler → ONNX bundle (``api``), graph clean-up (``optimize``),
FP16 graph (``precision``), TensorRT engine (``tensorrt``).

The public entry point is the function ``cmrt.export`` (``cmrt.exporter.api.export``).
"""
