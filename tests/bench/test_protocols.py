"""bench.protocols runs as documented: every target answers every call, multiplexed and grpcio rows too."""

from __future__ import annotations

import json

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
