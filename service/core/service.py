"""The inference service: one object that owns the models and answers every request, transport aside.

See :mod:`service.core` for the API and how a transport uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging

from service import __version__
from service.contract import PLATFORM
from service.core.call import ModelCall
from service.core.explain import ExplainCall
from service.core.feedback import FeedbackCall, open_feedback_store
from service.core.lifecycle import Lifecycle
from service.core.prepare import PreparePool
from service.core.providers import select_providers
from service.core.registry import ModelRegistry
from service.core.rollout import RolloutDesk
from service.core.rolloutops import RolloutOperator
from service.core.served import ServedVersion
from service.core.types import (
    ClassifyRequest,
    ClassifyResponse,
    ExplainRequest,
    Explanation,
    InferRequest,
    InferResponse,
    ModelInfo,
    RepositoryEntry,
    ServerInfo,
    VersionStatistics,
)
from service.errors import (
    Forbidden,
    NotFound,
    Unauthorized,
    Unavailable,
    echo,
)
from service.feedback.store import FeedbackStore
from service.rollout.policy import Options
from service.settings import Settings
from service.telemetry.metrics import Metrics
from service.telemetry.tracing import Tracing

log = logging.getLogger("service")

SERVER_NAME = "digits-serving"
EXTENSIONS = ("binary_tensor_data", "statistics", "model_repository", "classification")


class InferenceService:
    """The models of one process and everything a client can ask of them. See :mod:`service.core`."""

    def __init__(self, settings: Settings, metrics: Metrics, tracing: Tracing | None = None) -> None:
        """``tracing``: the process's tracers when tracing is on
        (:func:`service.telemetry.tracing.from_env`)."""
        self.settings = settings
        self.metrics = metrics
        self.tracing = tracing
        self.lifecycle = Lifecycle(settings.poll_interval_s)
        self.feedback_store: FeedbackStore | None = None  # from start() to stop(), when feedback is on
        self._registry: ModelRegistry | None = None
        self.preparer: PreparePool | None = None  # /classify's image pool, from start() to stop()
        self._loader: asyncio.Task[None] | None = None
        self.rollout = RolloutDesk(settings, metrics, tracing)
        self.rollout_operator = RolloutOperator(self.rollout)
        self._decider: asyncio.Task[None] | None = None

    # ---- lifecycle -------------------------------------------------------------------------------

    @property
    def registry(self) -> ModelRegistry:
        """The model registry (for the core and for tests; transports never need it)."""
        if self._registry is None:
            raise RuntimeError("the inference service has not been started")
        return self._registry

    async def start(self, *, background: bool = False) -> None:
        """Load the models (in the background: answer live, not ready, meanwhile) and watch the repository."""
        providers = select_providers(self.settings.providers)
        log.info("settings: %s", self.settings.describe())
        self.feedback_store = open_feedback_store(self.settings, self.metrics)
        log.info("execution providers: %s", ", ".join(providers))
        self._registry = registry = ModelRegistry(self.settings, self.metrics, providers, self.tracing)
        threads = self.settings.preprocess_threads or min(2, registry.threads)
        self.preparer = PreparePool(threads, self.settings.preprocess_queue)
        log.info("compute: %d threads, %d per model session", registry.threads, registry.session_threads())
        if not background:
            await registry.start()
        self._loader = asyncio.create_task(self.lifecycle.load_and_watch(registry, initial=background))
        self.rollout.attach(registry)
        self._decider = asyncio.create_task(self.rollout.run())

    async def stop(self) -> None:
        """Refuse new work, finish what is queued within the drain's time left, release every session."""
        self.lifecycle.draining = True
        self.rollout.frozen = True
        for task in (self._loader, self._decider):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.rollout.drain()
        if self._registry is not None:
            await self._registry.stop(self.lifecycle.time_left(self.settings.drain_seconds))
        if self.preparer is not None:
            self.preparer.close()
        if self.feedback_store is not None:
            self.feedback_store.close()
            self.feedback_store = None

    def begin_drain(self) -> float:
        """Start draining (readiness 503, new requests refused) for at most ``settings.drain_seconds``;
        returns the drain's deadline (``time.monotonic()`` seconds)."""
        self.rollout.frozen = True  # a drain's refusals are no evidence against a candidate
        return self.lifecycle.begin_drain(self.settings.drain_seconds)

    @property
    def draining(self) -> bool:
        return self.lifecycle.draining

    def pending(self) -> int:
        """Requests queued or computing, over every served version."""
        return 0 if self._registry is None else self._registry.pending()

    async def stop_admitting_and_flush(self) -> None:
        """Stop admitting, and compute everything queued now without waiting for batches to fill (the
        drain calls this; new requests get 503)."""
        if self._registry is not None:
            await self._registry.drain(self.lifecycle.time_left(self.settings.drain_seconds))

    # ---- health and metadata -----------------------------------------------------------------------

    def check_ready(self) -> None:
        """Return when every configured model serves; :class:`Unavailable` saying why not otherwise."""
        if self.lifecycle.draining:
            raise Unavailable("server is draining")
        registry = self._registry
        if registry is None or not registry.loaded:
            raise Unavailable("models are still loading")
        if not registry.ready:
            raise Unavailable(f"models not ready: {registry.missing()}")

    def server_info(self) -> ServerInfo:
        return ServerInfo(SERVER_NAME, __version__, EXTENSIONS)

    def models(self) -> list[ModelInfo]:
        """Every model that answers unversioned requests now, by name: the metadata of the version that
        answers (models configured but not loaded, or with no version allowed to answer, are left out;
        :meth:`repository_index` lists every version with its state)."""
        found = []
        for name in self.registry.names():
            try:
                found.append(self.model_info(name))
            except (NotFound, Unavailable):
                continue
        return found

    def model_info(self, name: str, version: int | None = None) -> ModelInfo:
        """Metadata of a served version (newest when ``version`` is None)."""
        served = self._get(name, version)
        runtime = served.runtime
        return ModelInfo(
            name=runtime.name,
            version=runtime.version,
            versions=tuple(self.registry.versions(name)),
            platform=PLATFORM,
            signature=runtime.signature,
            labels=runtime.labels,
            preprocessing=runtime.metadata.preprocessing,
            provider=runtime.provider,
            max_batch_size=self.settings.max_batch_size,
            feedback=self.feedback_store is not None,
        )

    def check_model_ready(self, name: str, version: int | None = None) -> tuple[str, int]:
        """``(name, version)`` of a version that serves now; NotFound, or Unavailable while draining."""
        served = self._get(name, version)
        if self.lifecycle.draining:
            raise Unavailable("server is draining")
        return served.name, served.version

    def statistics(self, name: str | None = None, version: int | None = None) -> list[VersionStatistics]:
        """Statistics of every served version, of one model's, or of one version."""
        registry = self.registry
        if name is None:
            pairs = [(n, v) for n in registry.names() for v in registry.versions(n)]
        else:
            self._get(name, version)
            pairs = [(name, v) for v in ([version] if version is not None else registry.versions(name))]
        return [VersionStatistics(n, v, registry.get(n, v).metrics.stats) for n, v in pairs]

    # ---- inference ---------------------------------------------------------------------------------

    def call(
        self, name: str, version: int | None = None, *, protocol: str = "http", routing_key: str | None = None
    ) -> ModelCall:
        """A request to one served version, to use as ``async with``: NotFound or Unavailable now if there
        is none; inside the block, the transport decodes and calls :meth:`ModelCall.infer` or
        :meth:`ModelCall.classify`, and the request is counted and timed, failures by their kind, under
        the transport's ``protocol`` label (``http`` or ``grpc``). An unversioned request goes where
        the model's rollout sends it (:mod:`service.core.rollout`; ``routing_key`` keeps a client on one
        version)."""
        if version is None and self._registry is not None:
            route = self.rollout.route(name, routing_key)
            registry = self._registry
            return ModelCall(
                route.answer,
                self.settings,
                self.lifecycle,
                protocol,
                self.preparer,
                self.tracing,
                tap=route.tap,
                shadow=route.shadow,
                reroute=lambda: registry.get(name),
            )
        return ModelCall(
            self._get(name, version), self.settings, self.lifecycle, protocol, self.preparer, self.tracing
        )

    async def infer(
        self, name: str, request: InferRequest, version: int | None = None, *, protocol: str = "http"
    ) -> InferResponse:
        """Infer in one call, for transports that decode without the model's signature; counted under
        the calling transport's ``protocol``."""
        async with self.call(name, version, protocol=protocol) as call:
            return await call.infer(request)

    async def classify(
        self, name: str, request: ClassifyRequest, version: int | None = None, *, protocol: str = "http"
    ) -> ClassifyResponse:
        """Classify in one call; counted under the calling transport's ``protocol``."""
        async with self.call(name, version, protocol=protocol) as call:
            return await call.classify(request)

    def explain_call(self, name: str, version: int | None = None) -> ExplainCall:
        """An explanation of one served version, to use as ``async with`` (see :mod:`service.core.explain`):
        NotFound or Unavailable now; inside, :meth:`ExplainCall.explain`."""
        return ExplainCall(self._get(name, version), self.settings, self.lifecycle, self.metrics)

    async def explain(self, name: str, request: ExplainRequest, version: int | None = None) -> Explanation:
        """Explain in one call."""
        async with self.explain_call(name, version) as call:
            return await call.explain(request)

    def feedback_call(
        self,
        name: str,
        version: int | None,
        authorization: str | None,
        label: str,
        *,
        protocol: str = "http",
        routing_key: str | None = None,
    ) -> FeedbackCall:
        """A feedback request, to use as ``async with`` (see :mod:`service.core.feedback`): NotFound,
        Unauthorized, Forbidden or InvalidInput (the label) now; inside, :meth:`FeedbackCall.submit`.
        The classification it makes is counted under the calling transport's ``protocol``."""
        return FeedbackCall(
            self, name, version, authorization, label, protocol=protocol, routing_key=routing_key
        )

    # ---- repository --------------------------------------------------------------------------------

    def repository_index(self) -> list[RepositoryEntry]:
        """Every version found in the repository, with its state."""
        rows = self.registry.index()
        return [RepositoryEntry(*row) for row in rows]

    async def load(self, name: str) -> list[int]:
        """(Re)load a model per the version policy; returns its served versions."""
        await self.registry.load(name)
        return self.registry.versions(name)

    async def unload(self, name: str) -> None:
        """Stop serving every version of a model until it is loaded again."""
        if name not in self.registry.names():
            raise NotFound(f"unknown model {echo(name)}")
        await self.registry.unload(name)

    # ---- rollouts (docs/rollout.md) ---------------------------------------------------------------------

    def rollout_state(self, name: str) -> dict[str, object]:
        """The model's rollout as JSON (``idle`` and the champion when it has none); NotFound."""
        self._get(name, None)
        return self.rollout_operator.state(name)

    def lineage(self, name: str, version: int | None = None) -> dict[str, object]:
        """Where a served version came from: the version and feedback it was trained on (from its
        metadata) and the rollouts that decided it (from the model's rollout record)."""
        served = self._get(name, version)
        retrain = served.runtime.metadata.document.retrain or {}
        feedback = retrain.get("feedback") or {}
        record = self.registry.record(name)
        decisions = [] if record is None else [h for h in record.history if h.candidate == served.version]
        role = "champion" if self.registry.get(name).version == served.version else "loaded"
        if record is not None and record.candidate == served.version and record.active:
            role = "candidate"
        return {
            "role": role,
            "base_version": retrain.get("base_version"),
            "feedback": {k: feedback.get(k) for k in ("log", "last_id", "log_bytes", "items")}
            if feedback
            else None,
            "rollouts": [h.model_dump(mode="json") for h in decisions],
        }

    async def start_rollout(self, name: str, candidate: int, options: Options) -> dict[str, object]:
        """Start rolling out ``candidate``: NotFound, Conflict (one runs), InvalidInput (signature)."""
        self._get(name, None)
        await self.rollout_operator.start(name, candidate, options)
        return self.rollout_operator.state(name)

    async def operate_rollout(self, name: str, decision: str) -> dict[str, object]:
        """``promote``, ``rollback``, ``pause`` or ``resume`` the model's rollout now; Conflict."""
        self._get(name, None)
        await self.rollout_operator.operate(name, decision)
        return self.rollout_operator.state(name)

    def authorize_admin(self, authorization: str | None) -> None:
        """Check ``Authorization`` credentials (``Bearer <token>``) for the repository load/unload calls.

        Forbidden when no admin token is configured or the token is wrong, Unauthorized without
        credentials. The comparison takes constant time.
        """
        token = self.settings.admin_token
        if token is None:
            raise Forbidden("the admin API is disabled (no SERVE_ADMIN_TOKEN configured)")
        if authorization is None:
            raise Unauthorized()
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise Unauthorized("expected 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise Forbidden("invalid admin token")

    def _get(self, name: str, version: int | None) -> ServedVersion:
        if self._registry is None:
            raise Unavailable("models are still loading")
        return self._registry.get(name, version)
