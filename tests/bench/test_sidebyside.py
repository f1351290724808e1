"""bench.sidebyside runs as documented: both services answer every call of every target."""

from __future__ import annotations

import json

import pytest

from bench import sidebyside
from bench.harness import RESULTS


def test_a_short_run_measures_every_target_with_each_configuration() -> None:
    args = ["--model", "mnist-mlp", "--concurrency", "8", "--rounds", "1", "--seconds", "1", "--streams", "4"]
    args += ["--name", "test-sidebyside", "--a", "SERVE_COMPUTE=thread", "--b", "SERVE_COMPUTE=process"]
    assert sidebyside.main(args) == 0
    results = json.loads((RESULTS / "test-sidebyside.json").read_text())
    runs = {(r["target"], r["side"]): r for r in results["runs"]}
    assert set(runs) == {(t, s) for t in sidebyside.TARGETS for s in ("a", "b")}
    for key, run in runs.items():
        # A gRPC call counts as OK only when its whole answer arrived (h2load reads no trailers).
        assert run["rps"] > 0 and run["non_2xx"] == 0 and run["responses"] > 0, (key, run)
        assert run["rows_per_batch"] >= 1 and run["compute_us_per_batch"] > 0, (key, run)
    for target in sidebyside.TARGETS:  # one round: the spread is that round's ratio, the median's own
        ratio = results["ratios"][target]
        assert ratio["low"] == ratio["high"] and abs(ratio["median"] - ratio["low"]) < 1e-9
        a, b = runs[(target, "a")], runs[(target, "b")]
        assert abs(ratio["median"] - b["rps"] / a["rps"]) < 1e-9
    assert {"load1_before", "load1_after", "steal", "busy"} <= set(results["load"])
    assert results["args"]["a"] == ["SERVE_COMPUTE=thread"]


def test_settings_that_are_not_serve_variables_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        sidebyside.main(["--a", "PATH=/tmp"])
    assert exit_info.value.code == 2
    assert "expected SERVE_NAME=VALUE, got 'PATH=/tmp'" in capsys.readouterr().err
