"""The core's explain operation: which pixels made a prediction, for any served image classifier.

A transport uses it like :meth:`InferenceService.call`::

    async with core.explain_call(name, version) as call:     # NotFound / Unavailable now
        image = await read_the_body(call.settings.max_body_bytes)
        explanation = await call.explain(ExplainRequest(image=image, method="rise"))

In order: the model must have one image input and class scores as its first output (400 otherwise);
the parameters must be in range (400) and the explanation within ``SERVE_EXPLAIN_MAX_ROWS`` rows (413),
both checked before the body is decoded; the image is prepared exactly as ``/classify`` prepares it
(415, 413, 400). Then every row, the unperturbed input's first, goes through the version's batcher as
ordinary work in its *background* lane (:mod:`service.core.batching`): predictions are always taken first,
explanation rows compute only while no prediction is queued, computing or being answered, in batches
of their own of at most ``SERVE_EXPLAIN_JOB_ROWS`` rows. An explanation keeps :data:`WINDOW` jobs in
the batcher (one computing, the next queued), so it never holds more of the queue than that. The
explanation's deadline (``SERVE_DEFAULT_TIMEOUT_S`` unless the request sets one) and the queue limit
apply to every job; cancelling the task (the client went away) drops every job not yet computing.

Each explanation is counted in ``explanations_total`` by model, method and result (``ok``, the request
statuses, or ``cancelled``), and its computed rows in ``explanation_rows_total``. Explanations are not
inference requests: ``inference_requests_total`` and its latency histogram stay the predictions'.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType

import numpy as np

from service.core.attribution import Explainer, baseline_value, make_explainer
from service.core.call import status_label
from service.core.lifecycle import Lifecycle
from service.core.served import ServedVersion
from service.core.types import ExplainRequest, Explanation
from service.errors import InvalidInput, Unavailable
from service.images.preprocess import prepare_all
from service.settings import Settings
from service.telemetry.metrics import Metrics

#: Jobs of one explanation in the batcher at once.
WINDOW = 2
#: Perturbed rows are made off the event loop when one job's rows hold more values than this.
_INLINE_VALUES = 1 << 16


class ExplainCall:
    """One explanation of one served version (see the module docstring)."""

    def __init__(
        self, served: ServedVersion, settings: Settings, lifecycle: Lifecycle, metrics: Metrics
    ) -> None:
        self._served, self._lifecycle, self._metrics = served, lifecycle, metrics
        self.name, self.version, self.settings = served.name, served.version, settings
        self.signature = served.runtime.signature
        self._method = "occlusion"
        self._rows = 0
        self._deadline_at: float | None = None
        self._input_values = 0

    async def __aenter__(self) -> ExplainCall:
        if self._lifecycle.draining:
            raise Unavailable("server is draining")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            result = "ok"
        elif isinstance(exc, asyncio.CancelledError):
            late = self._deadline_at is not None and time.monotonic() >= self._deadline_at
            result = "timeout" if late else "cancelled"
        else:
            result = status_label(exc)
        self._metrics.observe_explanation(self.name, self._method, result, self._rows)

    def check_explainable(self) -> None:
        """400 unless the model takes one image ``[-1, H, W, C]`` and answers class scores ``[-1, K]``."""
        inputs, first = self.signature.inputs, self.signature.outputs[0]
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or len(first.shape) != 2:
            raise InvalidInput(
                f"model '{self.name}' cannot be explained: explanations need one image input [-1,H,W,C] "
                "and class scores [-1,K] as the first output"
            )

    async def explain(self, request: ExplainRequest) -> Explanation:
        """Explain one image (see the module docstring)."""
        started = time.perf_counter()
        self._method = request.method if request.method in ("occlusion", "rise") else "unknown"
        self.check_explainable()
        pre = self._served.runtime.metadata.preprocessing
        shape = (pre.height, pre.width, pre.channels)
        self._input_values = pre.height * pre.width * pre.channels
        baseline = baseline_value(pre)
        # Parameters and the row limit are checked on a stand-in before the body is decoded.
        _explainer(request, np.zeros(shape, np.float32), baseline, self.settings.explain_max_rows)
        deadline = request.deadline
        if deadline is None:
            deadline = time.monotonic() + self.settings.default_timeout_s
        self._deadline_at = deadline
        image = await self._input(request, shape)
        explainer = _explainer(request, image, baseline, self.settings.explain_max_rows)
        scores = (await self._score(image[None], deadline))[0]
        self._rows += 1
        class_id = self._class_id(request.label, scores)
        await self._run(explainer, class_id, deadline)
        labels = self._served.runtime.labels
        return Explanation(
            model=self.name,
            version=self.version,
            class_id=class_id,
            label=labels[class_id] if class_id < len(labels) else str(class_id),
            score=float(scores[class_id]),
            method=explainer.method,
            attribution=explainer.attribution(float(scores[class_id])),
            input=image,
            preprocessing=pre,
            parameters=explainer.describe(),
            rows=self._rows,
            milliseconds=(time.perf_counter() - started) * 1000.0,
        )

    async def _input(self, request: ExplainRequest, shape: tuple[int, int, int]) -> np.ndarray:
        if (request.image is None) == (request.input is None):
            raise InvalidInput("an explanation needs exactly one image")
        if request.input is not None:
            array = np.asarray(request.input)
            if array.shape != shape:
                raise InvalidInput(f"the image must have shape {list(shape)}, got {list(array.shape)}")
            return array.astype(np.float32)
        if not request.image:
            raise InvalidInput("empty image")
        # As /classify: decoding costs milliseconds, so it runs off the event loop.
        batch = await asyncio.to_thread(
            prepare_all,
            [(None, request.image)],
            self._served.runtime.metadata.preprocessing,
            max_pixels=self.settings.max_image_pixels,
        )
        return batch[0]

    def _class_id(self, label: str | None, scores: np.ndarray) -> int:
        """The class named by ``label`` (a label or an index), the top-1 of ``scores`` when None."""
        classes = len(scores)
        if label is None:
            return int(np.argmax(scores))
        labels = self._served.runtime.labels
        if label in labels:
            return labels.index(label)
        if label.isascii() and label.isdigit() and int(label) < classes:
            return int(label)
        shown = ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")
        raise InvalidInput(
            f"unknown label {label[:64]!r}; give one of the model's labels ({shown}) or 0..{classes - 1}"
        )

    async def _score(self, rows: np.ndarray, deadline: float) -> np.ndarray:
        """The first output's scores for ``rows``, computed in the background lane."""
        spec = self.signature.inputs[0]
        outputs = await self._served.batcher.submit(
            {spec.name: rows.astype(spec.dtype, copy=False)}, deadline=deadline, background=True
        )
        return np.asarray(outputs[self.signature.outputs[0].name], np.float64)

    async def _run(self, explainer: Explainer, class_id: int, deadline: float) -> None:
        """Score every row of ``explainer`` for ``class_id``, a window of jobs at a time."""
        job, window = self.settings.explain_job_rows, WINDOW
        inline = job * self._input_values <= _INLINE_VALUES
        running: dict[asyncio.Future[np.ndarray], int] = {}
        start = 0
        try:
            while start < explainer.rows or running:
                while start < explainer.rows and len(running) < window:
                    stop = min(explainer.rows, start + job)
                    if inline:
                        rows = explainer.perturbed(start, stop)
                    else:
                        rows = await asyncio.to_thread(explainer.perturbed, start, stop)
                    running[asyncio.ensure_future(self._score(rows, deadline))] = start
                    start = stop
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    first = running.pop(future)
                    scores = future.result()
                    self._rows += len(scores)
                    explainer.add(first, scores[:, class_id])
        finally:
            for future in running:
                future.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)


def _explainer(request: ExplainRequest, image: np.ndarray, baseline: float, max_rows: int) -> Explainer:
    return make_explainer(
        request.method,
        image,
        baseline,
        patch=request.patch,
        stride=request.stride,
        masks=request.masks,
        grid=request.grid,
        seed=request.seed,
        max_rows=max_rows,
    )
