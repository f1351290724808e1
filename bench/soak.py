"""Soak benchmark: minutes of steady load near capacity, with a retrain-and-reload every few minutes.

``python -m bench.soak [--minutes 10] [--reload-every 180] [--load 0.6]``

1. Trains a small MNIST model with the real trainer (``tiny-mlp``, 1 epoch on 2000 images) into a scratch
   repository, and starts the service on it (``python -m service``, repository watched every second).
2. Measures capacity from a separate process: closed loop, 64 connections, 10 s.
3. A separate load process sends single-image infer requests, JSON and binary alternately, at a fixed rate
   (``--load`` x capacity, open loop: request i is due at ``i / rate`` whatever happened before) and records
   every request's outcome. Latency counts from the due time, so a stall shows up in it; the service's
   own share (from sending to the answer) is reported beside it. The default load leaves room for the
   trainer, which shares the CPU.
4. Every ``--reload-every`` seconds the trainer publishes a new version (niced: training shares the
   machine); the service loads it, swaps it in and retires the old one, under load.
5. The service's resident memory is sampled every 2 s.

Prints requests sent, answered, errors by code, p50/p99 per time window, the reloads, RSS after warm-up and
at the end; writes ``bench/results/soak.json``. Exit status 0 when the bar holds: zero lost requests, zero
5xx, RSS growth under 5 % after warm-up; 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.loadgen import DATA_DIR, NO_ANSWER, run_load
from bench.processes import free_port, stop

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MODEL = "soak"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def train(repo: Path, seed: int, log: Path) -> subprocess.Popen[bytes]:
    """Start the real trainer publishing the next version of the soak model, at low CPU priority."""
    cmd = [sys.executable, "-m", "training", "train", "--dataset", "mnist", "--preset", "tiny-mlp"]
    cmd += ["--epochs", "1", "--limit-train", "2000", "--seed", str(seed), "--name", MODEL]
    cmd += ["--publish", str(repo), "--force", "--data-dir", str(DATA_DIR)]
    if shutil.which("nice"):
        cmd = ["nice", "-n", "10", *cmd]
    env = {
        **os.environ,
        "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    with log.open("ab") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def newest_version(repo: Path) -> int:
    return max((int(p.name) for p in (repo / MODEL).iterdir() if p.name.isdigit()), default=0)


def windows(result: dict[str, Any], width: float, seconds: float) -> list[dict[str, Any]]:
    rows = []
    for start in np.arange(0, seconds, width):
        pick = (result["due"] >= start) & (result["due"] < start + width)
        part = {k: result[k][pick] for k in ("latency", "service", "status")}
        rows.append({"from_s": float(start), "to_s": float(min(start + width, seconds)), **tally(part)})
    return rows


def tally(result: dict[str, np.ndarray]) -> dict[str, Any]:
    """Counts, and percentiles of the answered-200 latencies: from the due time (what a client arriving
    at that rate sees) and from sending (the service alone, without waiting for a free connection)."""
    status = result["status"]
    answered = status != NO_ANSWER
    ok = status == 200

    def percentile(values: np.ndarray, q: float) -> float | None:
        return float(np.percentile(values[ok] * 1000, q)) if ok.any() else None

    return {
        "sent": int(status.size),
        "answered": int(answered.sum()),
        "lost": int((~answered).sum()),
        "by_code": {str(int(c)): int((status == c).sum()) for c in np.unique(status[answered])},
        "p50_ms": percentile(result["latency"], 50),
        "p99_ms": percentile(result["latency"], 99),
        "service_p99_ms": percentile(result["service"], 99),
    }


def serve(repo: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m service`` on the repository, watching it every second; returns it once ready."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVE_")}
    env.update({"SERVE_MODEL_REPOSITORY": str(repo), "SERVE_POLL_INTERVAL_S": "1", "SERVE_GRPC_PORT": "0"})
    with log.open("wb") as out:
        service = subprocess.Popen(
            [sys.executable, "-m", "service", "--port", str(port)], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    deadline = time.monotonic() + 120
    while not ready(url):
        if service.poll() is not None or time.monotonic() > deadline:
            service.kill()
            raise RuntimeError(f"the service did not become ready; see {log}")
        time.sleep(0.2)
    return service, url


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def watch(
    service: subprocess.Popen[bytes], url: str, repo: Path, seconds: float, reload_every: float, log: Path
) -> tuple[list[tuple[float, int]], list[dict[str, Any]]]:
    """While the load runs: sample RSS every 2 s and retrain every ``reload_every`` s, recording when each
    new version was published and when the service answered with it. Times from the call, in seconds."""
    started = time.monotonic()
    rss: list[tuple[float, int]] = []
    reloads: list[dict[str, Any]] = []
    next_reload = reload_every
    trainer: subprocess.Popen[bytes] | None = None
    pending: dict[str, Any] = {}
    while (elapsed := time.monotonic() - started) < seconds or pending:
        if elapsed > seconds + 300:
            raise RuntimeError(f"the reload of version {pending['version']} never completed")
        if not rss or elapsed - rss[-1][0] >= 2:
            rss.append((elapsed, rss_bytes(service.pid)))
        if not pending and elapsed >= next_reload and seconds - elapsed > 30:
            pending = {"version": newest_version(repo) + 1, "started_s": elapsed}
            trainer = train(repo, pending["version"], log)
            next_reload += reload_every
        if trainer is not None and trainer.poll() is not None:
            pending.update(trainer_exit=trainer.returncode, published_s=elapsed)
            trainer = None
        if pending and trainer is None:
            served = httpx.get(f"{url}/v2/models/{MODEL}", timeout=5).json().get("versions")
            if served == [str(pending["version"])] or pending["trainer_exit"] != 0:
                reloads.append({**pending, "served_s": elapsed})
                print(f"  reload: v{pending['version']} served at {elapsed:.1f} s", flush=True)
                pending = {}
        time.sleep(0.2)
    rss.append((time.monotonic() - started, rss_bytes(service.pid)))
    return rss, reloads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="load duration (default 10)")
    parser.add_argument("--reload-every", type=float, default=180.0, help="seconds between retrains (180)")
    parser.add_argument("--load", type=float, default=0.6, help="rate as a fraction of capacity (0.6)")
    parser.add_argument("--rate", type=float, help="requests per second (overrides --load)")
    parser.add_argument("--warmup", type=float, help="seconds before the RSS baseline (min(60, 20%%))")
    parser.add_argument("--windows", type=int, default=10, help="time windows in the latency table")
    args = parser.parse_args(argv)
    seconds = args.minutes * 60
    warmup = args.warmup if args.warmup is not None else min(60.0, seconds * 0.2)
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="soak-", dir=RESULTS))
    repo, train_log = work / "models", RESULTS / "soak-train.log"
    train_log.write_bytes(b"")
    print(f"training version 1 of '{MODEL}' (log: {train_log}) ...", flush=True)
    if train(repo, 1, train_log).wait() != 0:
        print(f"error: the trainer failed; see {train_log}", file=sys.stderr)
        return 2

    service, url = serve(repo, RESULTS / "soak-service.log")
    infer_url = f"{url}/v2/models/{MODEL}/infer"
    try:
        run_load("capacity", infer_url, 64, 10.0, work / "capacity.json").join()
        capacity = float(json.loads((work / "capacity.json").read_text()))
        rate = args.rate or args.load * capacity
        print(
            f"capacity {capacity:.0f} req/s (closed loop, 64 connections, 10 s); soak at {rate:.0f} req/s "
            f"for {seconds:.0f} s, retrain every {args.reload_every:.0f} s",
            flush=True,
        )
        load = run_load("soak", infer_url, rate, seconds, work / "load")
        watch_started = time.monotonic()
        rss, reloads = watch(service, url, repo, seconds, args.reload_every, train_log)
        load.join()
    finally:
        stop(service, timeout=60)

    data = dict(np.load(work / "load.npz"))
    # The load's clock starts once its process is up; move the watcher's times onto it.
    shift = float(data["t0"]) - watch_started
    rss = [(t - shift, value) for t, value in rss]
    for reload in reloads:
        for key in ("started_s", "published_s", "served_s"):
            reload[key] -= shift
    total = tally(data)
    baseline = next(value for t, value in rss if t >= warmup)
    growth = (rss[-1][1] - baseline) / baseline
    fivexx = sum(n for code, n in total["by_code"].items() if code.startswith("5"))
    report = {
        "minutes": args.minutes,
        "capacity_rps": capacity,
        "rate_rps": rate,
        "reload_every_s": args.reload_every,
        "retrain": "python -m training train --dataset mnist --preset tiny-mlp --epochs 1 --limit-train 2000",
        "total": total,
        "transport_errors": json.loads((work / "load.errors.json").read_text()),
        "windows": windows(data, seconds / args.windows, seconds),
        "reloads": reloads,
        "rss": {"warmup_s": warmup, "start_bytes": baseline, "end_bytes": rss[-1][1], "growth": growth},
        "rss_samples": rss,
        "service_exit": service.returncode,
        "bar": {"lost": total["lost"] == 0, "5xx": fivexx == 0, "rss_growth": growth < 0.05},
    }
    (RESULTS / "soak.json").write_text(json.dumps(report, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    print_report(report)
    return 0 if all(report["bar"].values()) else 1


def print_report(r: dict[str, Any]) -> None:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    def notes(w: dict[str, Any]) -> str:
        marks = ["warm-up"] if w["from_s"] < r["rss"]["warmup_s"] else []
        if any(x["started_s"] < w["to_s"] and x["served_s"] > w["from_s"] for x in r["reloads"]):
            marks.append("retrain")
        return ", ".join(marks)

    print(
        f"\n{'window':>13} {'sent':>8} {'answered':>9} {'lost':>5}  {'p50 ms':>8} {'p99 ms':>8} "
        f"{'svc p99':>8}  codes"
    )
    total = {"from_s": 0, "to_s": r["minutes"] * 60, **r["total"]}
    for w in [*r["windows"], total]:
        label = f"{w['from_s']:.0f}-{w['to_s']:.0f} s"
        codes = ", ".join(f"{c}: {n}" for c, n in sorted(w["by_code"].items()))
        note = f"  ({notes(w)})" if w is not total and notes(w) else ""
        print(
            f"{label:>13} {w['sent']:>8} {w['answered']:>9} {w['lost']:>5}  {ms(w['p50_ms']):>8} "
            f"{ms(w['p99_ms']):>8} {ms(w['service_p99_ms']):>8}  {codes}{note}"
        )
    rss = r["rss"]
    print(f"transport errors: {r['transport_errors'] or 'none'}")
    for x in r["reloads"]:
        print(
            f"reload v{x['version']}: trainer {x['started_s']:.1f}-{x['published_s']:.1f} s "
            f"(exit {x['trainer_exit']}), served from {x['served_s']:.1f} s"
        )
    print(
        f"RSS: {rss['start_bytes'] / 2**20:.1f} MiB after {rss['warmup_s']:.0f} s warm-up, "
        f"{rss['end_bytes'] / 2**20:.1f} MiB at the end ({rss['growth'] * 100:+.2f} %)"
    )
    verdict = "PASS" if all(r["bar"].values()) else "FAIL"
    print(f"bar (zero lost, zero 5xx, RSS growth < 5 %): {r['bar']} -> {verdict}")
    print(f"wrote {RESULTS / 'soak.json'}")


if __name__ == "__main__":
    sys.exit(main())
