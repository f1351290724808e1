"""What every HTTP benchmark shares: request bodies, ``hey`` and ``h2load``, CPU time and machine load.

Servers run as real processes on loopback (:mod:`bench.processes`); ``hey`` is a separate process on the
same cores, so numbers from one run compare with each other, not with another machine's.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DATA_DIR = Path(os.environ.get("DATA_DIR", ROOT.parent / "shared" / "data"))

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
