"""gRPC beside HTTP: one service process, both listeners, the same single-image requests, side by side.

``python -m bench.protocols`` starts ``python -m service`` with gRPC on, then at each concurrency level
drives it with ``h2load`` (nghttp2's load generator, C, one thread; ``make system-deps`` installs it),
``c`` connections with one request in flight each, for every target alike:

- ``http-json`` and ``http-binary``: HTTP/1.1 (``h2load --h1``);
- ``grpc-raw`` / ``grpc-typed``: ``ModelInfer`` as HTTP/2 POSTs (h2c) of a gRPC-framed serialized request
  (``grpc-raw`` sends ``raw_input_contents`` as ``tritonclient.grpc`` does; ``grpc-typed`` sends
  ``fp32_contents``). h2load does not read trailers, so a call counts as OK when its answer's message
  arrived with the size of the OK answer that one real gRPC call got before the load (a failed call has
  no message); that call also checks the probabilities.
- ``grpc-raw-mux``: the same calls as a gRPC client sends them, several at once on each connection
  (``c / --streams`` connections with ``--streams`` calls in flight each; HTTP/1.1 has no such form).
  A gRPC channel multiplexes every call of its client over one connection: ``tritonclient.grpc`` sends
  all its concurrent calls on one.
- ``grpc-raw-grpcio``: the ``grpc-raw`` calls to grpcio's listener (``SERVE_GRPC_SERVER=grpcio``, the
  server the native one replaced), in a second service process that is idle while the others run
  (``--no-grpcio`` leaves it out).

The services inherit this environment, so ``SERVE_COMPUTE=process python -m bench.protocols`` measures
compute in processes (the output and the results file say which compute mode was measured).

On a 2-core machine the client's own CPU decides much of a comparison: a Python gRPC client costs several
times what the server spends per call, and it runs on the server's cores. Without ``h2load`` the bench
falls back to what it did before, and says so: ``hey`` (Go) for HTTP, and the Python closed-loop
generator of :mod:`bench.grpc_load` for gRPC and for ``http-binary-py``, so that HTTP and gRPC are still
compared with the same client costs.

Each answer of each kind is checked once before the load (same probabilities over every protocol). At each
level the targets take turns, ``--rounds`` times, so that a burst of other work on the machine hits them
alike; a target's row is its median round (requests/s, and that round's p50 and p99). The table goes to
stdout and ``bench/results/protocols.json``. On a small machine the load generators share the cores with
the service, so compare the rows of one run as ratios, not across machines.

Each ratio is printed as the ratio of the two medians, with the spread of the per-round ratios (each
round's pair measured seconds apart, so a burst of other work moves both) beside it. The machine's load
average and steal are recorded before and after, and a run that began on a busy machine is marked so.
The last lines hold the issue's target, gRPC raw at least 1.2x HTTP binary at the highest level, and
what the machine allows it: each target's CPU per request, the service's processes and the load generator
together, and the ratio of the two, which is the most gRPC raw can do over HTTP binary where both are
bound by the machine's cores (:func:`ceiling`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shutil
import struct
import sys
from typing import Any

import grpc
import httpx
import numpy as np

from bench.grpc_load import CHANNEL_OPTIONS, closed_loop, infer_request_bytes
from bench.harness import RESULTS, first_test_image, h2load, hey, load_report, machine_load, write_bodies
from bench.processes import service
from service.grpc.generated import grpc_service_pb2 as pb
from service.grpc.tensors import response_arrays

#: The ratios whose per-round values are kept: name -> (numerator target, denominator target).
RATIOS = {
    "grpc_raw_vs_http_binary": ("grpc-raw", "http-binary"),
    "grpc_raw_vs_http_json": ("grpc-raw", "http-json"),
    "grpc_typed_vs_grpc_raw": ("grpc-typed", "grpc-raw"),
    "grpc_raw_mux_vs_http_binary": ("grpc-raw-mux", "http-binary"),
    "grpc_raw_vs_grpcio": ("grpc-raw", "grpc-raw-grpcio"),
    "grpc_raw_vs_http_binary_same_client": ("grpc-raw", "http-binary-py"),  # without h2load
}
#: Issue 20's bar: gRPC raw calls at least this many times HTTP binary requests at the highest level.
TARGET = 1.2


def check_answers(
    url: str, grpc_address: str, model: str, image: np.ndarray, grpc_bodies: dict[str, bytes]
) -> dict[str, int]:
    """Every protocol answers the benchmark's request with the same probabilities; returns the size of
    each gRPC kind's OK answer as it travels (message and 5-byte gRPC frame prefix)."""
    sizes = {}
    tensor = {"name": "image", "datatype": "FP32", "shape": list(image.shape), "data": image.ravel().tolist()}
    answer = httpx.post(f"{url}/v2/models/{model}/infer", json={"inputs": [tensor]}, timeout=30)
    answer.raise_for_status()
    expected = np.asarray(answer.json()["outputs"][0]["data"], np.float32)
    with grpc.insecure_channel(grpc_address, options=CHANNEL_OPTIONS) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for kind, body in grpc_bodies.items():
            answer_bytes = infer(body, timeout=30)
            got = response_arrays(pb.ModelInferResponse.FromString(answer_bytes))["probabilities"]
            np.testing.assert_allclose(got.ravel(), expected, atol=1e-6, err_msg=kind)
            sizes[kind] = 5 + len(answer_bytes)
    return sizes


def ceiling(grpc: dict[str, Any], http: dict[str, Any], cpus: int) -> dict[str, float] | None:
    """What the machine allows the target ratio, from two runs' CPU per request (the service, its compute
    processes and the load generator): where both targets are bound by the machine's ``cpus`` cores
    (every core busy), gRPC raw does HTTP binary's CPU per request over its own times HTTP binary's
    requests. Also each run's share of the machine (requests/s times CPU per request, over the cores):
    a run below 100 % was bound by something else (one event loop's thread, the hand-offs between it and
    the compute), and then the measured ratio may exceed this one. None without the client's CPU (hey)."""
    totals = {}
    for name, run in (("grpc", grpc), ("http", http)):
        server, client = run.get("server_cpu_us"), run.get("client_cpu_us")
        if server is None or client is None or not math.isfinite(server + client) or server + client <= 0:
            return None
        totals[name] = server + client
    return {
        "ceiling": totals["http"] / totals["grpc"],
        "grpc_cpu_us": totals["grpc"],
        "http_cpu_us": totals["http"],
        "grpc_machine_share": grpc["rps"] * totals["grpc"] / (1e6 * cpus),
        "http_machine_share": http["rps"] * totals["http"] / (1e6 * cpus),
    }


def grpc_frame(message: bytes) -> bytes:
    """``message`` as one gRPC length-prefixed message (not compressed), the body of a unary call."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def line(target: str, concurrency: int, r: dict[str, Any]) -> None:
    failed = r.get("failed", r.get("non_2xx", 0))
    cpu = r.get("server_cpu_us")
    print(
        f"{target:15} c={concurrency:3}: {r['rps']:8.0f} req/s  p50 {r['p50_ms']:6.1f} ms  "
        f"p99 {r['p99_ms']:6.1f} ms  failed {failed:.0f}" + (f"  cpu/req {cpu:4.0f} us" if cpu else ""),
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist-cnn")
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration per point")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--client-processes", type=int, default=1, help="processes of the Python generator")
    parser.add_argument("--rounds", type=int, default=3, help="turns each target takes at each level")
    parser.add_argument(
        "--streams",
        type=int,
        default=8,
        help="calls in flight per connection for grpc-raw-mux (c/streams connections; 1 leaves it out)",
    )
    parser.add_argument(
        "--no-grpcio",
        dest="grpcio",
        action="store_false",
        help="leave out grpc-raw-grpcio (the same calls to grpcio's listener, in a second process)",
    )
    args = parser.parse_args(argv)
    if shutil.which("h2load") is None and shutil.which("hey") is None:
        print("error: neither h2load nor hey found (make system-deps installs them)", file=sys.stderr)
        return 2
    use_h2load = shutil.which("h2load") is not None
    if not use_h2load:
        print(
            "h2load not found (make system-deps installs it): falling back to hey for HTTP and the Python "
            "generator for gRPC, which shares the service's cores",
            flush=True,
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    image = first_test_image()
    bodies = write_bodies(image, RESULTS)
    grpc_bodies = {
        "grpc-raw": infer_request_bytes(args.model, image, raw=True),
        "grpc-typed": infer_request_bytes(args.model, image, raw=False),
    }
    levels = [int(c) for c in args.concurrency.split(",")]
    path = f"/v2/models/{args.model}/infer"
    env = {"SERVE_MODELS": args.model, "SERVE_LOG_LEVEL": "warning"}
    binary_body, binary_headers = bodies["binary"]
    grpc_files = {}
    for kind, message in grpc_bodies.items():
        grpc_files[kind] = RESULTS / f"body-{kind}.grpc"
        grpc_files[kind].write_bytes(grpc_frame(message))
    grpc_headers = {"content-type": "application/grpc", "te": "trailers"}
    grpc_path = "/inference.GRPCInferenceService/ModelInfer"
    runs: list[dict[str, Any]] = []
    round_ratios: dict[str, dict[str, list[float]]] = {}
    with contextlib.ExitStack() as stack:
        served = stack.enter_context(service(env, RESULTS / "protocols-service.log"))
        # grpcio's listener (SERVE_GRPC_SERVER=grpcio) in a second, otherwise idle process: the same calls
        # against the server the native one replaced, in the same run.
        grpcio = None
        if args.grpcio:
            old_env = {**env, "SERVE_GRPC_SERVER": "grpcio"}
            grpcio = stack.enter_context(service(old_env, RESULTS / "protocols-grpcio.log"))
        url, grpc_address = served.url, served.grpc_address
        grpc_url = f"http://{grpc_address}{grpc_path}"
        python_targets: dict[str, dict[str, Any]] = {
            "http-binary-py": {
                "protocol": "http",
                "address": f"127.0.0.1:{served.port}",
                "path": path,
                "body": binary_body.read_bytes(),
                "headers": {k: v for k, v in binary_headers.items() if k.lower() != "content-type"},
            },
            **{k: {"protocol": "grpc", "address": grpc_address, "body": v} for k, v in grpc_bodies.items()},
        }
        ok_sizes = check_answers(url, grpc_address, args.model, image, grpc_bodies)
        if grpcio is not None:
            assert check_answers(url, grpcio.grpc_address, args.model, image, grpc_bodies) == ok_sizes

        def grpc_load(kind: str, endpoint: str, pid: int, c: int, streams: int = 1) -> dict[str, Any]:
            """One turn of h2load sending ``kind``'s calls to ``endpoint``, ``streams`` to a connection."""
            r = h2load(
                endpoint,
                grpc_files[kind],
                grpc_headers,
                c,
                args.seconds,
                ok_data_bytes=ok_sizes[kind],
                server_pid=pid,
                streams=streams,
            )
            return {"client": "h2load", **r}

        load_before = machine_load()
        for c in levels:
            rounds: dict[str, list[dict[str, Any]]] = {}
            for _ in range(args.rounds):
                for kind in ("json", "binary"):
                    body, headers = bodies[kind]
                    if use_h2load:
                        r = h2load(
                            f"{url}{path}", body, headers, c, args.seconds, http1=True, server_pid=served.pid
                        )
                    else:
                        r = hey(f"{url}{path}", body, headers, c, args.seconds, server_pid=served.pid)
                    rounds.setdefault(f"http-{kind}", []).append(
                        {"client": "h2load" if use_h2load else "hey", **r}
                    )
                if use_h2load:
                    for kind in grpc_files:
                        rounds.setdefault(kind, []).append(grpc_load(kind, grpc_url, served.pid, c))
                    if c % args.streams == 0 and args.streams > 1:
                        mux = grpc_load("grpc-raw", grpc_url, served.pid, c, args.streams)
                        rounds.setdefault("grpc-raw-mux", []).append(mux)
                    if grpcio is not None:
                        old_url = f"http://{grpcio.grpc_address}{grpc_path}"
                        old = grpc_load("grpc-raw", old_url, grpcio.pid, c)
                        rounds.setdefault("grpc-raw-grpcio", []).append(old)
                    continue
                for name, target in python_targets.items():
                    r = closed_loop(
                        target, concurrency=c, seconds=args.seconds, processes=args.client_processes
                    )
                    rounds.setdefault(name, []).append({"client": "python", **r})
            for name, tries in rounds.items():
                median = sorted(tries, key=lambda r: r["rps"])[len(tries) // 2]
                runs.append(
                    {"target": name, "concurrency": c, **median, "rps_rounds": [r["rps"] for r in tries]}
                )
                line(name, c, median)
            round_ratios[f"c{c}"] = {
                ratio: [a["rps"] / b["rps"] for a, b in zip(rounds[top], rounds[bottom], strict=True)]
                for ratio, (top, bottom) in RATIOS.items()
                if top in rounds and bottom in rounds
            }
        load = load_report(load_before, machine_load())

    by_run = {(r["target"], r["concurrency"]): r for r in runs}
    by = {key: r["rps"] for key, r in by_run.items()}
    ratios = {
        f"c{c}": {
            name: by[(top, c)] / by[(bottom, c)]
            for name, (top, bottom) in RATIOS.items()
            if (top, c) in by and (bottom, c) in by
        }
        for c in levels
    }
    for level, values in ratios.items():
        spreads = round_ratios[level]
        print(
            level,
            "  ".join(
                f"{k} {v:.2f}x" + (f" ({min(spreads[k]):.2f}..{max(spreads[k]):.2f})" if k in spreads else "")
                for k, v in values.items()
            ),
        )
    client = "h2load for every target" if use_h2load else "hey (HTTP) and the Python generator (fallback)"
    print(f"clients: {client}")
    compute = os.environ.get("SERVE_COMPUTE", "thread (the default)")
    print(f"compute: {compute} (SERVE_COMPUTE in this environment)")
    top = f"c{max(levels)}"
    measured = ratios[top]["grpc_raw_vs_http_binary"]
    print(
        f"target: {top} gRPC raw / HTTP binary {measured:.2f}x, bar >= {TARGET:.1f}x: "
        + ("met" if measured >= TARGET else "NOT MET")
    )
    cpus = len(os.sched_getaffinity(0))
    pair = by_run.get(("grpc-raw", max(levels))), by_run.get(("http-binary", max(levels)))
    bound = ceiling(pair[0], pair[1], cpus) if pair[0] and pair[1] else None
    if bound is not None:
        grpc_us, http_us = bound["grpc_cpu_us"], bound["http_cpu_us"]
        shares = 100 * bound["grpc_machine_share"], 100 * bound["http_machine_share"]
        print(
            f"machine bound: CPU per request (service processes and load generator) {grpc_us:.0f} us for "
            f"gRPC raw, {http_us:.0f} us for HTTP binary: where both are bound by the machine's {cpus} "
            f"cores, gRPC raw does at most {bound['ceiling']:.2f}x HTTP binary. These runs kept "
            f"{shares[0]:.0f} % and {shares[1]:.0f} % of the machine busy."
        )
    print(
        f"machine: load {load['load1_before']:.2f} before, {load['load1_after']:.2f} after, "
        f"steal {100 * load['steal']:.1f} %"
        + ("  BUSY MACHINE: ratios only, not absolute figures" if load["busy"] else "")
    )
    results = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other work while measured)",
        "model": args.model,
        "seconds": args.seconds,
        "client": client,
        "compute": compute,
        "client_processes": args.client_processes,
        "rounds": args.rounds,
        "runs": runs,
        "ratios": ratios,
        "ratio_rounds": round_ratios,
        "target": {"ratio": f"{top} grpc_raw_vs_http_binary", "measured": measured, "bar": TARGET},
        "machine_bound": bound,
        "load": load,
    }
    out = RESULTS / "protocols.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
