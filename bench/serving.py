"""Serving benchmark: the service beside its floor, a naive baseline and its previous batching, in one run.

``python -m bench.serving`` starts these as real processes on loopback, all at once:

- ``floor``: a bare FastAPI endpoint that reads the body and answers a constant (``bench/floor_app.py``);
- ``naive``: FastAPI + onnxruntime, one ``session.run`` per request, JSON only (``bench/naive_app.py``);
- ``service``: ``python -m service`` with its defaults (``SERVE_BATCH_WAIT=adaptive``);
- ``service-fixed``: the same with ``SERVE_BATCH_WAIT=fixed``, the default before the adaptive wait;
- ``service-baseline`` (with ``--baseline REF``): ``service/`` as of git commit ``REF`` (``git archive``),
  with its own defaults: the code before a change, to compare the change against.

Then, level by level and body by body, it drives each target in turn with ``hey`` (a separate process on
the same cores) with single-image requests, so load that drifts on a shared machine touches every target
alike; ``--rounds N`` (3 by default) repeats the whole sweep and reports each point's median and its
spread (lowest and highest round). Every service it starts has its own free HTTP and gRPC ports, so the
candidate and ``service-baseline`` run side by side with gRPC on. The machine's load average and the CPU
time stolen by the hypervisor are recorded before and after, and a run that began on a busy machine is
marked as such in the output and in ``serving.json``. It measures raw
in-process onnxruntime at batch 1 and at the max batch size (the ceiling), prints the table and the
targets below as ratios, and writes ``bench/results/serving.json`` and ``serving.png``.

Targets: c=1 at least the naive baseline, JSON and binary; c=16 and c=64 throughput at least the previous
default's (``service-baseline`` when given, else ``service-fixed``); c=64 p99 at most 25 ms, JSON and
binary; c=64 binary at least 0.9x the floor (same body).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
from prometheus_client.parser import text_string_to_metric_families

from bench.harness import (
    RESULTS,
    ROOT,
    first_test_image,
    hey,
    load_report,
    machine_load,
    report,
    write_bodies,
)
from bench.processes import free_port, started, stop, until_bound

UVICORN = ["-m", "uvicorn", "--loop", "uvloop", "--http", "httptools", "--no-access-log"]
Run = dict[str, Any]


@dataclass
class Target:
    """A server the bench starts: ``argv`` plus ``--port``, and ``SERVE_GRPC_PORT`` when ``grpc``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ready_path: str
    bodies: tuple[str, ...] = ("json", "binary")
    cwd: Path = ROOT
    grpc: bool = False
    port: int = 0  # chosen by start()
    grpc_port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, stack: ExitStack) -> int:
        """Start it on free ports (new ones when one was taken: :func:`until_bound`) until the stack
        closes; its pid."""

        def attempt() -> subprocess.Popen[bytes]:
            self.port, self.grpc_port = free_port(), free_port() if self.grpc else 0
            cmd = [*self.argv, "--port", str(self.port)]
            env = self.env | ({"SERVE_GRPC_PORT": str(self.grpc_port)} if self.grpc else {})
            return started(cmd, env, self.url + self.ready_path, RESULTS / f"{self.name}.log", self.cwd)

        proc = until_bound(attempt)
        stack.callback(stop, proc)
        return proc.pid


def service_target(name: str, model: str, workers: int, env: dict[str, str]) -> Target:
    cmd = [sys.executable, "-m", "service", "--workers", str(workers)]
    # Each service gets its own gRPC port too: two on Triton's 8001 would fail the second one's start.
    base = {"SERVE_MODELS": model, "SERVE_LOG_LEVEL": "warning"}
    return Target(name, cmd, base | env, "/v2/health/ready", grpc=True)


def baseline_target(ref: str, model: str, workers: int, name: str = "service-baseline") -> Target:
    """``service/`` as of git commit ``ref``, run from its own directory so that it is what imports."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", ref], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    tree = RESULTS / f"baseline-{commit}"
    if not (tree / "service").is_dir():
        archive = subprocess.run(
            ["git", "archive", commit, "service"], cwd=ROOT, capture_output=True, check=True
        )
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tree, filter="data")
    target = service_target(name, model, workers, {"SERVE_MODEL_REPOSITORY": str(ROOT / "models")})
    target.cwd = tree
    return target


def app_target(name: str, factory: str, env: dict[str, str], bodies: tuple[str, ...]) -> Target:
    cmd = [sys.executable, *UVICORN, "--log-level", "warning", "--factory", factory]
    return Target(name, cmd, env, "/docs", bodies)


def batch_counters(url: str) -> dict[str, float]:
    """The service's batch counters (summed over versions): batches, rows, seconds held open and
    seconds computing."""
    wanted = {
        "inference_batch_size_count": "batches",
        "inference_batch_size_sum": "rows",
        "inference_batch_wait_seconds_sum": "held_s",
        "inference_compute_duration_seconds_sum": "compute_s",
    }
    totals = dict.fromkeys(wanted.values(), 0.0)
    seen = set()
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name in wanted:
                totals[wanted[sample.name]] += sample.value
                seen.add(wanted[sample.name])
    return {k: v if k in seen else float("nan") for k, v in totals.items()}  # nan: not exported


def batching(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    batches = after["batches"] - before["batches"]
    return {
        "rows_per_batch": (after["rows"] - before["rows"]) / batches if batches else float("nan"),
        "held_us_per_batch": 1e6 * (after["held_s"] - before["held_s"]) / batches
        if batches
        else float("nan"),
        "compute_us_per_batch": 1e6 * (after["compute_s"] - before["compute_s"]) / batches
        if batches
        else float("nan"),
    }


#: Figures whose spread over rounds is reported beside the median (``rps_min``, ``rps_max``, ...).
SPREAD = ("rps", "p99_ms", "server_cpu_us")


def medians(samples: list[Run]) -> list[Run]:
    """One run per (target, body, concurrency): each number the median over the rounds, and for the
    figures in :data:`SPREAD` their lowest and highest round too."""
    groups: dict[tuple[str, str, int], list[Run]] = {}
    for r in samples:
        groups.setdefault((r["target"], r["body"], r["concurrency"]), []).append(r)
    runs = []
    for (t, b, c), rs in groups.items():
        run: Run = {"target": t, "body": b, "concurrency": c, "rounds": len(rs)}
        for k in rs[0]:
            if k not in ("target", "body", "concurrency"):
                run[k] = float(np.median([r[k] for r in rs]))
        for k in SPREAD:
            run[f"{k}_min"] = float(min(r[k] for r in rs))
            run[f"{k}_max"] = float(max(r[k] for r in rs))
        runs.append(run)
    return runs


def print_spread(runs: list[Run]) -> None:
    """Each point's lowest and highest round: a ratio inside that spread is noise, not a result."""
    print("\nspread over rounds (min..max):")
    for r in runs:
        print(
            f"{r['target'] + ' ' + r['body']:32} c={r['concurrency']:3}: "
            f"{r['rps_min']:6.0f}..{r['rps_max']:<6.0f} req/s  "
            f"p99 {r['p99_ms_min']:5.1f}..{r['p99_ms_max']:<5.1f} ms  "
            f"cpu/req {r['server_cpu_us_min']:4.0f}..{r['server_cpu_us_max']:<4.0f} us"
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


def check_targets(runs: list[Run], levels: list[int]) -> list[dict[str, Any]]:
    """The issue's targets, each as ``measured`` against ``bar`` (a ratio, or p99 milliseconds)."""
    by = {(r["target"], r["body"], r["concurrency"]): r for r in runs}
    rows: list[dict[str, Any]] = []

    def ratio(label: str, a: tuple[str, str, int], b: tuple[str, str, int], bar: float) -> None:
        if a in by and b in by:
            value = by[a]["rps"] / by[b]["rps"]
            rows.append({"target": label, "measured": value, "bar": bar, "unit": "x", "met": value >= bar})

    for body in ("json", "binary"):
        ratio(f"c=1 {body}: service / naive JSON", ("service", body, 1), ("naive", "json", 1), 1.0)
    before = "service-baseline" if any(r["target"] == "service-baseline" for r in runs) else "service-fixed"
    # Issue 20's bars: c=64 at least 1.15x (binary) and 1.10x (JSON) of the code before the typed core.
    bars = {(16, "json"): 1.0, (16, "binary"): 1.0, (64, "json"): 1.10, (64, "binary"): 1.15}
    for c in (16, 64):
        for body in ("json", "binary"):
            ratio(f"c={c} {body}: service / {before}", ("service", body, c), (before, body, c), bars[c, body])
    top = max(levels)
    for body in ("json", "binary"):
        key = ("service", body, top)
        if key in by:
            p99 = by[key]["p99_ms"]
            rows.append(
                {
                    "target": f"c={top} {body}: p99",
                    "measured": p99,
                    "bar": 25.0,
                    "unit": "ms",
                    "met": p99 <= 25.0,
                }
            )
    ratio(f"c={top} binary: service / floor", ("service", "binary", top), ("floor", "binary", top), 0.9)
    service, floor = by.get(("service", "binary", top)), by.get(("floor", "binary", top))
    if service is not None and floor is not None:
        p99 = service["p99_ms"] / floor["p99_ms"]
        rows.append(
            {
                "target": f"c={top} binary: p99 / floor's",
                "measured": p99,
                "bar": 1.5,
                "unit": "x<",
                "met": p99 <= 1.5,
            }
        )
        cpu = service["server_cpu_us"]
        rows.append(
            {
                "target": f"c={top} binary: CPU per request",
                "measured": cpu,
                "bar": 200.0,
                "unit": "us",
                "met": cpu <= 200,
            }
        )
    return rows


def print_targets(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'target':44} {'measured':>9} {'bar':>10}")
    for row in rows:
        if row["unit"] == "x":
            measured, bar = f"{row['measured']:.2f}x", f">= {row['bar']:.2f}x"
        elif row["unit"] == "x<":
            measured, bar = f"{row['measured']:.2f}x", f"<= {row['bar']:.2f}x"
        elif row["unit"] == "us":
            measured, bar = f"{row['measured']:.0f} us", f"<= {row['bar']:.0f} us"
        else:
            measured, bar = f"{row['measured']:.1f} ms", f"<= {row['bar']:.0f} ms"
        print(f"{row['target']:44} {measured:>9} {bar:>10}  {'met' if row['met'] else 'NOT MET'}")


def print_cpu(runs: list[Run], levels: list[int]) -> None:
    """Server CPU time per answered request: what throughput would follow on an idle machine."""
    by = {(r["target"], r["body"], r["concurrency"]): r for r in runs}
    names = sorted({(r["target"], r["body"]) for r in runs}, key=lambda tb: (tb[1], tb[0]))
    print(f"\nserver CPU per request (us){'':18}" + "".join(f"{f'c={c}':>8}" for c in levels))
    for target, body in names:
        cells = "".join(f"{by[(target, body, c)]['server_cpu_us']:8.0f}" for c in levels)
        print(f"{target + ' ' + body:45}{cells}")


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label in sorted({f"{r['target']} {r['body']}" for r in runs}):
        rows = [r for r in runs if f"{r['target']} {r['body']}" == label]
        cs = [r["concurrency"] for r in rows]
        ax1.plot(cs, [r["rps"] for r in rows], marker="o", label=label)
        ax2.plot(cs, [r["p99_ms"] for r in rows], marker="o", label=label)
    ax1.set(xlabel="concurrency", ylabel="requests/s", title="Throughput (one image a request)", xscale="log")
    ax2.set(xlabel="concurrency", ylabel="p99 latency (ms)", title="p99 latency", xscale="log", yscale="log")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist-cnn")
    parser.add_argument("--seconds", type=float, default=5.0, help="load duration per point")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--workers", type=int, default=1, help="service worker processes")
    parser.add_argument(
        "--rounds", type=int, default=3, help="repeat the sweep; report medians and the spread"
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        action="append",
        default=[],
        help="also run service/ as of this git commit (the targets compare with the first; repeatable)",
    )
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
    targets = [
        app_target("floor", "bench.floor_app:create_app", {}, ("json", "binary")),
        app_target(
            "naive", "bench.naive_app:create_app", {"NAIVE_MODEL": str(model_dir / "model.onnx")}, ("json",)
        ),
        service_target("service", args.model, args.workers, {"SERVE_BATCH_WAIT": "adaptive"}),
        service_target("service-fixed", args.model, args.workers, {"SERVE_BATCH_WAIT": "fixed"}),
    ]
    for i, ref in enumerate(args.baseline):
        name = "service-baseline" if i == 0 else f"service-at-{ref}"
        targets.append(baseline_target(ref, args.model, args.workers, name))
    samples: list[Run] = []
    load_before = machine_load()
    with ExitStack() as stack:
        pids = {t.name: t.start(stack) for t in targets}
        for _, c in ((r, c) for r in range(args.rounds) for c in levels):
            for body in ("json", "binary"):
                for t in (t for t in targets if body in t.bodies):
                    path, headers = bodies[body]
                    service = t.name.startswith("service")
                    before = batch_counters(t.url) if service else {}
                    url = f"{t.url}/v2/models/{args.model}/infer"
                    r = hey(url, path, headers, c, args.seconds, server_pid=pids[t.name])
                    if service:
                        r |= batching(before, batch_counters(t.url))
                    samples.append({"target": t.name, "body": body, "concurrency": c, **r})
                    report(f"{t.name} {body}", c, r)
    load = load_report(load_before, machine_load())
    runs = medians(samples)
    if args.rounds > 1:
        print(f"\nmedians of {args.rounds} rounds:")
        for r in runs:
            report(f"{r['target']} {r['body']}", r["concurrency"], r)
        print_spread(runs)

    max_batch = int(os.environ.get("SERVE_MAX_BATCH_SIZE", "32"))
    ceiling = {f"batch_{b}": raw_onnxruntime(model_dir / "model.onnx", image, b, 3.0) for b in (1, max_batch)}
    print(
        f"raw onnxruntime: batch 1 {ceiling['batch_1']:.0f} samples/s, "
        f"batch {max_batch} {ceiling[f'batch_{max_batch}']:.0f} samples/s"
    )
    rows = check_targets(runs, levels)
    print_targets(rows)
    print_cpu(runs, levels)
    print(
        f"\nmachine: load {load['load1_before']:.2f} before, {load['load1_after']:.2f} after, "
        f"steal {100 * load['steal']:.1f} %"
        + ("  BUSY MACHINE: ratios only, not absolute figures" if load["busy"] else "")
    )
    results = {
        "model": args.model,
        "seconds": args.seconds,
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
        "load": load,
        "http": runs,
        "samples": samples,
        "raw_onnxruntime_samples_per_s": ceiling,
        "targets": rows,
    }
    (RESULTS / "serving.json").write_text(json.dumps(results, indent=2))
    plot(runs, RESULTS / "serving.png")
    print(f"wrote {RESULTS / 'serving.json'} and {RESULTS / 'serving.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
