"""Intra-op threads with several busy models: one budget per process, shared or divided, by measurement.

``python -m bench.threads`` loads two shipped models and keeps both busy at once, each from its own
thread (as two batchers do), running batches of ``--batch`` rows for ``--seconds``. It does the same
with only the first model busy (the second loaded but idle). Each configuration runs in a fresh process,
because onnxruntime's global thread pool is process-wide:

- ``per-model``: every session gets the whole budget of intra-op threads (the service before the budget);
- ``divided``: every session gets ``budget // models`` threads (at least 1), and at most ``budget`` batches
  compute at once (the service's rule: one executor of ``budget`` workers shared by every batcher);
- ``shared``: one global pool of ``budget`` threads that every session uses.

It prints samples/s per model and in total, and each configuration's total as a ratio of ``shared``.
Measured numbers are noisy when the machine runs other work: compare ratios taken in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("per-model", "divided", "shared")


def cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def measure(config: str, models: list[str], budget: int, batch: int, seconds: float, busy: int) -> dict:
    """One configuration, in this process: samples/s for each of the first ``busy`` models."""
    import onnxruntime as ort

    if config == "shared":
        ort.set_global_thread_pool_sizes(budget, 1)
    sessions = []
    for name in models:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if config == "shared":
            options.use_per_session_threads = False
        else:
            options.intra_op_num_threads = budget if config == "per-model" else max(1, budget // len(models))
        path = ROOT / "models" / name / "1" / "model.onnx"
        sessions.append(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))
    inputs = []
    for session in sessions:
        spec = session.get_inputs()[0]
        shape = [batch, *(d if isinstance(d, int) else 1 for d in spec.shape[1:])]
        inputs.append(np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32))
        session.run(None, {spec.name: inputs[-1]})  # warm-up
    counts = [0] * busy
    start = threading.Barrier(busy + 1)
    slots = threading.Semaphore(budget if config == "divided" else busy)
    stop_at: list[float] = []

    def drive(i: int) -> None:
        session, x = sessions[i], {sessions[i].get_inputs()[0].name: inputs[i]}
        start.wait()
        while time.perf_counter() < stop_at[0]:
            with slots:
                session.run(None, x)
            counts[i] += batch

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(busy)]
    for t in threads:
        t.start()
    stop_at.append(time.perf_counter() + seconds)
    start.wait()
    for t in threads:
        t.join()
    return {name: counts[i] / seconds for i, name in enumerate(models[:busy])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mnist-cnn,fashion-cnn")
    parser.add_argument("--budget", type=int, default=0, help="intra-op threads in all (0: one per CPU)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2, help="repeat every configuration, interleaved")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    models = args.models.split(",")
    budget = args.budget or cpus()
    if args.child:
        config, busy = args.child.split(":")
        result = measure(config, models, budget, args.batch, args.seconds, int(busy))
        print(json.dumps(result))
        return 0
    print(f"{len(models)} models, budget {budget} intra-op threads, {cpus()} CPUs, batch {args.batch}")
    totals: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for busy in (len(models), 1):
            for config in CONFIGS:
                cmd = [sys.executable, "-m", "bench.threads", "--child", f"{config}:{busy}"]
                cmd += ["--models", args.models, "--budget", str(budget), "--batch", str(args.batch)]
                cmd += ["--seconds", str(args.seconds)]
                out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
                rates = json.loads(out.strip().splitlines()[-1])
                totals.setdefault((config, busy), []).append(sum(rates.values()))
                per_model = ", ".join(f"{name} {rate:,.0f}" for name, rate in rates.items())
                print(f"  {config:9} busy={busy}: {sum(rates.values()):9,.0f} samples/s ({per_model})")
    print("\nmean total samples/s, and as a ratio of 'shared':")
    for busy in (len(models), 1):
        shared = sum(totals[("shared", busy)]) / args.rounds
        for config in CONFIGS:
            mean = sum(totals[(config, busy)]) / args.rounds
            print(f"  {busy} busy  {config:9} {mean:9,.0f}  {mean / shared:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
