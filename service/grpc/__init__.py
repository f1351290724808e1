"""The KServe V2 protocol over gRPC (``inference.GRPCInferenceService``, as Triton serves it).

A thin adapter over the typed core (:mod:`service.core`), as :mod:`service.http` is: ``server.py`` runs
grpcio's asyncio server with the standard health service and reflection, ``servicer.py`` answers each
RPC through the core, ``protocol.py`` turns a ``ModelInferRequest`` into the core's request and its
answer into a ``ModelInferResponse``, ``tensors.py`` converts one tensor (raw or typed) and numpy,
``status.py`` maps error kinds to gRPC status codes. ``protos/`` holds Triton's protocol files,
unmodified, with their licence; ``generated/`` the Python compiled from them by ``tools/gen_protos.py``.
See ``docs/grpc.md``.
"""
