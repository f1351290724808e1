"""Load generation for the benchmarks, from a separate process: closed loop (capacity) and open loop (soak).

The client is a minimal HTTP/1.1 keep-alive client on asyncio streams: httpx's async pool costs
milliseconds per request at this concurrency, more than the service spends on one, and a load generator
must be cheaper than what it measures. Every request ends with an HTTP status or a named error.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("DATA_DIR", ROOT.parent / "shared" / "data"))
TIMEOUT_S = 30.0  # a request without an answer after this long is lost
NO_ANSWER = 0  # status recorded for a request that got no HTTP answer


def request_bodies(count: int = 256) -> list[tuple[bytes, dict[str, str]]]:
    """Real MNIST test images as infer bodies, JSON and binary alternately."""
    raw = gzip.decompress((DATA_DIR / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes())
    pixels = np.frombuffer(raw, np.uint8, count=count * 784, offset=16).reshape(count, 1, 28, 28, 1)
    bodies: list[tuple[bytes, dict[str, str]]] = []
    for i, image in enumerate(pixels):
        if i % 2 == 0:
            tensor = {"name": "image", "datatype": "UINT8", "shape": [1, 28, 28, 1], "data": image.ravel()}
            bodies.append((orjson.dumps({"inputs": [tensor]}, option=orjson.OPT_SERIALIZE_NUMPY), {}))
        else:
            head = orjson.dumps(
                {
                    "inputs": [
                        {
                            "name": "image",
                            "datatype": "UINT8",
                            "shape": [1, 28, 28, 1],
                            "parameters": {"binary_data_size": 784},
                        }
                    ]
                }
            )
            bodies.append((head + image.tobytes(), {"Inference-Header-Content-Length": str(len(head))}))
    return bodies


class Connection:
    """One keep-alive HTTP/1.1 connection, speaking just enough of the protocol to POST and read answers.

    httpx's async pool costs milliseconds per request at this concurrency, more than the service spends;
    a load generator has to be cheaper than what it measures.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
        writer.write(head.encode() + body)
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower().split("\r\n")
        fields = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
        await reader.readexactly(int(fields["content-length"]))
        if "close" in fields.get("connection", ""):
            self.close()
        return int(lines[0].split()[1])

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def _send(conn: Connection, path: str, body: tuple[bytes, dict[str, str]]) -> tuple[int, str]:
    """The answer's status, or NO_ANSWER and the error's name (connection reset, timeout, ...)."""
    try:
        return await asyncio.wait_for(conn.post(path, *body), TIMEOUT_S), ""
    except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError, ValueError, KeyError) as exc:
        conn.close()
        return NO_ANSWER, type(exc).__name__


def _target(url: str) -> tuple[str, int, str]:
    parsed = httpx.URL(url)
    return parsed.host, parsed.port or 80, parsed.raw_path.decode()


async def _closed_loop(url: str, seconds: float, connections: int) -> float:
    host, port, path = _target(url)
    bodies = request_bodies()
    done = 0
    end = time.monotonic() + seconds

    async def worker(k: int) -> None:
        nonlocal done
        conn = Connection(host, port)
        while time.monotonic() < end:
            status, _ = await _send(conn, path, bodies[(done + k) % len(bodies)])
            done += status == 200
        conn.close()

    started = time.monotonic()
    await asyncio.gather(*(worker(k) for k in range(connections)))
    return done / (time.monotonic() - started)


async def _open_loop(url: str, rate: float, seconds: float, connections: int = 64) -> dict[str, Any]:
    """Request i is due at i / rate; ``connections`` workers take due requests in order. A request that
    waits for a free connection is late, and its latency (from the due time) says so; ``service`` is the
    time from sending to the answer alone."""
    host, port, path = _target(url)
    bodies = request_bodies()
    count = int(rate * seconds)
    due = np.arange(count) / rate
    latency = np.full(count, np.nan)
    service = np.full(count, np.nan)
    status = np.zeros(count, np.int16)
    errors: dict[str, int] = {}
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    t0 = time.monotonic()

    async def worker() -> None:
        conn = Connection(host, port)
        while (i := await queue.get()) is not None:
            sent = time.monotonic()
            code, error = await _send(conn, path, bodies[i % len(bodies)])
            answered = time.monotonic()
            latency[i], service[i] = answered - t0 - due[i], answered - sent
            status[i] = code
            if error:
                errors[error] = errors.get(error, 0) + 1
        conn.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    for i in range(count):
        delay = t0 + due[i] - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(i)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)  # every request ends with an answer or an error (timeout included)
    return {"t0": t0, "due": due, "latency": latency, "service": service, "status": status, "errors": errors}


def _load_process(mode: str, url: str, value: float, seconds: float, out: str) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if mode == "capacity":
        Path(out).write_text(json.dumps(asyncio.run(_closed_loop(url, seconds, int(value)))))
    else:
        result = asyncio.run(_open_loop(url, value, seconds))
        np.savez(out, **{k: v for k, v in result.items() if k != "errors"})
        Path(out + ".errors.json").write_text(json.dumps(result["errors"]))


def run_load(mode: str, url: str, value: float, seconds: float, out: Path) -> mp.process.BaseProcess:
    process = mp.get_context("spawn").Process(
        target=_load_process, args=(mode, url, value, seconds, str(out))
    )
    process.start()
    return process
