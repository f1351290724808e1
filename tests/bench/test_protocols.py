"""bench.protocols runs as documented: every target answers every call, multiplexed and grpcio rows too."""

from __future__ import annotations

import json
import math

import pytest

from bench import protocols
from bench.harness import RESULTS


def test_a_short_run_measures_every_target_without_a_failed_call() -> None:
    args = ["--model", "mnist-mlp", "--concurrency", "8", "--rounds", "1", "--seconds", "1", "--streams", "4"]
    assert protocols.main(args) == 0
    results = json.loads((RESULTS / "protocols.json").read_text())
    runs = {r["target"]: r for r in results["runs"]}
    assert set(runs) == {
        "http-json",
        "http-binary",
        "grpc-raw",
        "grpc-typed",
        "grpc-raw-mux",
        "grpc-raw-grpcio",
    }
    for target, run in runs.items():
        # A gRPC call counts as OK only when its whole answer arrived (h2load reads no trailers).
        assert run["rps"] > 0 and run["non_2xx"] == 0 and run["responses"] > 0, (target, run)
    assert {"grpc_raw_mux_vs_http_binary", "grpc_raw_vs_grpcio"} <= set(results["ratios"]["c8"])
    # One round: each ratio's spread is that round's ratio, the median's own.
    for name, rounds in results["ratio_rounds"]["c8"].items():
        assert rounds == [results["ratios"]["c8"][name]], name
    assert results["target"] == {
        "ratio": "c8 grpc_raw_vs_http_binary",
        "measured": results["ratios"]["c8"]["grpc_raw_vs_http_binary"],
        "bar": 1.2,
    }
    assert {"load1_before", "load1_after", "steal", "busy"} <= set(results["load"])
    bound = results["machine_bound"]
    grpc, http = runs["grpc-raw"], runs["http-binary"]
    assert bound["grpc_cpu_us"] == grpc["server_cpu_us"] + grpc["client_cpu_us"] > 0
    assert bound["http_cpu_us"] == http["server_cpu_us"] + http["client_cpu_us"] > 0
    assert bound["ceiling"] == bound["http_cpu_us"] / bound["grpc_cpu_us"]
    assert bound["grpc_machine_share"] > 0 and bound["http_machine_share"] > 0


def test_the_machine_bound_is_the_ratio_of_cpu_per_request() -> None:
    grpc = {"rps": 10000.0, "server_cpu_us": 110.0, "client_cpu_us": 10.0}
    http = {"rps": 9000.0, "server_cpu_us": 140.0, "client_cpu_us": 10.0}
    bound = protocols.ceiling(grpc, http, cpus=2)
    assert bound is not None
    assert bound["ceiling"] == pytest.approx(150 / 120)
    # 10000 calls/s at 120 µs each keep 1.2 of the 2 cores busy.
    assert bound["grpc_machine_share"] == pytest.approx(0.6)
    assert bound["http_machine_share"] == pytest.approx(0.675)
    # Without the client's CPU (the hey fallback measures only the server's) there is no bound.
    assert protocols.ceiling({**grpc, "client_cpu_us": math.nan}, http, cpus=2) is None
    assert protocols.ceiling(grpc, {"rps": 1.0, "server_cpu_us": 1.0}, cpus=2) is None
