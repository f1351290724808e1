"""Two service configurations side by side: the same requests to two service processes.

``python -m bench.sidebyside --a KEY=VALUE... --b KEY=VALUE...`` starts ``python -m service`` twice, with
the ``SERVE_*`` settings of ``--a`` and of ``--b`` over the defaults, each idle while the other is
measured. ``make bench-compute`` compares ``SERVE_COMPUTE=thread`` with ``process``, and
``make bench-staging`` ``SERVE_BATCH_STAGING`` off and on (with thread compute). At ``--concurrency`` it
drives both with ``h2load`` for every target of :mod:`bench.protocols` but grpcio's: HTTP/1.1 JSON and
binary, gRPC raw and typed with one call per connection, and gRPC raw multiplexed (``--streams`` calls in
flight on each connection, as a gRPC channel sends them). The two services take turns on each target,
``--rounds`` times; each row is the median round, and each ratio (b over a) the ratio of the medians with
the spread of the per-round ratios beside it. Besides requests/s, p99 and the server's CPU per request
(its child processes included: the compute processes of ``SERVE_COMPUTE=process``), it prints the rows
per batch and the compute time per batch that the service's own metrics counted meanwhile. In the thread
mode the compute time includes the worker's wait for the interpreter lock after onnxruntime returns
(docs/hotpath.md, "The compute worker and the interpreter lock").

Results go to stdout and ``bench/results/<--name>.json``, with the machine's load before and after.
Compare the ratios, not absolute figures across machines.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from bench.grpc_load import infer_request_bytes
from bench.harness import RESULTS, first_test_image, h2load, load_report, machine_load, write_bodies
from bench.processes import Served, service
from bench.protocols import check_answers, grpc_frame
from bench.serving import batch_counters, batching

TARGETS = ("http-json", "http-binary", "grpc-raw", "grpc-typed", "grpc-raw-mux")
GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"


def turn(
    served: Served,
    target: str,
    files: dict[str, tuple[Path, dict[str, str]]],
    ok_sizes: dict[str, int],
    args: Any,
) -> dict[str, Any]:
    """One turn of h2load on ``target`` against ``served``, with its batches counted meanwhile."""
    before = batch_counters(served.url)
    body, headers = files[target]
    if target.startswith("http-"):
        url = f"{served.url}/v2/models/{args.model}/infer"
        r = h2load(url, body, headers, args.concurrency, args.seconds, http1=True, server_pid=served.pid)
    else:
        kind = "grpc-raw" if target == "grpc-raw-mux" else target
        r = h2load(
            f"http://{served.grpc_address}{GRPC_PATH}",
            body,
            headers,
            args.concurrency,
            args.seconds,
            ok_data_bytes=ok_sizes[kind],
            server_pid=served.pid,
            streams=args.streams if target == "grpc-raw-mux" else 1,
        )
    return r | batching(before, batch_counters(served.url))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist-cnn")
    parser.add_argument("--seconds", type=float, default=5.0, help="load duration per turn")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="turns each service takes on each target")
    parser.add_argument("--streams", type=int, default=8, help="calls in flight per connection, grpc-raw-mux")
    parser.add_argument("--a", nargs="*", default=[], metavar="KEY=VALUE", help="settings of service a")
    parser.add_argument("--b", nargs="*", default=[], metavar="KEY=VALUE", help="settings of service b")
    parser.add_argument("--name", default="sidebyside", help="results file name, without .json")
    args = parser.parse_args(argv)
    try:
        settings = {"a": _settings(args.a), "b": _settings(args.b)}
    except ValueError as exc:
        parser.error(str(exc))
    if args.streams < 1 or args.concurrency % args.streams:
        parser.error("--concurrency must be a multiple of --streams")
    RESULTS.mkdir(parents=True, exist_ok=True)
    image = first_test_image()
    bodies = write_bodies(image, RESULTS)
    messages = {kind: infer_request_bytes(args.model, image, raw=kind == "grpc-raw") for kind in TARGETS[2:4]}
    grpc_headers = {"content-type": "application/grpc", "te": "trailers"}
    files: dict[str, tuple[Path, dict[str, str]]] = {
        "http-json": bodies["json"],
        "http-binary": bodies["binary"],
    }
    for kind, message in messages.items():
        path = RESULTS / f"{args.name}-{kind}.grpc"
        path.write_bytes(grpc_frame(message))
        files[kind] = (path, grpc_headers)
    files["grpc-raw-mux"] = files["grpc-raw"]
    env = {"SERVE_MODELS": args.model, "SERVE_LOG_LEVEL": "warning"}
    rounds: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with contextlib.ExitStack() as stack:
        services = {
            side: stack.enter_context(service({**env, **extra}, RESULTS / f"{args.name}-{side}.log"))
            for side, extra in settings.items()
        }
        sizes = [check_answers(s.url, s.grpc_address, args.model, image, messages) for s in services.values()]
        assert sizes[0] == sizes[1]
        load_before = machine_load()
        for _ in range(args.rounds):
            for target in TARGETS:
                for name, served in services.items():
                    rounds.setdefault((target, name), []).append(turn(served, target, files, sizes[0], args))
        load = load_report(load_before, machine_load())
    rows: list[dict[str, Any]] = []
    ratios: dict[str, dict[str, float]] = {}
    print(f"c={args.concurrency}, {args.rounds} rounds of {args.seconds:g} s")
    for side in ("a", "b"):
        print(f"  {side}: {' '.join(args.a if side == 'a' else args.b) or '(defaults)'}")
    for target in TARGETS:
        for name in ("a", "b"):
            tries = rounds[(target, name)]
            r = sorted(tries, key=lambda t: t["rps"])[len(tries) // 2]
            rows.append({"target": target, "side": name, **r, "rps_rounds": [t["rps"] for t in tries]})
            print(
                f"{target:13} {name}: {r['rps']:8.0f} req/s  p99 {r['p99_ms']:5.1f} ms  "
                f"cpu/req {r['server_cpu_us']:4.0f} us  rows/batch {r['rows_per_batch']:4.1f}  "
                f"compute/batch {r['compute_us_per_batch']:5.0f} us  failed {r['non_2xx']:.0f}"
            )
        a, b = rounds[(target, "a")], rounds[(target, "b")]
        per_round = [y["rps"] / x["rps"] for x, y in zip(a, b, strict=True)]
        median = statistics.median(t["rps"] for t in b) / statistics.median(t["rps"] for t in a)
        ratios[target] = {"median": median, "low": min(per_round), "high": max(per_round)}
        print(f"{target:13} b/a {median:.2f}x ({min(per_round):.2f}..{max(per_round):.2f})")
    print(
        f"machine: load {load['load1_before']:.2f} before, {load['load1_after']:.2f} after, "
        f"steal {100 * load['steal']:.1f} %" + ("  BUSY MACHINE: ratios only" if load["busy"] else "")
    )
    out = RESULTS / f"{args.name}.json"
    results = {"date": dt.date.today().isoformat(), "args": vars(args), "runs": rows, "ratios": ratios}
    out.write_text(json.dumps({**results, "load": load}, indent=2))
    print(f"wrote {out}")
    return 0


def _settings(pairs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` arguments as environment variables; ValueError unless each names a ``SERVE_`` one."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("SERVE_"):
            raise ValueError(f"expected SERVE_NAME=VALUE, got {pair!r}")
        env[key] = value
    return env


if __name__ == "__main__":
    sys.exit(main())
