"""The KServe V2 protocol over gRPC (``inference.GRPCInferenceService``, as Triton serves it).

``protos/`` holds the protocol definitions (Triton's, unmodified, with their licence), ``generated/`` the
Python compiled from them by ``tools/gen_protos.py``, and ``tensors.py`` the conversion between protobuf
tensors and numpy.
"""
