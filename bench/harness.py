"""What every HTTP benchmark shares: free ports, server processes, request bodies, and ``hey``.

Servers run as real processes on loopback; ``hey`` is a separate process on the same cores, so numbers
from one run compare with each other, not with another machine's.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DATA_DIR = Path(os.environ.get("DATA_DIR", ROOT.parent / "shared" / "data"))
READY_TIMEOUT_S = 120

Bodies = dict[str, tuple[Path, dict[str, str]]]


def machine_load() -> dict[str, float]:
    """The machine's load now: 1-minute load average and the CPU counters ``steal_share`` needs."""
    load1 = float(Path("/proc/loadavg").read_text().split()[0])
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return {"load1": load1, "cpu_ticks": float(sum(fields)), "steal_ticks": float(fields[7])}


def load_report(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Load before and after a run, the share of CPU time stolen by the hypervisor meanwhile, and
    ``busy``: True when the run cannot be trusted as a quiet-machine figure (other work was running
    before it started, at least a quarter of a core per core, or more than 2 % of CPU time was stolen)."""
    ticks = after["cpu_ticks"] - before["cpu_ticks"]
    steal = (after["steal_ticks"] - before["steal_ticks"]) / ticks if ticks > 0 else 0.0
    cpus = os.cpu_count() or 1
    busy = before["load1"] >= 0.25 * cpus or steal > 0.02
    return {"load1_before": before["load1"], "load1_after": after["load1"], "steal": steal, "busy": busy}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PortTaken(RuntimeError):
    """A server exited because a port chosen for it was taken between choosing and binding it."""


# What uvicorn and the service's gRPC listener log when a port they were given is already bound.
PORT_TAKEN = ("address already in use", "cannot listen for grpc", "failed to bind")


def log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextmanager
def process(
    cmd: list[str], env: dict[str, str], ready_url: str, log: Path, cwd: Path = ROOT
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` (output to ``log``) until the block ends; ready once ``ready_url`` answers 200 or 405.

    A process that exits before it is ready raises :class:`PortTaken` when its log says a port was
    already bound (another process took it after :func:`free_port` chose it), RuntimeError otherwise;
    both carry the end of the log."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                tail = log_tail(log)
                error = PortTaken if any(m in tail.lower() for m in PORT_TAKEN) else RuntimeError
                raise error(f"{cmd[:4]} exited with {proc.returncode}; end of {log}:\n{tail}")
            try:
                if httpx.get(ready_url, timeout=2).status_code in (200, 405):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{cmd[:4]} not ready; end of {log}:\n{log_tail(log)}")
            time.sleep(0.2)
        yield proc
    finally:
        stop(proc)


@dataclass(frozen=True)
class Served:
    """A running ``python -m service`` and the ports it listens on (``grpc_port`` 0: gRPC off)."""

    proc: subprocess.Popen[bytes]
    port: int
    grpc_port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


@contextmanager
def service(
    env: dict[str, str],
    log: Path,
    *,
    args: Sequence[str] = (),
    prefix: Sequence[str] = (),
    cwd: Path = ROOT,
    grpc: bool = True,
    attempts: int = 3,
) -> Iterator[Served]:
    """``python -m service`` (after ``prefix``, e.g. ``prlimit``) on free loopback ports with ``env``'s
    settings, ready until the block ends. Ports are chosen here, fresh for each of up to ``attempts``
    starts: a port taken by another process between choosing and binding it costs a retry, not the run."""
    for attempt in range(attempts):
        port, grpc_port = free_port(), free_port() if grpc else 0
        cmd = [*prefix, sys.executable, "-m", "service", "--port", str(port), *args]
        full_env = {**env, "SERVE_GRPC_PORT": str(grpc_port)}
        with ExitStack() as stack:
            try:
                proc = stack.enter_context(
                    process(cmd, full_env, f"http://127.0.0.1:{port}/v2/health/ready", log, cwd)
                )
            except PortTaken:
                if attempt + 1 == attempts:
                    raise
                continue
            yield Served(proc, port, grpc_port)
            return
    raise AssertionError("unreachable")


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM a process this benchmark started; SIGKILL it if it outlives ``timeout``."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def first_test_image() -> np.ndarray:
    import gzip

    raw = gzip.decompress((DATA_DIR / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes())
    return np.frombuffer(raw, np.uint8, count=784, offset=16).reshape(1, 28, 28, 1).astype(np.float32)


def write_bodies(image: np.ndarray, workdir: Path) -> Bodies:
    """One-image infer bodies: ``json`` (FP32 values, about 16 KB) and ``binary`` (binary tensors)."""
    json_body = orjson.dumps(
        {
            "inputs": [
                {"name": "image", "datatype": "FP32", "shape": [1, 28, 28, 1], "data": image.ravel().tolist()}
            ]
        }
    )
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "FP32",
                    "shape": [1, 28, 28, 1],
                    "parameters": {"binary_data_size": image.nbytes},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    )
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "body.json").write_bytes(json_body)
    (workdir / "body.bin").write_bytes(header + image.tobytes())
    return {
        "json": (workdir / "body.json", {"Content-Type": "application/json"}),
        "binary": (
            workdir / "body.bin",
            {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
        ),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and its live descendants (Linux ``/proc``)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    family, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in family]
        family.update(children)
        frontier.extend(children)
    ticks = 0
    for member in family:
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def hey(
    url: str,
    body: Path,
    headers: dict[str, str],
    concurrency: int,
    seconds: float,
    server_pid: int | None = None,
) -> dict[str, float]:
    """POST ``body`` for ``seconds`` from ``concurrency`` connections; req/s, p50, p99 and failures.

    CPU time per answered request is measured too: ``client_cpu_us`` (hey's) and, given ``server_pid``,
    ``server_cpu_us`` (that process and its children). Unlike throughput, it hardly moves when other
    work competes for the cores, so it compares servers fairly on a shared machine.
    """
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST", "-D", str(body), "-t", "30"]
    for key, value in headers.items():
        if key.lower() == "content-type":
            cmd += ["-T", value]
        else:
            cmd += ["-H", f"{key}: {value}"]
    server_before = cpu_seconds(server_pid) if server_pid is not None else 0.0
    client_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    client_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_s = cpu_seconds(server_pid) - server_before if server_pid is not None else float("nan")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = {int(p): float(v) * 1000 for p, v in re.findall(r"(\d+)%+ in ([\d.]+) secs", out)}
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}
    errors = 0
    if "Error distribution:" in out:
        tail = out.split("Error distribution:")[1]
        errors = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s", tail, re.M))
    total = sum(codes.values())
    client_s = sum(getattr(client_after, f) - getattr(client_before, f) for f in ("ru_utime", "ru_stime"))
    return {
        "rps": rps,
        "server_cpu_us": 1e6 * server_s / max(total, 1),
        "client_cpu_us": 1e6 * client_s / max(total, 1),
        "p50_ms": pct.get(50, float("nan")),
        "p99_ms": pct.get(99, float("nan")),
        "responses": total,
        "non_2xx": total - sum(n for c, n in codes.items() if 200 <= c < 300) + errors,
    }


def report(target: str, concurrency: int, r: dict[str, float]) -> None:
    line = (
        f"{target:24} c={concurrency:3}: {r['rps']:8.0f} req/s  p50 {r['p50_ms']:6.1f} ms  "
        f"p99 {r['p99_ms']:6.1f} ms  non-2xx {r['non_2xx']:.0f}  cpu/req {r['server_cpu_us']:4.0f} us"
    )
    if "rows_per_batch" in r:
        line += f"  {r['rows_per_batch']:5.1f} rows/batch, held {r['held_us_per_batch']:4.0f} us/batch"
    print(line, flush=True)


def h2load(
    url: str,
    body: Path,
    headers: dict[str, str],
    concurrency: int,
    seconds: float,
    *,
    http1: bool = False,
    ok_data_bytes: int | None = None,
    server_pid: int | None = None,
    streams: int = 1,
) -> dict[str, float]:
    """Like :func:`hey`, with ``h2load`` (nghttp2's C load generator, one thread): ``concurrency``
    requests in flight, over HTTP/1.1 (``http1``) or HTTP/2 without TLS (h2c); ``concurrency / streams``
    connections, each with ``streams`` requests in flight at once (HTTP/2 multiplexes them; HTTP/1.1 only
    takes 1).

    gRPC calls are HTTP/2 POSTs whose status travels in trailers, which h2load does not read: an answer
    counts as OK only when ``ok_data_bytes`` is given and the DATA bytes received add up to that many
    per answer (an OK ``ModelInferResponse`` has one fixed size for a fixed request; a failed call has
    no message). Latencies (p50, p99) come from h2load's per-request log.
    """
    log = body.with_name(f"h2load-{os.getpid()}.log")
    if streams < 1 or concurrency % streams or (http1 and streams != 1):
        raise ValueError(f"{concurrency} requests do not split into connections of {streams} streams")
    connections = str(concurrency // streams)
    cmd = ["h2load", "-D", f"{seconds:g}", "-c", connections, "-m", str(streams), "-d", str(body)]
    cmd += ["--log-file", str(log)] + ["--h1"] * http1
    for key, value in headers.items():
        cmd += ["-H", f"{key.lower()}: {value}"]
    server_before = cpu_seconds(server_pid) if server_pid is not None else 0.0
    client_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        out = subprocess.run(
            [*cmd, url], capture_output=True, text=True, timeout=seconds + 60, check=True
        ).stdout
        client_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_s = cpu_seconds(server_pid) - server_before if server_pid is not None else float("nan")
        durations = np.loadtxt(log, usecols=2, ndmin=1) if log.stat().st_size else np.zeros(0)
    finally:
        log.unlink(missing_ok=True)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    elapsed = re.search(r"finished in ([\d.]+)(m?s)", out)
    data = re.search(r"headers \([^)]*\), ([\d.]+\w*) \((\d+)\) data", out)
    if done is None or elapsed is None or data is None:
        raise RuntimeError(f"unexpected h2load output:\n{out}")
    total, succeeded = int(done[1]), int(done[2])
    if ok_data_bytes is not None:  # gRPC: OK answers are those whose message arrived
        succeeded = min(succeeded, int(data[2]) // ok_data_bytes)
    seconds_taken = float(elapsed[1]) / (1000 if elapsed[2] == "ms" else 1)
    p50, p99 = (np.percentile(durations, [50, 99]) / 1000).tolist() if len(durations) else (float("nan"),) * 2
    client_s = sum(getattr(client_after, f) - getattr(client_before, f) for f in ("ru_utime", "ru_stime"))
    return {
        "rps": succeeded / seconds_taken,
        "server_cpu_us": 1e6 * server_s / max(total, 1),
        "client_cpu_us": 1e6 * client_s / max(total, 1),
        "p50_ms": p50,
        "p99_ms": p99,
        "responses": total,
        "non_2xx": total - succeeded,
    }
