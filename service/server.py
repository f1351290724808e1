"""The process: ``python -m service`` runs the inference service under uvicorn, with a drain on SIGTERM.

On SIGTERM (or Ctrl-C) the service drains before it stops: readiness turns 503 and new
requests are refused with 503 + Retry-After at once (with ``Connection: close``, so no client reuses
a connection that is about to close), while queued requests are computed without waiting for their
batches to fill and running ones finish. Then new connections are refused, those already accepted are
answered, uvicorn closes the listener and the connections, and the lifespan releases the sessions.
All of it is bounded by ``SERVE_DRAIN_SECONDS``. A second Ctrl-C exits at once. gRPC (served by the
same app's lifespan) drains alike: readiness false and new calls UNAVAILABLE from the signal on, calls in
flight answered, and its port closed once HTTP has stopped.

The drain hooks into :class:`uvicorn.Server` where uvicorn offers no public hook: ``handle_exit``,
``on_tick``, ``shutdown``, ``should_exit``, ``servers`` and ``config.timeout_graceful_shutdown``. The
uvicorn pin in ``pyproject.toml`` has an upper bound, and ``tests/service/test_server.py`` checks each
of these against the installed uvicorn, so an upgrade that changes them fails the tests, not a drain.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import functools
import gc
import logging
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from service.app import create_app
from service.core import InferenceService
from service.http.connection import ConnectionLimits, core_of, guarded_protocol
from service.http.dispatch import outermost
from service.settings import Settings
from service.storage import StoreError, is_remote, open_store
from service.telemetry import logs, tracing

log = logging.getLogger("service")


def app_from_env() -> FastAPI:
    """uvicorn factory: the app configured from ``SERVE_*`` environment variables, HTTP only (uvicorn
    does not tell a factory its host; ``python -m service`` serves gRPC as well), traced when ``OTEL_*``
    variables configure an OTLP endpoint."""
    return create_app(Settings(), background_load=True, tracing=tracing.from_env())


def _core(app: Any) -> InferenceService | None:
    return core_of(app)


class ServiceConfig(uvicorn.Config):
    """uvicorn's configuration, with infer requests answered ahead of every middleware layer that does
    nothing for them (:func:`service.http.dispatch.outermost`) when the app allows it."""

    def load(self) -> None:
        super().load()
        self.loaded_app = outermost(self.loaded_app, core_of(self.loaded_app))


class DrainingServer(uvicorn.Server):
    """A uvicorn server that drains its model queues before it stops accepting connections."""

    drain_seconds: float = 10.0
    _drain_deadline: float | None = None
    _flush: asyncio.Task[None] | None = None
    #: Freeze what is alive and raise the collector's thresholds once the models serve (:func:`_settle_gc`);
    #: ``python -m service`` sets it, a process that embeds the server decides for itself.
    settle_gc = False
    _gc_settled = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_deadline is not None or self.should_exit:
            super().handle_exit(sig, frame)  # second signal: stop now
            return
        core = _core(self.config.loaded_app)
        if core is not None:
            self._drain_deadline = core.begin_drain()
        else:
            self._drain_deadline = time.monotonic() + self.drain_seconds
        log.info("signal %d: draining (readiness now 503, up to %.1f s)", sig, self.drain_seconds)

    def _time_left(self) -> float:
        return 0.0 if self._drain_deadline is None else max(0.0, self._drain_deadline - time.monotonic())

    async def on_tick(self, counter: int) -> bool:
        if self.settle_gc and not self._gc_settled:
            self._gc_settled = _settle_gc(_core(self.config.loaded_app))
        if self._drain_deadline is not None and not self.should_exit:
            core = _core(self.config.loaded_app)
            if core is not None and self._flush is None:
                # Queued requests are computed now: no new rows will come to fill their batches, and
                # waiting out max_queue_delay_us could outlast the drain.
                self._flush = asyncio.create_task(core.stop_admitting_and_flush())
            idle = core is None or core.pending() == 0
            if idle or time.monotonic() >= self._drain_deadline:
                log.info("drained (%s); stopping", "queues empty" if idle else "drain time over")
                self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._drain_deadline is not None:
            # Closing a listener resets the connections in its kernel accept queue, whose clients may
            # already have sent a request. So new handshakes are refused first, and what is queued is
            # accepted and answered (503 while draining) before uvicorn closes the listener.
            for server in self.servers:
                for sock in server.sockets:
                    _refuse_new_connections(sock)
            await asyncio.sleep(min(ACCEPT_GRACE_S, self._time_left()))
            # What is left of the drain bounds the wait for open responses (uvicorn counts whole seconds).
            self.config.timeout_graceful_shutdown = max(1, math.ceil(self._time_left()))
        await super().shutdown(sockets)


#: The cyclic garbage collector's thresholds once the models are loaded (CPython's default: 700, 10, 10).
#: A request allocates a few hundred container objects (scope, messages, futures, tasks), so with the
#: default every few requests pay a young collection and every few hundred a middle one, on the event
#: loop; fewer, larger young collections cost the same in total and pause the loop less often.
GC_THRESHOLDS = (20_000, 20, 20)


def _settle_gc(core: InferenceService | None) -> bool:
    """Once the models serve: move everything alive (modules, the app, the sessions) out of the garbage
    collector's reach (``gc.freeze``) and raise its thresholds, so that no collection on the event loop
    walks the hundreds of thousands of long-lived objects again (a full one took tens of milliseconds,
    a request's p99 at c=64). Returns whether it was done (it is retried on the next tick until then)."""
    if core is None:
        return False
    try:
        core.check_ready()
    except Exception:  # not ready yet (or draining): try again later
        return False
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return True


#: After refusing new connections, how long accepted ones get to deliver their request and be answered.
ACCEPT_GRACE_S = 0.3
_SO_ATTACH_FILTER = 26  # Linux <asm-generic/socket.h>


def _refuse_new_connections(sock: Any) -> None:
    """Make a listening socket drop incoming handshakes (Linux: a one-instruction "drop all" BPF filter).

    Clients retry their SYN and get "connection refused" once the listener is closed; connections already
    accepted or queued are not affected. Elsewhere this does nothing.
    """
    if sys.platform != "linux":
        return
    program = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))  # BPF_RET | BPF_K, 0 bytes
    fprog = struct.pack("HP", 1, ctypes.addressof(program))  # struct sock_fprog
    raw = socket.socket(fileno=sock.fileno())
    try:
        raw.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    except OSError as exc:
        log.debug("cannot stop new connections on %s: %s", raw.getsockname(), exc)
    finally:
        raw.detach()  # the fd belongs to the server


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve the model repository over the KServe V2 protocol. Settings: SERVE_* variables.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the port (SO_REUSEPORT), each with its own models and drain",
    )
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # set for workers
    return parser.parse_args(argv)


def supervise(args: argparse.Namespace) -> int:
    """``--workers N``: N single-worker services on one port; signals are forwarded so each drains.

    If a worker dies on its own, the others are stopped and the supervisor exits non-zero, so the
    orchestrator (compose restart policy, Kubernetes) restarts the whole service.
    """
    cmd = [sys.executable, "-m", "service", "--host", args.host, "--port", str(args.port), "--reuse-port"]
    workers = {p.pid: p for p in (subprocess.Popen(cmd) for _ in range(args.workers))}
    stopping = False

    def forward(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers.values():
            if worker.poll() is None:
                worker.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    while workers:
        pid, code = os.wait()
        worker = workers.pop(pid, None)
        if worker is None:
            continue
        worker.returncode = os.waitstatus_to_exitcode(code)
        if not stopping:
            log.error("worker %d exited with %d; stopping the others", pid, worker.returncode)
            status = 1
            forward(signal.SIGTERM, None)
        elif worker.returncode:
            status = status or worker.returncode
    return status


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    return sock


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workers < 1 or not 0 <= args.port <= 65535 or (args.workers > 1 and args.port == 0):
        print(
            "error: --workers must be >= 1 and --port in 0..65535 (not 0 with several workers)",
            file=sys.stderr,
        )
        return 2
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"SERVE_{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        print(f"error: invalid settings: {problems}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    try:
        tracing.check_environment(os.environ)
    except tracing.TracingConfigError as exc:
        print(f"error: invalid tracing settings: {exc}", file=sys.stderr)
        return 2
    if is_remote(settings.model_repository):
        # A bucket that is missing, refused or empty is a configuration error: say so and exit, rather
        # than run unready (docs/cluster.md). Unreachable is the same here: nothing is cached to serve.
        try:
            open_store(settings.model_repository, cache_dir=settings.model_cache_dir).check()
        except StoreError as exc:
            print(f"error: SERVE_MODEL_REPOSITORY: {exc}", file=sys.stderr)
            return 2
    if args.workers > 1:
        return supervise(args)
    traces = tracing.from_env()  # None unless an OTLP endpoint is configured
    if traces is not None:
        log.info("tracing on: OTLP/HTTP export, sampler %s", os.environ.get("OTEL_TRACES_SAMPLER", "default"))
    # gRPC listens on the HTTP host, in the same event loop, started and stopped by the app's lifespan.
    factory = functools.partial(
        create_app,
        settings,
        background_load=True,
        grpc_host=args.host,
        grpc_reuse_port=args.reuse_port,
        tracing=traces,
    )
    config = ServiceConfig(
        factory,
        factory=True,
        host=args.host,
        port=args.port,
        log_level=settings.log_level,
        # JSON logs: uvicorn's loggers go through the root handler that service.telemetry.logs configured.
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        access_log=False,
        loop="uvloop",
        # httptools with header-block time and size limits, a connection cap, RFC 9112 framing and
        # JSON answers to protocol errors (service/http/connection.py); no WebSocket upgrades.
        http=guarded_protocol(ConnectionLimits.from_settings(settings)),
        ws="none",
        timeout_graceful_shutdown=max(1, int(settings.drain_seconds)),
        timeout_keep_alive=30,
        backlog=4096,
    )
    server = DrainingServer(config)
    server.drain_seconds = settings.drain_seconds
    server.settle_gc = True
    server.run(sockets=[_reuse_port_socket(args.host, args.port)] if args.reuse_port else None)
    return 0
