"""One served model version: its checked and warmed onnxruntime session, its batcher and its metrics.

:func:`load_and_warm` and :func:`serve` build one (the loading runs in a worker thread: hash check,
session, signature against the served version's, warm-up at the batch shapes seen most);
:func:`stop_served` computes what it has queued and releases it. Which versions serve, and when they
are swapped, is :class:`service.core.registry.ModelRegistry`'s business.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from service.core.batching import Batcher
from service.core.offload import ProcessRuntime
from service.core.runtime import ModelLoadError, ModelRuntime, load_model
from service.core.signature import ModelSignature
from service.settings import Settings
from service.telemetry.metrics import Metrics, ModelMetrics
from service.telemetry.tracing import Tracing


class IndexRow(NamedTuple):
    """One version found in the repository: its state (``READY`` or ``UNAVAILABLE``) and why."""

    name: str
    version: int
    state: str
    reason: str


@dataclass
class ServedVersion:
    """One loaded, warmed model version with its batcher and metrics."""

    runtime: ModelRuntime | ProcessRuntime
    batcher: Batcher
    metrics: ModelMetrics
    loaded_at: float = field(default_factory=time.time)
    #: Requests that resolved this version and have not submitted yet (:class:`service.core.call.ModelCall`
    #: counts them): a retired version stops admitting only once they have, so a request that chose it
    #: just before a swap (its body still arriving) is computed, not refused.
    calls: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    def enter(self) -> None:
        self.calls += 1
        self.idle.clear()

    def leave(self) -> None:
        self.calls -= 1
        if self.calls == 0:
            self.idle.set()

    @property
    def name(self) -> str:
        return self.runtime.name

    @property
    def version(self) -> int:
        return self.runtime.version


def warmup_batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two up to ``max_batch_size``, and that size itself: the batch shapes seen most."""
    sizes = {max_batch_size}
    size = 1
    while size < max_batch_size:
        sizes.add(size)
        size *= 2
    return sorted(sizes)


def load_and_warm(
    path: Path, providers: list[str], threads: int, settings: Settings, signature: ModelSignature | None
) -> ModelRuntime | ProcessRuntime:
    """The version directory ``path`` loaded onto ``providers`` with ``threads`` intra-op threads and
    warmed up, in this process or in a child process of its own (``settings.compute``);
    :class:`ModelLoadError` when it fails a check, when its signature is not ``signature`` (the served
    version's, None for a model's first version), or when the warm-up fails."""
    sizes = warmup_batch_sizes(settings.max_batch_size)
    runtime: ModelRuntime | ProcessRuntime
    if settings.compute != "thread":
        runtime = ProcessRuntime.start(
            path,
            providers=providers,
            intra_op_threads=threads,
            inter_op_threads=settings.inter_op_threads,
            warmup=sizes,
        )
        if settings.compute == "auto":  # lone requests compute here (service.core.batching)
            try:
                runtime.local = load_model(
                    path,
                    providers=providers,
                    intra_op_threads=threads,
                    inter_op_threads=settings.inter_op_threads,
                )
                runtime.local.warm_up(sizes[:1])
            except BaseException:
                runtime.close()
                raise
    else:
        runtime = load_model(
            path, providers=providers, intra_op_threads=threads, inter_op_threads=settings.inter_op_threads
        )
    try:
        if signature is not None and signature != runtime.signature:
            raise ModelLoadError(
                f"{path}: signature differs from the served version's "
                f"({runtime.signature!r} vs {signature!r})"
            )
        if isinstance(runtime, ModelRuntime):
            runtime.warm_up(sizes)
    except ModelLoadError:
        runtime.close()
        raise
    return runtime


def serve(
    runtime: ModelRuntime | ProcessRuntime,
    settings: Settings,
    metrics: Metrics,
    executor: concurrent.futures.Executor,
    tracing: Tracing | None,
) -> ServedVersion:
    """A loaded runtime put to work: its batcher started on the shared compute ``executor``, its metrics
    registered."""
    name, version = runtime.name, runtime.version
    model_metrics = metrics.for_version(name, version)
    batcher = Batcher(
        runtime.run if isinstance(runtime, ModelRuntime) else runtime,
        lone=runtime.local.run if isinstance(runtime, ProcessRuntime) and runtime.local else None,
        max_batch_size=settings.max_batch_size,
        max_queue_delay_us=settings.max_queue_delay_us,
        max_queue_rows=settings.max_queue_rows,
        executor=executor,
        observer=model_metrics,
        wait=settings.batch_wait,
        stage=settings.batch_staging,
        name=f"{name}/{version}",
        tracer=None
        if tracing is None
        else tracing.batches(name, version, runtime.provider, settings.max_batch_size),
        max_background_rows=settings.explain_job_rows,
    )
    batcher.start()
    model_metrics.set_served(runtime.provider)
    return ServedVersion(runtime, batcher, model_metrics)


async def stop_served(old: ServedVersion, timeout: float) -> None:
    """Compute what ``old`` has queued (up to ``timeout`` seconds), then release its metrics and session."""
    await old.batcher.stop(drain=True, timeout=timeout)
    old.metrics.remove()
    old.runtime.close()
