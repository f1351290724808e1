"""The typed inference core: everything the service does, with no transport in it.

:class:`InferenceService` owns the settings, the model registry (runtimes, batchers, the compute
threads), the metrics and the lifecycle (loading, readiness, draining). Transports are thin adapters
over it: :mod:`service.http` and :mod:`service.grpc`. An adapter decodes its wire format into
the types of :mod:`service.core.types`, calls the core, encodes the result, and maps the core's errors
(:mod:`service.errors`, each with a transport-neutral ``kind``) to its own status codes, in one place.
It never touches the registry.

The API (versions are ints, ``None`` meaning the champion: the newest served version unless a rollout
says otherwise, ``docs/rollout.md``; deadlines are ``time.monotonic()`` seconds)::

    core = InferenceService(settings, metrics)
    await core.start(background=False)          # load models (background: live, not ready, meanwhile)
    await core.stop()                           # drain what is queued within the time left, release

    core.check_ready()                          # raises Unavailable("server is draining" | ...)
    core.server_info() -> ServerInfo
    core.model_info(name, version) -> ModelInfo # signature, labels, preprocessing, provider, ...
    core.check_model_ready(name, version) -> (name, version)
    core.statistics(name=None, version=None) -> list[VersionStatistics]

    async with core.call(name, version, routing_key=None) as call:  # NotFound / Unavailable before it
        request = decode(wire, call.signature, call.settings) # the transport's work, counted and timed
        response = await call.infer(request)                # InferRequest -> InferResponse
        # InferRequest(inputs={name: ndarray}, id=None, outputs=None, deadline=None, checked=False,
        #              timeout=None, binary=frozenset())  # checked: decoded with signature.RequestCheck
        # InferResponse(model, version, id, outputs={name: ndarray}, specs=(TensorSpec, ...), binary)
        # or: await call.classify(ClassifyRequest([png_or_jpeg, ...], top_k)) -> ClassifyResponse
        # ClassifyResponse(model, version, results=(ClassifyResult(predictions, filename, input), ...))
    await core.infer(name, InferRequest(...), version, protocol="grpc")  # the same in one call
    await core.classify(name, ClassifyRequest(...), version)

    async with core.explain_call(name, version) as call:  # which pixels made it: service.core.explain
        explanation = await call.explain(ExplainRequest(image=png_or_jpeg, method="rise"))

    async with core.feedback_call(name, version, "Bearer <token>", label) as call:  # 404/401/403/400
        receipt = await call.submit(image_bytes)                                   # FeedbackReceipt

    core.repository_index() -> list[RepositoryEntry]
    core.authorize_admin("Bearer <token>" | None)          # Unauthorized / Forbidden
    await core.load(name) -> list[int];  await core.unload(name)

    core.begin_drain() -> deadline;  core.draining;  core.pending();  await core.stop_admitting_and_flush()

    core.rollout_state(name) -> dict                        # GET /v2/models/{m}/rollout
    await core.start_rollout(name, candidate, Options(...)) # NotFound / Conflict / InvalidInput
    await core.operate_rollout(name, "promote" | "rollback" | "pause" | "resume")   # Conflict
    core.lineage(name, version) -> dict                     # where a version came from

A request fails with exactly one :class:`~service.errors.ServiceError`: ``InvalidInput`` (the inputs do
not fit the signature), ``PayloadTooLarge``, ``NotFound``, ``Unavailable`` / ``Overloaded`` (not ready,
draining, queue full; ``retry_after_s`` set), ``DeadlineExceeded``, ``InferenceFailed``. Inside
``core.call`` every outcome is counted in ``inference_requests_total`` by status and timed in
``inference_request_duration_seconds``, including the transport's decoding and encoding.
"""

from service.core.call import ModelCall, status_label
from service.core.explain import ExplainCall
from service.core.feedback import FeedbackCall
from service.core.lifecycle import Lifecycle
from service.core.service import InferenceService
from service.core.types import (
    ClassifyRequest,
    ClassifyResponse,
    ClassifyResult,
    ExplainRequest,
    Explanation,
    FeedbackReceipt,
    InferRequest,
    InferResponse,
    ModelInfo,
    Prediction,
    RepositoryEntry,
    ServerInfo,
    VersionStatistics,
)

__all__ = [
    "ClassifyRequest",
    "ClassifyResponse",
    "ClassifyResult",
    "ExplainCall",
    "ExplainRequest",
    "Explanation",
    "FeedbackCall",
    "FeedbackReceipt",
    "InferRequest",
    "InferResponse",
    "InferenceService",
    "Lifecycle",
    "ModelCall",
    "ModelInfo",
    "Prediction",
    "RepositoryEntry",
    "ServerInfo",
    "VersionStatistics",
    "status_label",
]
