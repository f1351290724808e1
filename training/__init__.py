"""Training pipeline: Keras classifiers to a versioned ONNX model repository."""
