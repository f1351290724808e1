"""Batching knobs by measurement: throughput and p99 for max_batch_size x max_queue_delay_us.

``python -m bench.batching_sweep`` starts the service once per setting (``mnist-cnn``), loads it with
``hey`` at one concurrency with single-image JSON requests, and prints a table. The defaults in
``service/settings.py`` come from this table (docs/benchmarks.md, Batching defaults).
"""

from __future__ import annotations

import argparse
import json
import sys

from bench.harness import RESULTS, first_test_image, hey, write_bodies
from bench.processes import service


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist-cnn")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,8,32,64")
    parser.add_argument("--delays-us", default="0,500,2000,5000")
    parser.add_argument("--body", choices=["json", "binary"], default="json")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    body, headers = write_bodies(first_test_image(), RESULTS)[args.body]
    rows = []
    print(f"{'batch':>5} {'delay_us':>8} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'non-2xx':>7}")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        for delay in (int(d) for d in args.delays_us.split(",")):
            env = {
                "SERVE_MODELS": args.model,
                "SERVE_LOG_LEVEL": "warning",
                "SERVE_MAX_BATCH_SIZE": str(batch),
                "SERVE_MAX_QUEUE_DELAY_US": str(delay),
            }
            with service(env, RESULTS / "sweep-service.log", grpc=False) as served:
                r = hey(
                    f"{served.url}/v2/models/{args.model}/infer",
                    body,
                    headers,
                    args.concurrency,
                    args.seconds,
                )
            rows.append({"max_batch_size": batch, "max_queue_delay_us": delay, **r})
            print(
                f"{batch:5d} {delay:8d} {r['rps']:8.0f} {r['p50_ms']:7.1f} "
                f"{r['p99_ms']:7.1f} {r['non_2xx']:7.0f}",
                flush=True,
            )
    (RESULTS / "batching_sweep.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
