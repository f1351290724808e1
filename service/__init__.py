"""Inference service: KServe V2 over FastAPI and onnxruntime, with dynamic batching."""

__version__ = "0.1.0"
