"""Explanations beside predictions: prediction latency with and without explanations at full tilt.

``python -m bench.explain_priority`` starts the service (``mnist-cnn``, HTTP only) as a real process,
times one explanation of each method on the idle server, then measures V2 infer with ``hey`` at
``-c 16`` (binary bodies) in ``--rounds`` pairs of phases: alone, then while ``--explainers`` clients
each run RISE explanations back to back (``--masks`` masks each, so the batcher's background lane never
empties), and alone once more at the end. It prints each phase's req/s, p50 and p99, the explanations
and rows per second, and the ratio of the median p99 with explanations to the median p99 without:
alternating short phases and taking medians keeps other work on a shared machine from deciding the
ratio. Explanation rows go through the same batcher in its
background lane (service/core/batching.py): they compute only while no prediction is pending, so what
remains is the background batch computing when a prediction arrives (at most
``SERVE_EXPLAIN_JOB_ROWS`` rows) and the CPU the explanations use. Run it under
``flock /tmp/bench.lock`` on a shared machine and compare ratios inside one run only.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from bench.harness import ROOT, first_test_image, hey, report, write_bodies
from bench.processes import service

MODEL = "mnist-cnn"


def explain_loop(url: str, masks: int, stop: threading.Event, done: list[dict[str, Any]]) -> None:
    """Explain the first MNIST test image over and over until ``stop``; record each answer."""
    image = first_test_image()
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "image", "datatype": "FP32", "shape": [1, 28, 28, 1], "data": image.ravel().tolist()}
            ]
        }
    )
    headers = {"Content-Type": "application/json"}
    with httpx.Client(timeout=120) as client:
        while not stop.is_set():
            response = client.post(
                url, params={"method": "rise", "masks": masks}, content=body, headers=headers
            )
            done.append(
                {
                    "status": response.status_code,
                    "rows": response.json().get("rows", 0),
                    "t": time.monotonic(),
                }
            )


def idle_cost(url: str) -> None:
    """What one explanation costs on an idle server: the median of five, per method."""
    image = first_test_image()
    body = {
        "inputs": [
            {"name": "image", "datatype": "FP32", "shape": [1, 28, 28, 1], "data": image.ravel().tolist()}
        ]
    }
    with httpx.Client(timeout=120) as client:
        for params in (
            {"method": "occlusion"},
            {"method": "occlusion", "patch": 2, "stride": 1},
            {"method": "rise"},
        ):
            answers = [client.post(url, params=params, json=body).json() for _ in range(5)]
            ms = sorted(a["milliseconds"] for a in answers)[2]
            rows = answers[0]["rows"]
            print(f"idle: {params} {rows} rows in {ms:.0f} ms ({1000 * ms / rows:.0f} us/row)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each hey phase")
    parser.add_argument("--rounds", type=int, default=3, help="pairs of phases, alone and with explanations")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--explainers", type=int, default=2, help="concurrent explanation clients")
    parser.add_argument("--masks", type=int, default=2000)
    args = parser.parse_args()

    env = {"SERVE_MODELS": MODEL, "SERVE_MODEL_REPOSITORY": str(ROOT / "models")}
    print(f"load average before: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        bodies = write_bodies(first_test_image(), Path(tmp))
        with service(env, Path(tmp) / "server.log", args=["--host", "127.0.0.1"], grpc=False) as server:
            base = server.url
            infer = f"{base}/v2/models/{MODEL}/infer"
            path, headers = bodies["binary"]
            hey(infer, path, headers, args.concurrency, 3, server.pid)  # warm-up, not reported
            idle_cost(f"{base}/v2/models/{MODEL}/explain")
            results: dict[str, list[dict[str, float]]] = {}
            phases = ["alone", "with explanations"] * args.rounds + ["alone"]
            for n, phase in enumerate(phases):
                stop, done = threading.Event(), list[dict[str, Any]]()
                loops = []
                if phase == "with explanations":
                    explain = f"{base}/v2/models/{MODEL}/explain"
                    loops = [
                        threading.Thread(target=explain_loop, args=(explain, args.masks, stop, done))
                        for _ in range(args.explainers)
                    ]
                    for loop in loops:
                        loop.start()
                    while not done:  # the lane is busy before timing starts
                        time.sleep(0.05)
                started = time.monotonic()
                r = hey(infer, path, headers, args.concurrency, args.seconds, server.pid)
                elapsed = time.monotonic() - started
                stop.set()
                for loop in loops:
                    loop.join()
                results.setdefault(phase, []).append(r)
                report(f"{n + 1}. {phase}", args.concurrency, r)
                if loops:
                    during = [d for d in done if started <= d["t"] <= started + elapsed]
                    ok = sum(d["status"] == 200 for d in during)
                    rows = sum(d["rows"] for d in during)
                    print(
                        f"{'':24} explanations: {ok / elapsed:6.2f}/s ({rows / elapsed:7.0f} rows/s), "
                        f"{len(during) - ok} failed, {args.explainers} clients, {args.masks} masks each",
                        flush=True,
                    )
    print(f"load average after: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    without = float(np.median([r["p99_ms"] for r in results["alone"]]))
    with_ = float(np.median([r["p99_ms"] for r in results["with explanations"]]))
    rps = {k: float(np.median([r["rps"] for r in v])) for k, v in results.items()}
    print(
        f"median p99: {without:.1f} ms alone, {with_:.1f} ms with explanations; ratio {with_ / without:.2f} "
        f"(target <= 1.5); median req/s {rps['alone']:.0f} alone, {rps['with explanations']:.0f} with",
        flush=True,
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
