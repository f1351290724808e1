"""Closed-loop load from separate processes, over gRPC (``ModelInfer``) or HTTP/1.1, with latencies.

No gRPC load generator is packaged in Debian, so this is a small one: ``processes`` spawned processes,
each an asyncio loop with its share of ``concurrency`` workers, each worker sending its next request as
soon as the previous one is answered, for ``seconds``. gRPC requests are serialized once up front and sent
as bytes on one ``grpc.aio`` channel per process (HTTP/2 streams), so the client does no protobuf work per
call; HTTP requests use :class:`bench.loadgen.Connection` (one keep-alive connection per worker). Both
sides of a comparison therefore pay the same Python client costs. Every call ends with a status: ``OK`` /
``200``, a gRPC status name or HTTP code, or the name of the transport error.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing as mp
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.loadgen import TIMEOUT_S, Connection
from service.grpc.tensors import build_infer_request

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
#: What a client sets on its channel: Triton's clients lift gRPC's 4 MiB default the same way.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.max_send_message_length", 2**31 - 1),
]


def infer_request_bytes(model: str, image: np.ndarray, *, raw: bool) -> bytes:
    """A serialized ``ModelInferRequest`` for one FP32 image batch (raw or typed contents)."""
    request = build_infer_request(model, {"image": ("FP32", image)}, raw=raw, outputs=["probabilities"])
    return request.SerializeToString()


Call = Callable[[], Awaitable[str]]


def _grpc_caller(address: str, body: bytes) -> tuple[Callable[[], Call], Callable[[], Awaitable[None]]]:
    channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    infer = channel.unary_unary(MODEL_INFER)  # no (de)serializers: bytes in, bytes out

    def make() -> Call:
        async def call() -> str:
            try:
                await infer(body, timeout=TIMEOUT_S)
                return "OK"
            except grpc.aio.AioRpcError as exc:
                return exc.code().name

        return call

    return make, channel.close


def _http_caller(
    address: str, path: str, body: bytes, headers: dict[str, str]
) -> tuple[Callable[[], Call], Callable[[], Awaitable[None]]]:
    host, port = address.rsplit(":", 1)
    connections: list[Connection] = []

    def make() -> Call:
        conn = Connection(host, int(port))
        connections.append(conn)

        async def call() -> str:
            try:
                return str(await asyncio.wait_for(conn.post(path, body, headers), TIMEOUT_S))
            except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError, ValueError, KeyError) as e:
                conn.close()
                return type(e).__name__

        return call

    async def close() -> None:
        for conn in connections:
            conn.close()

    return make, close


async def _closed_loop(target: dict[str, Any], workers: int, seconds: float) -> dict[str, Any]:
    if target["protocol"] == "grpc":
        make, close = _grpc_caller(target["address"], target["body"])
    else:
        make, close = _http_caller(target["address"], target["path"], target["body"], target["headers"])
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    end = time.monotonic() + seconds

    async def worker() -> None:
        call = make()
        while time.monotonic() < end:
            started = time.perf_counter()
            status = await call()
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = time.monotonic() - started
    await close()
    return {"latencies": latencies, "statuses": statuses, "elapsed": elapsed}


def _process_main(target: dict[str, Any], workers: int, seconds: float, out: str) -> None:
    if target["protocol"] == "http":  # grpc.aio runs on asyncio's own loop; HTTP gets uvloop as the service
        import uvloop

        uvloop.install()
    result = asyncio.run(_closed_loop(target, workers, seconds))
    np.save(out + ".npy", np.asarray(result["latencies"], np.float64))
    Path(out + ".json").write_text(json.dumps({"statuses": result["statuses"], "elapsed": result["elapsed"]}))


def closed_loop(
    target: dict[str, Any], *, concurrency: int, seconds: float, processes: int = 1
) -> dict[str, Any]:
    """Drive ``target`` and summarise: ``rps`` (OK answers per second), ``p50_ms``, ``p99_ms``,
    ``responses``, ``failed`` and the count of each status.

    ``target`` is ``{"protocol": "grpc", "address", "body"}`` or ``{"protocol": "http", "address", "path",
    "body", "headers"}``.
    """
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    context = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        outs = [str(Path(tmp) / f"p{i}") for i in range(processes)]
        procs = [
            context.Process(target=_process_main, args=(target, share, seconds, out))
            for share, out in zip(shares, outs, strict=True)
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(seconds + TIMEOUT_S + 60)
            if proc.is_alive():
                proc.kill()
                proc.join()
                raise RuntimeError("a load process did not finish")
            if proc.exitcode != 0:
                raise RuntimeError(f"a load process exited with {proc.exitcode}")
        latencies = np.concatenate([np.load(out + ".npy") for out in outs])
        parts = [json.loads(Path(out + ".json").read_text()) for out in outs]
    statuses: dict[str, int] = {}
    for part in parts:
        for status, count in part["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    ok = statuses.get("OK", 0) + statuses.get("200", 0)
    elapsed = max(part["elapsed"] for part in parts)
    p50, p99 = (np.percentile(latencies, [50, 99]) * 1000).tolist() if len(latencies) else (math.nan,) * 2
    return {
        "rps": ok / elapsed,
        "p50_ms": p50,
        "p99_ms": p99,
        "responses": int(sum(statuses.values())),
        "failed": int(sum(statuses.values()) - ok),
        "statuses": statuses,
    }
