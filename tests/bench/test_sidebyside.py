"""bench.staging runs as documented: both services answer every call of every target."""

from __future__ import annotations

import json

from bench import staging
from bench.harness import RESULTS


def test_a_short_run_measures_every_target_with_staging_off_and_on() -> None:
    args = ["--model", "mnist-mlp", "--concurrency", "8", "--rounds", "1", "--seconds", "1", "--streams", "4"]
    assert staging.main(args) == 0
    results = json.loads((RESULTS / "staging.json").read_text())
    runs = {(r["target"], r["staging"]): r for r in results["runs"]}
    assert set(runs) == {(t, s) for t in staging.TARGETS for s in ("off", "on")}
    for key, run in runs.items():
        # A gRPC call counts as OK only when its whole answer arrived (h2load reads no trailers).
        assert run["rps"] > 0 and run["non_2xx"] == 0 and run["responses"] > 0, (key, run)
        assert run["rows_per_batch"] >= 1 and run["compute_us_per_batch"] > 0, (key, run)
    for target in staging.TARGETS:  # one round: the spread is that round's ratio, the median's own
        ratio = results["ratios"][target]
        assert ratio["low"] == ratio["high"] and abs(ratio["median"] - ratio["low"]) < 1e-9
        on, off = runs[(target, "on")], runs[(target, "off")]
        assert abs(ratio["median"] - on["rps"] / off["rps"]) < 1e-9
    assert {"load1_before", "load1_after", "steal", "busy"} <= set(results["load"])
