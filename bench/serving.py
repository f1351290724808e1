"""Serving benchmark: the service vs a naive FastAPI baseline vs raw onnxruntime, in one run.

``python -m bench.serving`` starts the service (``python -m service``) and the naive baseline as
real processes on loopback, drives each with ``hey`` (a separate process) at several concurrency
levels with single-image requests, JSON and binary bodies, and measures raw in-process onnxruntime
throughput at batch 1 and at the service's max batch size (the ceiling). Prints a table, writes
``bench/results/serving.json`` and a plot ``bench/results/serving.png``.

``--baseline-tree DIR`` also runs the service from another source tree (for example ``git archive`` of
an earlier commit, unpacked) in the same run, interleaved point by point with this tree's, and prints
each of this tree's throughputs as a ratio of the other's: how to tell what a change costs on a noisy
machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import orjson

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DATA_DIR = Path(os.environ.get("DATA_DIR", ROOT.parent / "shared" / "data"))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def process(
    cmd: list[str], env: dict[str, str], ready_url: str, log: Path, cwd: Path = ROOT
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[:4]} exited with {proc.returncode}; see {log}")
            try:
                if httpx.get(ready_url, timeout=2).status_code in (200, 405):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{cmd[:4]} not ready")
            time.sleep(0.2)
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM a process this benchmark started; SIGKILL it if it outlives ``timeout``."""
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


def write_bodies(image: np.ndarray, workdir: Path) -> dict[str, tuple[Path, dict[str, str]]]:
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
    (workdir / "body.json").write_bytes(json_body)
    (workdir / "body.bin").write_bytes(header + image.tobytes())
    return {
        "json": (workdir / "body.json", {"Content-Type": "application/json"}),
        "binary": (
            workdir / "body.bin",
            {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
        ),
    }


def hey(url: str, body: Path, headers: dict[str, str], concurrency: int, seconds: float) -> dict[str, float]:
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST", "-D", str(body), "-t", "30"]
    for key, value in headers.items():
        if key.lower() == "content-type":
            cmd += ["-T", value]
        else:
            cmd += ["-H", f"{key}: {value}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = {int(p): float(v) * 1000 for p, v in re.findall(r"(\d+)%+ in ([\d.]+) secs", out)}
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}
    errors = 0
    if "Error distribution:" in out:
        tail = out.split("Error distribution:")[1]
        errors = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s", tail, re.M))
    total = sum(codes.values())
    return {
        "rps": rps,
        "p50_ms": pct.get(50, float("nan")),
        "p99_ms": pct.get(99, float("nan")),
        "responses": total,
        "non_2xx": total - sum(n for c, n in codes.items() if 200 <= c < 300) + errors,
    }


def report(target: str, concurrency: int, r: dict[str, float]) -> None:
    print(
        f"{target:15} c={concurrency:3}: {r['rps']:8.0f} req/s  p50 {r['p50_ms']:6.1f} ms  "
        f"p99 {r['p99_ms']:6.1f} ms  non-2xx {r['non_2xx']:.0f}",
        flush=True,
    )


def raw_onnxruntime(model: Path, image: np.ndarray, batch: int, seconds: float) -> float:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    x = np.repeat(image, batch, axis=0)
    for _ in range(5):
        session.run(None, {"image": x})
    runs = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {"image": x})
        runs += 1
    return runs * batch / (time.perf_counter() - start)


def plot(results: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["http"]  # type: ignore[index]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for target in sorted({r["target"] for r in runs}):  # type: ignore[attr-defined]
        rows = [r for r in runs if r["target"] == target]  # type: ignore[attr-defined]
        cs = [r["concurrency"] for r in rows]
        ax1.plot(cs, [r["rps"] for r in rows], marker="o", label=target)
        ax2.plot(cs, [r["p99_ms"] for r in rows], marker="o", label=target)
    ax1.set(
        xlabel="concurrency", ylabel="requests/s", title="Throughput (single-image requests)", xscale="log"
    )
    ax2.set(xlabel="concurrency", ylabel="p99 latency (ms)", title="p99 latency", xscale="log", yscale="log")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist-cnn")
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration per point")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--baseline-tree", type=Path, help="also run the service from this source tree")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the service points (with a baseline)")
    args = parser.parse_args(argv)
    if shutil.which("hey") is None:
        print("error: hey not found (make system-deps installs it)", file=sys.stderr)
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    model_dir = max(
        (ROOT / "models" / args.model).iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1
    )
    image = first_test_image()
    bodies = write_bodies(image, RESULTS)
    levels = [int(c) for c in args.concurrency.split(",")]
    serve_env = {"SERVE_MODELS": args.model, "SERVE_LOG_LEVEL": "warning"}
    max_batch = int(os.environ.get("SERVE_MAX_BATCH_SIZE", "32"))
    results: dict[str, object] = {"model": args.model, "seconds": args.seconds, "http": []}
    runs: list[dict[str, object]] = results["http"]  # type: ignore[assignment]

    if args.baseline_tree is not None:
        return compare(args, bodies, levels, serve_env)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "service", "--port", str(port), "--workers", str(args.workers)]
    with process(cmd, serve_env, f"{url}/v2/health/ready", RESULTS / "service.log"):
        for kind, (body, headers) in bodies.items():
            for c in levels:
                r = hey(f"{url}/v2/models/{args.model}/infer", body, headers, c, args.seconds)
                runs.append({"target": f"service-{kind}", "concurrency": c, **r})
                report(f"service {kind}", c, r)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "bench.naive_app:create_app",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    with process(cmd, {"NAIVE_MODEL": str(model_dir / "model.onnx")}, f"{url}/docs", RESULTS / "naive.log"):
        body, headers = bodies["json"]
        for c in levels:
            r = hey(f"{url}/v2/models/{args.model}/infer", body, headers, c, args.seconds)
            runs.append({"target": "naive-json", "concurrency": c, **r})
            report("naive json", c, r)

    ceiling = {f"batch_{b}": raw_onnxruntime(model_dir / "model.onnx", image, b, 3.0) for b in (1, max_batch)}
    results["raw_onnxruntime_samples_per_s"] = ceiling
    print(
        f"raw onnxruntime: batch 1 {ceiling['batch_1']:.0f} samples/s, "
        f"batch {max_batch} {ceiling[f'batch_{max_batch}']:.0f} samples/s"
    )

    top = max(levels)
    by = {(r["target"], r["concurrency"]): r for r in runs}
    naive = by[("naive-json", top)]["rps"]
    summary = {
        f"json_vs_naive_at_c{top}": by[("service-json", top)]["rps"] / naive,  # type: ignore[operator]
        f"binary_vs_naive_at_c{top}": by[("service-binary", top)]["rps"] / naive,  # type: ignore[operator]
    }
    results["summary"] = summary
    print(
        f"\nat concurrency {top}: JSON {summary[f'json_vs_naive_at_c{top}']:.2f}x naive (bar 3x), "
        f"binary {summary[f'binary_vs_naive_at_c{top}']:.2f}x naive (bar 4x)"
    )
    (RESULTS / "serving.json").write_text(json.dumps(results, indent=2))
    plot(results, RESULTS / "serving.png")
    print(f"wrote {RESULTS / 'serving.json'} and {RESULTS / 'serving.png'}")
    return 0


def compare(
    args: argparse.Namespace,
    bodies: dict[str, tuple[Path, dict[str, str]]],
    levels: list[int],
    env: dict[str, str],
) -> int:
    """This tree's service against ``args.baseline_tree``'s, both running, loaded point by point in turn."""
    trees = {"this": ROOT, "baseline": args.baseline_tree.resolve()}
    ports = {name: free_port() for name in trees}
    pids: dict[str, int] = {}
    rps: dict[tuple[str, str, int], list[float]] = {}
    cpu: dict[tuple[str, str, int], list[float]] = {}
    with contextlib.ExitStack() as stack:
        for name, tree in trees.items():
            cmd = [sys.executable, "-m", "service", "--port", str(ports[name])]
            tree_env = {**env, "PYTHONPATH": str(tree), "SERVE_MODEL_REPOSITORY": str(tree / "models")}
            url = f"http://127.0.0.1:{ports[name]}/v2/health/ready"
            log = RESULTS / f"service-{name}.log"
            pids[name] = stack.enter_context(process(cmd, tree_env, url, log, cwd=tree)).pid
        for _ in range(args.rounds):
            for kind, (body, headers) in bodies.items():
                for c in levels:
                    for name in trees:
                        url = f"http://127.0.0.1:{ports[name]}/v2/models/{args.model}/infer"
                        before = cpu_seconds(pids[name])
                        r = hey(url, body, headers, c, args.seconds)
                        used = (cpu_seconds(pids[name]) - before) / max(1.0, r["responses"]) * 1e6
                        rps.setdefault((name, kind, c), []).append(r["rps"])
                        cpu.setdefault((name, kind, c), []).append(used)
                        report(f"{name} {kind}", c, r)
    print("\nthis tree vs baseline, mean over rounds: requests/s, and server CPU µs per request:")
    for kind in bodies:
        for c in levels:
            key_this, key_base = ("this", kind, c), ("baseline", kind, c)
            mine, base = sum(rps[key_this]) / args.rounds, sum(rps[key_base]) / args.rounds
            cpu_mine, cpu_base = sum(cpu[key_this]) / args.rounds, sum(cpu[key_base]) / args.rounds
            print(
                f"  {kind:6} c={c:3}: {mine:7.0f} vs {base:7.0f} req/s = {mine / base:.3f}x;  "
                f"{cpu_mine:6.1f} vs {cpu_base:6.1f} µs/request = {cpu_mine / cpu_base:.3f}x"
            )
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (Linux) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    sys.exit(main())
