"""Compute in a process of its own (``SERVE_COMPUTE=process``): one child process per served model
version holds its onnxruntime session, so the interpreter lock the event loop needs is never shared
with the compute (docs/hotpath.md, "Compute in a process of its own").

The batcher hands a batch with :meth:`ProcessRuntime.submit`, on the event loop: its jobs' inputs are
copied into a memfd both processes map, in place of the join the thread mode makes, and a small
message (names, dtypes, shapes, offsets) goes over a socket pair. The child
(:mod:`service.core.offload_child`) runs the batch, writes the outputs into the same memory and
answers on the socket, which the loop watches
(``add_reader``); the outputs are copied out and given to the batcher's callback. No thread of this
process takes part, and nothing waits: the loop goes on with its requests while the child computes.
One batch is in the child at a time, as one batch computes at a time per batcher in the thread mode.

Children are forked from a zygote process that has imported numpy and onnxruntime once (one per
service process, :mod:`service.core.zygote`), so a child starts in milliseconds plus its model's load.
A child loads its version with every check of :func:`service.core.runtime.load_model` and warms up
before it answers ready; a version it refuses is a :class:`ModelLoadError`, as in the thread mode.

When a child dies (killed, or a crash inside onnxruntime), the batch it was computing fails with
:class:`~service.errors.InferenceFailed`, the death is logged, and a new child is started in a worker
thread; batches handed meanwhile wait for it. When the new one cannot start, the waiting batch fails,
and so does every batch for the next :data:`RESTART_BACKOFF_S` seconds, after which the next batch tries
again. A child that loses its parent (its socket closes) exits.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from service.core.offload_child import aligned, receive, send
from service.core.runtime import LoadedVersion, ModelMetadata, ModelRuntime
from service.core.zygote import Child, start_child

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]
#: ``done(outputs, seconds, error)`` on the event loop: outputs by name, or None and why the batch failed.
Done = Callable[[Arrays | None, float, str | None], None]

#: How long a failed restart keeps the version failing its batches before the next try.
RESTART_BACKOFF_S = 5.0


class ProcessRuntime(LoadedVersion):
    """One model version computed in a child process: what :class:`~service.core.runtime.ModelRuntime`
    tells about the version (``path``, ``metadata``, ``provider``...), and :meth:`submit` in place of
    ``run``. Build it with :meth:`start` in a worker thread; :meth:`attach` it to the event loop that
    submits; :meth:`close` stops the child."""

    def __init__(
        self,
        path: Path,
        metadata: ModelMetadata,
        child: Child,
        restart: Callable[[], Child],
    ) -> None:
        super().__init__(path, metadata)
        self.provider = child.provider
        self.intra_op_threads = child.threads
        self._child: Child | None = child
        self._restart = restart
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inflight: Done | None = None
        self._waiting: tuple[Sequence[Arrays], Done] | None = None  # handed while the child restarts
        self._restarting = False
        self._broken_until = 0.0
        self._closed = False
        #: With ``SERVE_COMPUTE=auto``, the same version loaded in this process too, for lone requests.
        self.local: ModelRuntime | None = None

    @classmethod
    def start(
        cls,
        path: Path,
        *,
        providers: Sequence[str],
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        warmup: Sequence[int] = (),
    ) -> ProcessRuntime:
        """The version directory ``path`` loaded and warmed up in a new child. Blocking; ModelLoadError
        as :func:`~service.core.runtime.load_model` raises it, or when the child cannot start."""
        if not providers:
            raise ValueError("providers must not be empty (see select_providers)")
        metadata = ModelMetadata.from_file(path / "metadata.json")

        def restart() -> Child:
            return start_child(
                path, metadata.sha256, list(providers), intra_op_threads, inter_op_threads, list(warmup)
            )

        return cls(path, metadata, restart(), restart)

    @property
    def pid(self) -> int | None:
        """The child's process id (None while it restarts)."""
        return None if self._child is None else self._child.pid

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch the child's answers on ``loop``; every :meth:`submit` comes from it from now on."""
        self._loop = loop
        if self._child is not None:
            loop.add_reader(self._child.conn.fileno(), self._answered)

    def submit(self, parts: Sequence[Arrays], done: Done) -> None:
        """On the loop: compute the rows of ``parts`` joined, and call ``done`` with the outputs. One
        batch at a time: the next is submitted after ``done`` was called."""
        if self._closed:
            done(None, 0.0, "the model version is closed")
        elif self._child is None:
            if self._restarting:
                self._waiting = (parts, done)
            elif time.monotonic() < self._broken_until:
                done(None, 0.0, "the compute process could not be restarted")
            else:
                self._waiting = (parts, done)
                self._begin_restart()
        else:
            self._send(self._child, parts, done)

    def _send(self, child: Child, parts: Sequence[Arrays], done: Done) -> None:
        start = time.perf_counter()
        try:
            places, end = [], 0
            for name, first in parts[0].items():
                shape = (sum(len(part[name]) for part in parts), *first.shape[1:])
                places.append((name, first.dtype.str, shape, end))
                end = aligned(end + first.dtype.itemsize * math.prod(shape))
            child.memory.ensure(end)
            for name, dtype, shape, at in places:
                view = child.memory.view(dtype, shape, at)
                if len(parts) == 1:
                    view[...] = parts[0][name]
                else:
                    np.concatenate([part[name] for part in parts], out=view)
            send(child.conn, (places, end, child.memory.size))
        except (OSError, EOFError):  # the child is gone: its death is read from the pipe
            self._inflight = done
            return
        except Exception as exc:  # inputs that do not join, as a failed compute in the thread mode
            done(None, time.perf_counter() - start, f"{type(exc).__name__}: {exc}")
            return
        self._inflight = done

    def _answered(self) -> None:
        child = self._child
        if child is None:
            return
        try:
            status, seconds, detail, size = receive(child.conn)
        except (EOFError, OSError):
            self._died(child)
            return
        child.memory.follow(size)
        done, self._inflight = self._inflight, None
        if done is None:
            return
        if status != "ok":
            done(None, seconds, str(detail))
            return
        outputs = {name: child.memory.view(dtype, shape, at).copy() for name, dtype, shape, at in detail}
        done(outputs, seconds, None)

    def _died(self, child: Child) -> None:
        assert self._loop is not None
        self._loop.remove_reader(child.conn.fileno())
        self._child = None
        child.stop()
        reason = f"the compute process {child.pid} exited"
        log.error("model %s version %d: %s; starting a new one", self.name, self.version, reason)
        done, self._inflight = self._inflight, None
        if done is not None:
            done(None, 0.0, reason)
        if not self._closed:
            self._begin_restart()

    def _begin_restart(self) -> None:
        assert self._loop is not None
        self._restarting = True
        future = self._loop.run_in_executor(None, self._restart)
        future.add_done_callback(self._restarted)

    def _restarted(self, future: asyncio.Future[Child]) -> None:
        self._restarting = False
        waiting, self._waiting = self._waiting, None
        error = future.exception()
        if error is not None or self._closed:
            if error is None:
                future.result().stop()
            else:
                log.error("model %s version %d: no compute process: %s", self.name, self.version, error)
                self._broken_until = time.monotonic() + RESTART_BACKOFF_S
            if waiting is not None:
                waiting[1](None, 0.0, "the compute process could not be restarted")
            return
        child = future.result()
        self._child = child
        assert self._loop is not None
        self._loop.add_reader(child.conn.fileno(), self._answered)
        log.info("model %s version %d: new compute process %d", self.name, self.version, child.pid)
        if waiting is not None:
            self._send(child, *waiting)

    def close(self) -> None:
        """Stop the child (after the batch it computes); a batch in flight or waiting fails. Idempotent."""
        self._closed = True
        child, self._child = self._child, None
        if child is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(child.conn.fileno())
            child.stop()
        for done in (self._inflight, self._waiting[1] if self._waiting else None):
            if done is not None:
                done(None, 0.0, "the model version is closed")
        self._inflight = self._waiting = None
        if self.local is not None:
            self.local.close()
