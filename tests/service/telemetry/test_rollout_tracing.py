"""Rollouts with tracing on: a start and each decision of this process are lifecycle spans, under the
operator's request, with the SDK's in-memory exporter behind the real app."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from service.app import create_app
from service.settings import Settings
from service.telemetry.tracing import Tracing
from tests.helpers.data import MODELS
from tests.helpers.variants import publish_variant
from tests.service.telemetry.test_tracing import one

TOKEN = "admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
NAME = "mnist-mlp"
START = f"/v2/repository/models/{NAME}/rollout"


def test_a_rollout_start_and_decision_are_spans_under_the_operators_requests(tmp_path: Path) -> None:
    root = tmp_path / "models"
    publish_variant(MODELS / NAME / "1", root, NAME, 1)
    publish_variant(MODELS / NAME / "1", root, NAME, 2, candidate=True)
    exporter = InMemorySpanExporter()
    tracing = Tracing.create(exporter, batch_export=False)
    settings = Settings(model_repository=root, models=[NAME], grpc_port=0, admin_token=TOKEN)
    with TestClient(create_app(settings, tracing=tracing)) as client:
        exporter.clear()
        assert client.post(START, json={"candidate": "2"}, headers=ADMIN).status_code == 200
        assert client.post(f"{START}/pause", headers=ADMIN).status_code == 200
        spans = exporter.get_finished_spans()

    start = one(spans, "rollout.start")
    start_request = one(spans, "POST /v2/repository/models/{model_name}/rollout")
    assert start.parent is not None and start.parent.span_id == start_request.context.span_id
    attributes = dict(start.attributes or {})
    assert attributes["inference.model.name"] == NAME
    assert (attributes["rollout.champion"], attributes["rollout.candidate"]) == (1, 2)
    assert (attributes["rollout.state"], attributes["rollout.by"]) == ("shadow", "operator")
    assert start.status.status_code is StatusCode.UNSET

    decision = one(spans, "rollout.decision")
    pause_request = one(spans, "POST /v2/repository/models/{model_name}/rollout/{decision}")
    assert decision.parent is not None and decision.parent.span_id == pause_request.context.span_id
    attributes = dict(decision.attributes or {})
    assert (attributes["rollout.decision"], attributes["rollout.state"]) == ("pause", "paused")
    assert attributes["rollout.id"] == dict(start.attributes or {})["rollout.id"]
    assert decision.context.trace_id != start.context.trace_id  # each under its own request


def test_a_decision_of_the_rule_is_a_trace_of_its_own(tmp_path: Path) -> None:
    root = tmp_path / "models"
    publish_variant(MODELS / NAME / "1", root, NAME, 1)
    publish_variant(MODELS / NAME / "1", root, NAME, 2, candidate=True)
    exporter = InMemorySpanExporter()
    tracing = Tracing.create(exporter, batch_export=False)
    settings = Settings(model_repository=root, models=[NAME], grpc_port=0, admin_token=TOKEN)
    with TestClient(create_app(settings, tracing=tracing)) as client:
        assert client.post(START, json={"candidate": "2"}, headers=ADMIN).status_code == 200
        core = client.app.state.core
        assert client.portal is not None
        exporter.clear()
        client.portal.call(partial(core.rollout.decide, NAME, by_operator="rollback"))
        decision = one(exporter.get_finished_spans(), "rollout.decision")
    assert decision.parent is None
    assert dict(decision.attributes or {})["rollout.state"] == "rolled_back"
