"""``python -m service.controller`` on real processes: two service replicas on one repository, a real
Prometheus scraping both, the controller deciding from what Prometheus adds up, both replicas following."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.controller import Prometheus, PrometheusError, gather, main
from tests.helpers.data import MODELS, ROOT, load_digits
from tests.helpers.prometheus import start_prometheus as prometheus
from tests.helpers.rolloutdrive import Stream, infer_body, wait_state
from tests.helpers.server import free_port, running_service, stop_process
from tests.helpers.variants import png, publish_variant

NAME = "mnist-mlp"
ADMIN, FEEDBACK = "admin-token-0123456789", "feedback-token-0123456789"


def replica_env(tmp_path: Path) -> dict[str, str]:
    return {
        "SERVE_MODEL_REPOSITORY": str(tmp_path / "models"),
        "SERVE_MODELS": NAME,
        "SERVE_ADMIN_TOKEN": ADMIN,
        "SERVE_FEEDBACK_DIR": str(tmp_path / "feedback"),
        "SERVE_FEEDBACK_TOKEN": FEEDBACK,
        "SERVE_ROLLOUT_DECIDER": "controller",
        "SERVE_ROLLOUT_INTERVAL_S": "0.2",
        "SERVE_INTRA_OP_THREADS": "1",
    }


def start_prometheus(tmp_path: Path, targets: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    config = tmp_path / "prometheus.yml"
    quoted = ", ".join(f'"{t}"' for t in targets)
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs: [{{job_name: api, static_configs: [{{targets: [{quoted}]}}]}}]\n"
    )
    return prometheus(config, tmp_path / "tsdb", tmp_path / "prometheus.log")


def test_bad_usage_exits_2(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--repository", str(tmp_path / "missing"), "--prometheus", "http://127.0.0.1:1"])
    assert exit_info.value.code == 2


def test_an_unreachable_prometheus_is_an_error_not_a_decision(tmp_path: Path) -> None:
    with pytest.raises(PrometheusError, match="rollout_evidence_total"):
        gather(Prometheus(f"http://127.0.0.1:{free_port()}", timeout=2), NAME, "r")


@pytest.mark.slow
def test_the_controller_rolls_back_for_two_replicas_from_prometheus(tmp_path: Path) -> None:
    publish_variant(MODELS / NAME / "1", tmp_path / "models", NAME, 1)
    publish_variant(MODELS / NAME / "1", tmp_path / "models", NAME, 2, swap=(3, 5), candidate=True)
    images, labels = load_digits()
    with (
        running_service(tmp_path, env=replica_env(tmp_path)) as first,
        running_service(tmp_path, env=replica_env(tmp_path)) as second,
    ):
        prometheus, prometheus_url = start_prometheus(tmp_path, [first.address, second.address])
        controller = subprocess.Popen(
            [sys.executable, "-m", "service.controller", "--repository", str(tmp_path / "models"),
             "--prometheus", prometheus_url, "--interval", "0.5"],
            cwd=ROOT, stdout=(tmp_path / "controller.log").open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            started = httpx.post(
                f"{first.url}/v2/repository/models/{NAME}/rollout",
                json={"candidate": "2", "stages": [{"kind": "shadow", "weight": 1.0, "min_requests": 20},
                                                   {"kind": "canary", "weight": 0.5, "min_requests": 20}]},
                headers={"Authorization": f"Bearer {ADMIN}"},
                timeout=30,
            )  # fmt: skip
            assert started.status_code == 200, started.text
            wait_state(second.url, NAME, "shadow")
            headers = {"Authorization": f"Bearer {FEEDBACK}", "Content-Type": "image/png"}
            with Stream(first.url, NAME) as one, Stream(second.url, NAME) as two:
                state = ""
                deadline = time.monotonic() + 90
                index = 0
                # Labelled feedback to both replicas in turn, until the controller decides.
                while state != "rolled_back" and time.monotonic() < deadline:
                    replica = (first, second)[index % 2]
                    stored = httpx.post(
                        f"{replica.url}/v2/models/{NAME}/feedback", params={"label": str(labels[index])},
                        content=png(images[index]), headers=headers, timeout=30,
                    )  # fmt: skip
                    assert stored.status_code == 201, stored.text
                    index += 1
                    state = httpx.get(f"{second.url}/v2/models/{NAME}/rollout", timeout=10).json()["state"]
                assert state == "rolled_back", (tmp_path / "controller.log").read_text()[-3000:]
                decided = wait_state(first.url, NAME, "rolled_back")
            assert one.failures == [] and two.failures == [], (one.failures[:3], two.failures[:3])
            # The evidence is both replicas' added up: each saw only part of the labelled items.
            evidence = decided["evidence"]
            assert evidence["champion_only"] >= 7 and evidence["candidate_only"] == 0
            counts = []
            for replica in (first, second):
                text = httpx.get(f"{replica.url}/metrics", timeout=10).text
                lines = [
                    x
                    for x in text.splitlines()
                    if x.startswith("rollout_evidence_total{") and "champion_labelled" in x
                ]
                assert len(lines) == 1, lines
                counts.append(float(lines[0].rsplit(" ", 1)[1]))
                assert 'rollout_decisions_total{decision="rollback"' not in text  # replicas decide nothing
            assert all(c > 0 for c in counts)
            assert 0 < evidence["candidate"]["labelled"] <= sum(counts)
            # What the controller reads is the sum over the replicas (polled until Prometheus scraped both).
            client = Prometheus(prometheus_url)
            deadline = time.monotonic() + 20
            while gather(client, NAME, decided["id"]).champion.labelled != sum(counts):
                assert time.monotonic() < deadline, (gather(client, NAME, decided["id"]), counts)
                time.sleep(0.2)
            assert "less accurate" in decided["reason"]
            for replica in (first, second):
                answer = httpx.post(f"{replica.url}/v2/models/{NAME}/infer", json=infer_body(0), timeout=10)
                assert answer.json()["model_version"] == "1"
        finally:
            stop_process(controller)
            stop_process(prometheus)
    assert "rollback" in (tmp_path / "controller.log").read_text()
