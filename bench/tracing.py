"""What tracing costs: the service with tracing off against another tree (main), and with tracing on.

``python -m bench.tracing --baseline-tree DIR`` serves the same model from this tree with tracing off,
from ``DIR`` (e.g. ``git archive main`` unpacked; its own defaults), and from this tree exporting over
OTLP/HTTP to a receiver in this process (which decodes nothing and answers 200) at a 1 % sampler
(``parentbased_traceidratio``, 0.01) and at 100 % (``always_on``). Each configuration is a fresh process
driven by ``hey`` with single-image JSON requests at ``--concurrency`` for ``--seconds``, interleaved over
``--rounds``; it prints the median req/s and the minimum server CPU per request of each, and each as a
ratio of this tree with tracing off. CPU per request moves least when other work shares the cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.harness import RESULTS, ROOT, first_test_image, free_port, hey, process, write_bodies


@contextmanager
def otlp_sink() -> Iterator[tuple[int, list[int]]]:
    """An OTLP/HTTP endpoint that reads and drops every export; yields its port and the bytes received."""
    received = [0]

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received[0] += len(self.rfile.read(int(self.headers["content-length"])))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], received
    finally:
        server.shutdown()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing", description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-tree", type=Path, help="another source tree to serve, tracing off")
    parser.add_argument("--model", default="mnist-mlp")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-tracing-"))
    body, headers = write_bodies(first_test_image(), work)["json"]
    results: dict[str, list[dict[str, float]]] = {}
    with otlp_sink() as (sink_port, received):
        endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}"}
        configs: dict[str, tuple[Path, dict[str, str]]] = {"this tree, off": (ROOT, {})}
        if args.baseline_tree is not None:
            configs["baseline tree, off"] = (args.baseline_tree.resolve(), {})
        configs["this tree, 1 %"] = (
            ROOT,
            {
                **endpoint,
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0.01",
            },
        )
        configs["this tree, 100 %"] = (ROOT, {**endpoint, "OTEL_TRACES_SAMPLER": "always_on"})
        for _ in range(args.rounds):
            for name, (tree, env) in configs.items():
                port = free_port()
                full_env = {
                    "SERVE_MODEL_REPOSITORY": str(ROOT / "models"),
                    "SERVE_MODELS": args.model,
                    "SERVE_GRPC_PORT": "0",
                    "OTEL_EXPORTER_OTLP_ENDPOINT": "",
                    **env,
                }
                cmd = [sys.executable, "-m", "service", "--port", str(port)]
                url = f"http://127.0.0.1:{port}"
                with process(cmd, full_env, f"{url}/v2/health/ready", work / f"{port}.log", cwd=tree) as proc:
                    url = f"{url}/v2/models/{args.model}/infer"
                    hey(url, body, headers, args.concurrency, 2, proc.pid)  # warm-up
                    r = hey(url, body, headers, args.concurrency, args.seconds, proc.pid)
                results.setdefault(name, []).append(r)
                print(
                    f"{name:20} {r['rps']:8.0f} req/s  cpu/req {r['server_cpu_us']:5.0f} us  "
                    f"p99 {r['p99_ms']:6.1f} ms  non-2xx {r['non_2xx']:.0f}",
                    flush=True,
                )
        exported = received[0]
    base = results["this tree, off"]
    base_rps = statistics.median(r["rps"] for r in base)
    base_cpu = min(r["server_cpu_us"] for r in base)
    summary = {}
    print(f"\nmedian of {args.rounds} rounds, c={args.concurrency}, {args.seconds:.0f} s each:")
    for name, rs in results.items():
        rps = statistics.median(r["rps"] for r in rs)
        cpu = min(r["server_cpu_us"] for r in rs)
        summary[name] = {"rps": rps, "cpu_us": cpu, "rps_ratio": rps / base_rps, "cpu_ratio": cpu / base_cpu}
        ratios = f"({rps / base_rps:.3f}x)  cpu/req {cpu:5.0f} us ({cpu / base_cpu:.3f}x)"
        print(f"{name:20} {rps:8.0f} req/s {ratios}")
    print(f"OTLP bytes received: {exported}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tracing.json").write_text(json.dumps({"summary": summary, "rounds": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
