"""HTTP server and event-loop settings for the same service app, side by side in one run.

``python -m bench.http_servers`` starts each variant below as its own process (all at once, each with
its own copy of the model). Then, point by point, it drives each variant with ``hey`` right after
``python -m service`` (uvicorn, uvloop, httptools, no access log: what the service runs today), so every
ratio compares two runs seconds apart; ``--rounds N`` repeats it all, and the table shows each ratio's
median and the spread of the reference's own throughput (how noisy the machine was). Writes
``bench/results/http_servers.json``.

The variants change one thing at a time from the uvicorn command line that matches the service
(``uvicorn`` row): the connection limits the service adds (``uvicorn guarded``:
service/http/connection.py over httptools), the HTTP parser (h11), the loop (asyncio), the access log,
uvicorn's proxy-headers middleware, a frozen start-up heap for the garbage collector
(``bench/tuned.py``), and granian (a Rust HTTP server running the same ASGI app on uvloop, one worker,
single-threaded runtime).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from contextlib import ExitStack
from statistics import median
from typing import Any

from bench.harness import RESULTS, first_test_image, hey, write_bodies
from bench.processes import free_port, process

POINTS = (("binary", 1), ("binary", 64), ("json", 64))


def variants(model: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Name -> (command line with {port}, environment)."""
    env = {"SERVE_MODELS": model, "SERVE_LOG_LEVEL": "warning"}
    py = sys.executable
    uvicorn = [py, "-m", "uvicorn", "--factory", "--port", "{port}", "--log-level", "warning"]
    fast = ["--loop", "uvloop", "--http", "httptools", "--no-access-log"]
    app = "service.server:app_from_env"
    granian = "--interface asgi --factory --workers 1 --loop uvloop --runtime-mode st --http 1 --no-ws"
    granian += " --log-level warning --no-access-log"
    return {
        "service": ([py, "-m", "service", "--port", "{port}"], env),
        "uvicorn": ([*uvicorn, *fast, app], env),
        "uvicorn guarded": (
            [*uvicorn, "--loop", "uvloop", "--http", "bench.tuned:GuardedProtocol", "--no-access-log", app],
            env,
        ),
        "uvicorn h11": ([*uvicorn, "--loop", "uvloop", "--http", "h11", "--no-access-log", app], env),
        "uvicorn asyncio h11": (
            [*uvicorn, "--loop", "asyncio", "--http", "h11", "--no-access-log", app],
            env,
        ),
        "uvicorn access log": ([*uvicorn[:-1], "info", *fast[:4], "--access-log", app], env),
        "uvicorn no proxy headers": ([*uvicorn, *fast, "--no-proxy-headers", app], env),
        "uvicorn gc.freeze": ([*uvicorn, *fast, "bench.tuned:app_gc_frozen"], env),
        "uvicorn no proxy headers + gc.freeze": (
            [*uvicorn, *fast, "--no-proxy-headers", "bench.tuned:app_gc_frozen"],
            env,
        ),
        "granian": ([py, "-m", "granian", *granian.split(), "--port", "{port}", app], env),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist-cnn")
    parser.add_argument("--seconds", type=float, default=5.0, help="load duration per point")
    parser.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    if shutil.which("hey") is None:
        print("error: hey not found (make system-deps installs it)", file=sys.stderr)
        return 2
    bodies = write_bodies(first_test_image(), RESULTS)
    chosen = variants(args.model)
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only.split(",") or k == "service"}
    ports = {name: free_port() for name in chosen}
    runs: list[dict[str, Any]] = []
    with ExitStack() as stack:
        pids = {}
        for name, (cmd, env) in chosen.items():
            argv_ = [part.replace("{port}", str(ports[name])) for part in cmd]
            log = RESULTS / f"http-{name.replace(' ', '_').replace('+', '').replace('.', '')}.log"
            ready = f"http://127.0.0.1:{ports[name]}/v2/health/ready"
            pids[name] = stack.enter_context(process(argv_, env, ready, log)).pid
        for _, (body, c) in ((r, p) for r in range(args.rounds) for p in POINTS):
            path, headers = bodies[body]
            for name in (n for n in chosen if n != "service"):
                pair = {}
                for which in ("service", name):
                    url = f"http://127.0.0.1:{ports[which]}/v2/models/{args.model}/infer"
                    pair[which] = hey(url, path, headers, c, args.seconds, server_pid=pids[which])
                r, ref = pair[name], pair["service"]
                runs.append({"variant": name, "body": body, "concurrency": c, "reference": ref, **r})
                line = f"{name:38} {body:6} c={c:2}: {r['rps']:6.0f} req/s, p99 {r['p99_ms']:6.1f} ms, "
                line += f"cpu {r['server_cpu_us']:4.0f} us/req, non-2xx {r['non_2xx']:.0f} | service "
                line += (
                    f"{ref['rps']:6.0f} req/s, p99 {ref['p99_ms']:6.1f} ms, cpu {ref['server_cpu_us']:4.0f}"
                )
                print(line, flush=True)
    print(f"\nmedian over pairs; server CPU per request in us (lower is better)\n{'variant':38}", end="")
    print("".join(f" | {b} c={c}: req/s x, p99 x, cpu us (x)" for b, c in POINTS))
    for name in chosen:
        cells = []
        for body, c in POINTS:
            if name == "service":
                refs = [r["reference"] for r in runs if (r["body"], r["concurrency"]) == (body, c)]
                cells.append(f" | 1.00, 1.00, {median(r['server_cpu_us'] for r in refs):4.0f} (1.00)")
                continue
            rows = [r for r in runs if (r["variant"], r["body"], r["concurrency"]) == (name, body, c)]
            rps = median(r["rps"] / r["reference"]["rps"] for r in rows)
            p99 = median(r["p99_ms"] / r["reference"]["p99_ms"] for r in rows)
            cpu = median(r["server_cpu_us"] for r in rows)
            cpu_x = median(r["server_cpu_us"] / r["reference"]["server_cpu_us"] for r in rows)
            cells.append(f" | {rps:4.2f}, {p99:4.2f}, {cpu:4.0f} ({cpu_x:4.2f})")
        print(f"{name:38}{''.join(cells)}")
    for body, c in POINTS:
        refs = [r["reference"]["rps"] for r in runs if (r["body"], r["concurrency"]) == (body, c)]
        print(f"service itself, {body} c={c}: {min(refs):.0f} to {max(refs):.0f} req/s over the run")
    (RESULTS / "http_servers.json").write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
