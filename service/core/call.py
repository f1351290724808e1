"""One request to one served version: resolved, counted and timed, whatever the transport.

:meth:`service.core.InferenceService.call` returns a :class:`ModelCall`; see :mod:`service.core`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from types import TracebackType

import numpy as np

from service.contract import Preprocessing
from service.core.batching import Batcher
from service.core.lifecycle import Lifecycle
from service.core.prepare import PreparePool
from service.core.served import ServedVersion
from service.core.signature import RequestCheck
from service.core.types import (
    ClassifyRequest,
    ClassifyResponse,
    ClassifyResult,
    InferRequest,
    InferResponse,
    Prediction,
)
from service.errors import (
    DeadlineExceeded,
    ErrorKind,
    InvalidInput,
    PayloadTooLarge,
    ServiceError,
    Unavailable,
)
from service.images.preprocess import prepare_all, request_pixels
from service.settings import Settings
from service.telemetry.tracing import RequestTrace, Tracing


def status_label(exc: BaseException) -> str:
    """The ``status`` label of ``inference_requests_total`` for a failed request."""
    if isinstance(exc, DeadlineExceeded):
        return "timeout"
    if isinstance(exc, Unavailable):
        return "rejected"
    if isinstance(exc, ServiceError) and exc.kind in _CLIENT_ERRORS:
        return "bad_request"
    return "error"


#: Kinds of error that are the request's fault.
_CLIENT_ERRORS = frozenset(
    {
        ErrorKind.INVALID_ARGUMENT,
        ErrorKind.UNAUTHENTICATED,
        ErrorKind.PERMISSION_DENIED,
        ErrorKind.NOT_FOUND,
        ErrorKind.TOO_LARGE,
        ErrorKind.UNSUPPORTED_MEDIA,
    }
)


class ModelCall:
    """One request to one served version (see :meth:`InferenceService.call`).

    ``name``, ``version`` and ``signature`` say what the transport decodes against; ``settings`` are
    the service's (the transport reads its limits there: body bytes, rows, image pixels). The request is
    counted under the transport's ``protocol`` label. One cancelled after its deadline (a gRPC deadline the
    transport passed on) counts as a timeout; one cancelled before it (the client went away) is not counted.

    ``trace`` is the request's span (:class:`~service.telemetry.tracing.RequestTrace`) when tracing is on
    and the request is sampled, else None; the call adds the model, version and rows to it, and the transport
    opens its ``decode`` and ``encode`` children through it.
    """

    __slots__ = (
        "_deadline_at",
        "_holding",
        "_lifecycle",
        "_preparer",
        "_reroute",
        "_served",
        "_shadow",
        "_started",
        "_tap",
        "name",
        "protocol",
        "settings",
        "signature",
        "trace",
        "tracing",
        "version",
    )

    def __init__(
        self,
        served: ServedVersion,
        settings: Settings,
        lifecycle: Lifecycle,
        protocol: str = "http",
        preparer: PreparePool | None = None,
        tracing: Tracing | None = None,
        *,
        tap: Callable[[int, str, float], None] | None = None,
        shadow: Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray]], None] | None = None,
        reroute: Callable[[], ServedVersion] | None = None,
    ) -> None:
        self._lifecycle = lifecycle
        self._preparer = preparer
        self._served = served
        self.name = served.name
        self.version = served.version
        self.signature = served.runtime.signature
        self.settings = settings
        self.protocol = protocol
        self._started = 0.0
        self._deadline_at: float | None = None
        self.tracing = tracing
        self.trace: RequestTrace | None = None
        self._holding = False
        # A rollout's evidence (``tap``: version, status, seconds) and shadow (after the answer).
        self._tap = tap
        self._shadow = shadow
        # An unversioned request whose version was stopped while it was read (a rollout's decision, and
        # the retired version's drain time ran out) goes to the version serving now instead of failing;
        # same signature, checked at the start.
        self._reroute = reroute

    async def __aenter__(self) -> ModelCall:
        self._started = time.perf_counter()
        if self._lifecycle.draining:
            error = Unavailable("server is draining")
            self._observe(status_label(error))
            raise error
        if self.tracing is not None:
            self.trace = self.tracing.request(
                {
                    "inference.model.name": self.name,
                    "inference.model.version": self.version,
                    "inference.protocol": self.protocol,
                }
            )
        self._served.enter()  # a retired version keeps admitting until this request has submitted
        self._holding = True
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._release()
        if exc is None or isinstance(exc, Exception):
            self._observe("ok" if exc is None else status_label(exc))
        elif isinstance(exc, asyncio.CancelledError) and self._deadline_passed():
            self._observe("timeout")

    def _release(self) -> None:
        """Let a retired version stop admitting as far as this request goes: called just before its
        submit, which queues the rows before anything else runs, so a stopping batcher computes them."""
        if self._holding:
            self._holding = False
            self._served.leave()

    def _observe(self, status: str) -> None:
        seconds = time.perf_counter() - self._started
        self._served.metrics.observe_request(status, seconds, self.protocol)
        if self._tap is not None:
            self._tap(self.version, status, seconds)

    def _deadline_passed(self) -> bool:
        return self._deadline_at is not None and time.monotonic() >= self._deadline_at

    def _deadline(self, timeout: float | None, cap: float | None) -> float:
        """The one place a request's deadline is made: ``timeout`` seconds from now (None: the
        configured default), no later than ``cap`` (a monotonic time, e.g. a gRPC deadline)."""
        deadline = time.monotonic() + (self.settings.default_timeout_s if timeout is None else timeout)
        self._deadline_at = deadline if cap is None or cap > deadline else cap
        return self._deadline_at

    async def infer(self, request: InferRequest) -> InferResponse:
        """Check the inputs against the signature, compute them in some batch, pick the outputs asked for."""
        signature = self.signature
        if request.checked:
            inputs = request.inputs if isinstance(request.inputs, dict) else dict(request.inputs)
        else:
            inputs = signature.check_inputs(request.inputs, max_rows=self.settings.max_request_rows)
            RequestCheck(signature, self.settings.max_request_rows).outputs(request.outputs or ())
        if self.trace is not None:
            self.trace.span.set_attribute("inference.rows", len(next(iter(inputs.values()))))
        specs = signature.outputs
        if request.outputs is not None:
            specs = tuple(t for t in specs if t.name in request.outputs)
        deadline = self._deadline(request.timeout, request.deadline)
        self._release()
        outputs = await self._batcher().submit(inputs, deadline=deadline)
        if self._shadow is not None:
            self._shadow(inputs, outputs)  # only schedules: the answer goes now
        return InferResponse(
            self.name,
            self.version,
            request.id,
            {t.name: outputs[t.name] for t in specs},
            specs,
            request.binary,
        )

    async def classify(self, request: ClassifyRequest) -> ClassifyResponse:
        """Prepare each image as the version's ``preprocessing`` entry declares, compute them as one
        request of N rows, and rank the classes of each, in order."""
        if not 1 <= request.top_k <= 1000:
            raise InvalidInput(f"top_k must be from 1 to 1000, got {request.top_k}")
        deadline = self._deadline(None, request.deadline)  # preprocessing counts against it too
        files = self._files(request)
        spec = self.signature.inputs[0]
        # Milliseconds of decoding and numpy per image (bench/preprocess.py): kept off the event loop,
        # on the bounded preprocessing pool (service/core/prepare.py) when the core has one.
        preprocessing = self._served.runtime.metadata.preprocessing
        pixels = request_pixels(files, self.settings.max_request_pixels)  # headers only: 413 before decoding
        if self.trace is None:
            batch = await self._prepare(files, preprocessing, pixels, deadline)
        else:
            self.trace.span.set_attribute("inference.rows", len(files))
            with self.trace.child("preprocess", {"inference.preprocess.resize": preprocessing.resize}):
                batch = await self._prepare(files, preprocessing, pixels, deadline)
        self._release()
        inputs = {spec.name: batch.astype(spec.dtype, copy=False)}
        outputs = await self._batcher().submit(inputs, deadline=deadline)
        if self._shadow is not None:
            self._shadow(inputs, outputs)
        probabilities = outputs[self.signature.outputs[0].name]
        labels = self._served.runtime.labels
        results = []
        for (filename, _), row, image in zip(files, probabilities, batch, strict=True):
            order = np.argsort(-row, kind="stable")[: request.top_k]
            predictions = tuple(
                Prediction(int(i), labels[i] if i < len(labels) else str(i), float(row[i])) for i in order
            )
            results.append(ClassifyResult(predictions, filename, image if request.return_input else None))
        return ClassifyResponse(self.name, self.version, tuple(results))

    def _batcher(self) -> Batcher:
        """The batcher to submit to now (no await until the submit admits the request)."""
        if not self._served.batcher.accepting and self._reroute is not None and not self._lifecycle.draining:
            now = self._reroute()
            if now.batcher.accepting and now.runtime.signature == self.signature:
                self._served, self.version, self._tap, self._shadow = now, now.version, None, None
                if self.trace is not None:
                    self.trace.span.set_attribute("inference.model.version", now.version)
        return self._served.batcher

    async def _prepare(
        self,
        files: list[tuple[str | None, bytes]],
        preprocessing: Preprocessing,
        pixels: int,
        deadline: float,
    ) -> np.ndarray:
        """The images as one batch, on the bounded preprocessing pool when the core has one."""
        if self._preparer is not None:
            return await self._preparer.prepare(
                files,
                preprocessing,
                max_pixels=self.settings.max_image_pixels,
                pixels=pixels,
                deadline=deadline,
            )
        return await asyncio.to_thread(
            prepare_all, files, preprocessing, max_pixels=self.settings.max_image_pixels
        )

    def _files(self, request: ClassifyRequest) -> list[tuple[str | None, bytes]]:
        """(file name, bytes) of each image, after checking their number and that none is empty."""
        images, names = request.images, request.filenames
        if not images:
            raise InvalidInput("no image")
        if len(images) > self.settings.max_request_rows:
            raise PayloadTooLarge(f"more than {self.settings.max_request_rows} images in one request")
        if names is None:
            names = [None] * len(images)
        elif len(names) != len(images):
            raise InvalidInput(f"{len(names)} file names for {len(images)} images")
        for n, data in enumerate(images, 1):
            if not data:
                raise InvalidInput(
                    "empty image" if len(images) == 1 else f"image {n} of {len(images)} is empty"
                )
        return list(zip(names, images, strict=True))
