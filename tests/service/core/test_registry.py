"""Loading, hot reload and refusal of model versions, through the real app and real onnxruntime."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.core.served import warmup_batch_sizes
from service.core.types import InferRequest, InferResponse
from service.settings import Settings
from tests.helpers.modelfactory import write_model_version

IMAGES = np.random.default_rng(7).uniform(0, 255, size=(4, 28, 28, 1)).astype(np.float32)


def infer(client: TestClient, path: str, images: np.ndarray = IMAGES) -> dict[str, object]:
    body = {
        "inputs": [
            {
                "name": "image",
                "datatype": "FP32",
                "shape": list(images.shape),
                "data": images.ravel().tolist(),
            }
        ]
    }
    response = client.post(path, content=orjson.dumps(body))
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    return result


def probabilities(result: dict[str, object]) -> np.ndarray:
    outputs = result["outputs"]
    assert isinstance(outputs, list)
    return np.asarray(outputs[0]["data"]).reshape(outputs[0]["shape"])


def load_results(client: TestClient, model: str) -> dict[str, float]:
    counts = {"ok": 0.0, "error": 0.0}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if s.name == "model_load_total" and s.labels["model"] == model:
                counts[s.labels["result"]] = s.value
    return counts


def test_warmup_batch_sizes() -> None:
    assert warmup_batch_sizes(1) == [1]
    assert warmup_batch_sizes(32) == [1, 2, 4, 8, 16, 32]
    assert warmup_batch_sizes(48) == [1, 2, 4, 8, 16, 32, 48]


def test_new_version_is_swapped_in_and_old_retired(tmp_path: Path) -> None:
    v1 = write_model_version(tmp_path, "tiny", 1, seed=1)
    with TestClient(create_app(Settings(model_repository=tmp_path))) as c:
        first = infer(c, "/v2/models/tiny/infer")
        assert first["model_version"] == "1"
        np.testing.assert_allclose(probabilities(first), v1.reference(IMAGES), atol=1e-5)
        v2 = write_model_version(tmp_path, "tiny", 2, seed=2)
        c.portal.call(c.app.state.models.sync)  # type: ignore[attr-defined]
        second = infer(c, "/v2/models/tiny/infer")
        assert second["model_version"] == "2"
        np.testing.assert_allclose(probabilities(second), v2.reference(IMAGES), atol=1e-5)
        # latest:1 retires version 1: explicit requests for it are 404 now.
        gone = c.post("/v2/models/tiny/versions/1/infer", content=b"{}")
        assert gone.status_code == 404 and "no served version 1" in gone.json()["error"]
        assert c.get("/v2/models/tiny").json()["versions"] == ["2"]
        assert load_results(c, "tiny") == {"ok": 2.0, "error": 0.0}
        info = c.get("/metrics").text
        assert 'model_info{model="tiny",provider="CPUExecutionProvider",version="2"} 1.0' in info
        assert 'model_info{model="tiny",provider="CPUExecutionProvider",version="1"}' not in info


def test_rollback_by_moving_the_new_version_away(tmp_path: Path) -> None:
    v1 = write_model_version(tmp_path, "tiny", 1, seed=1)
    write_model_version(tmp_path, "tiny", 2, seed=2)
    with TestClient(create_app(Settings(model_repository=tmp_path))) as c:
        assert infer(c, "/v2/models/tiny/infer")["model_version"] == "2"
        (tmp_path / "tiny" / "2").rename(tmp_path / "tiny" / ".rolled-back-2")
        c.portal.call(c.app.state.models.sync)  # type: ignore[attr-defined]
        result = infer(c, "/v2/models/tiny/infer")
        assert result["model_version"] == "1"
        np.testing.assert_allclose(probabilities(result), v1.reference(IMAGES), atol=1e-5)
        assert c.get("/v2/models/tiny").json()["versions"] == ["1"]


def test_policy_all_serves_every_version_by_explicit_request(tmp_path: Path) -> None:
    models = [write_model_version(tmp_path, "tiny", v, seed=v) for v in (1, 2, 3)]
    with TestClient(create_app(Settings(model_repository=tmp_path, version_policy="all"))) as c:
        for model, version in zip(models, (1, 2, 3), strict=True):
            result = infer(c, f"/v2/models/tiny/versions/{version}/infer")
            np.testing.assert_allclose(probabilities(result), model.reference(IMAGES), atol=1e-5)
        assert infer(c, "/v2/models/tiny/infer")["model_version"] == "3"
        assert c.get("/v2/models/tiny").json()["versions"] == ["1", "2", "3"]


@pytest.mark.parametrize(
    "breakage",
    ["corrupt", "output_name", "input_rank", "sha256", "other_signature", "bad_json"],
)
def test_broken_new_version_is_refused_and_old_keeps_serving(tmp_path: Path, breakage: str) -> None:
    v1 = write_model_version(tmp_path, "tiny", 1, seed=1)
    with TestClient(create_app(Settings(model_repository=tmp_path))) as c:
        if breakage in ("corrupt", "output_name", "input_rank"):
            write_model_version(tmp_path, "tiny", 2, variant=breakage)  # type: ignore[arg-type]
        elif breakage == "sha256":
            write_model_version(tmp_path, "tiny", 2, metadata_overrides={"sha256": "0" * 64})
        elif breakage == "other_signature":
            # Valid on its own, but its input differs from the served version's.
            write_model_version(tmp_path, "tiny", 2, input_shape=(32, 32, 3))
        else:
            write_model_version(tmp_path, "tiny", 2)
            (tmp_path / "tiny" / "2" / "metadata.json").write_text("{not json")
        c.portal.call(c.app.state.models.sync)  # type: ignore[attr-defined]
        result = infer(c, "/v2/models/tiny/infer")
        assert result["model_version"] == "1"
        np.testing.assert_allclose(probabilities(result), v1.reference(IMAGES), atol=1e-5)
        assert load_results(c, "tiny") == {"ok": 1.0, "error": 1.0}
        index = {(r["version"], r["state"]) for r in c.post("/v2/repository/index").json()}
        assert index == {("1", "READY"), ("2", "UNAVAILABLE")}
        # The watcher does not retry an unchanged broken version on every scan.
        c.portal.call(c.app.state.models.sync)  # type: ignore[attr-defined]
        assert load_results(c, "tiny") == {"ok": 1.0, "error": 1.0}


def test_half_written_version_is_refused_reported_once_then_loaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_model_version(tmp_path, "tiny", 1, seed=1)
    v2 = write_model_version(tmp_path / "staging", "tiny", 2, seed=2)
    with TestClient(create_app(Settings(model_repository=tmp_path))) as c:
        sync = c.app.state.models.sync  # type: ignore[attr-defined]
        half = tmp_path / "tiny" / "2"
        half.mkdir()
        shutil.copy(v2.path / "model.onnx", half / "model.onnx")  # written in place, metadata not yet
        (tmp_path / "tiny" / ".tmp-abc").mkdir()  # a publisher's temporary directory: not a version
        c.portal.call(sync)
        c.portal.call(sync)
        assert infer(c, "/v2/models/tiny/infer")["model_version"] == "1"
        assert load_results(c, "tiny") == {"ok": 1.0, "error": 1.0}  # reported once, not per scan
        assert "tiny/2: incomplete (missing metadata.json)" in caplog.text
        shutil.copy(v2.path / "metadata.json", half / "metadata.json")  # the writer finishes
        c.portal.call(sync)
        result = infer(c, "/v2/models/tiny/infer")
        assert result["model_version"] == "2"
        np.testing.assert_allclose(probabilities(result), v2.reference(IMAGES), atol=1e-5)
        assert load_results(c, "tiny") == {"ok": 2.0, "error": 1.0}


def test_queued_requests_finish_on_the_old_version(tmp_path: Path) -> None:
    v1 = write_model_version(tmp_path, "tiny", 1, seed=1)
    # With the fixed wait, batches wait for 16 rows (or 10 s): requests stay queued on version 1 until it
    # is retired, and the retirement drains them through version 1's own session.
    settings = Settings(
        model_repository=tmp_path, max_batch_size=16, max_queue_delay_us=10_000_000, batch_wait="fixed"
    )
    with TestClient(create_app(settings)) as c:
        registry = c.app.state.models  # type: ignore[attr-defined]
        old = registry.get("tiny")
        results: list[dict[str, object]] = []
        threads = [
            threading.Thread(target=lambda: results.append(infer(c, "/v2/models/tiny/infer")))
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        for _ in range(2000):
            if old.batcher.queue_rows == 8:
                break
            threading.Event().wait(0.005)
        assert old.batcher.queue_rows == 8  # 2 requests x 4 rows, still queued
        write_model_version(tmp_path, "tiny", 2, seed=2)
        c.portal.call(registry.sync)
        for t in threads:
            t.join(timeout=30)
        assert [r["model_version"] for r in results] == ["1", "1"]
        for r in results:
            np.testing.assert_allclose(probabilities(r), v1.reference(IMAGES), atol=1e-5)


def test_a_request_that_chose_the_old_version_before_a_swap_is_computed(tmp_path: Path) -> None:
    """A request resolves its version, then reads its body; a swap in between must not refuse it."""
    v1 = write_model_version(tmp_path, "tiny", 1, seed=1)
    with TestClient(create_app(Settings(model_repository=tmp_path))) as c:
        core, registry = c.app.state.core, c.app.state.models  # type: ignore[attr-defined]
        old = registry.get("tiny")

        async def swap_while_the_body_arrives() -> InferResponse:
            async with core.call("tiny") as call:  # version 1 chosen; the body is still arriving
                write_model_version(tmp_path, "tiny", 2, seed=2)
                await registry.sync()  # version 2 swapped in, version 1 retired
                assert registry.get("tiny").version == 2
                for _ in range(20):  # let the retirement run as far as it will
                    await asyncio.sleep(0)
                return await call.infer(InferRequest(inputs={"image": IMAGES}))  # type: ignore[no-any-return]

        response = c.portal.call(swap_while_the_body_arrives)
        assert response.version == 1
        np.testing.assert_allclose(response.outputs["probabilities"], v1.reference(IMAGES), atol=1e-5)
        # Once no request holds it, the retired version stops.
        for _ in range(2000):
            if not old.batcher.accepting:
                break
            threading.Event().wait(0.005)
        assert not old.batcher.accepting


def test_model_without_versions_is_not_ready(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    write_model_version(tmp_path, "tiny", 1)
    with TestClient(create_app(Settings(model_repository=tmp_path))) as c:
        ready = c.get("/v2/health/ready")
        assert ready.status_code == 503 and "empty" in ready.json()["error"]
        assert c.get("/v2/models/empty").status_code == 503
        write_model_version(tmp_path, "empty", 1)
        c.portal.call(c.app.state.models.sync)  # type: ignore[attr-defined]
        assert c.get("/v2/health/ready").status_code == 200


def test_missing_repository_is_reported_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with TestClient(create_app(Settings(model_repository=tmp_path / "nowhere"))) as c:
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/models/anything").status_code == 404
    assert "does not exist" in caplog.text


def test_configured_model_missing_keeps_server_unready(tmp_path: Path) -> None:
    write_model_version(tmp_path, "tiny", 1)
    with TestClient(create_app(Settings(model_repository=tmp_path, models=["tiny", "absent"]))) as c:
        ready = c.get("/v2/health/ready")
        assert ready.status_code == 503 and "absent" in ready.json()["error"]
        assert infer(c, "/v2/models/tiny/infer")["model_version"] == "1"


def test_model_failing_at_run_time_is_500_and_isolated(tmp_path: Path) -> None:
    good = write_model_version(tmp_path, "good", 1)
    trap = write_model_version(tmp_path, "fragile", 1, variant="value_trap")
    dim = np.random.default_rng(3).uniform(0, 50, size=(2, 28, 28, 1)).astype(np.float32)
    with TestClient(create_app(Settings(model_repository=tmp_path))) as c:
        np.testing.assert_allclose(
            probabilities(infer(c, "/v2/models/fragile/infer", dim)), trap.reference(dim), atol=1e-5
        )
        body = {
            "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 28, 28, 1], "data": [255.0] * 784}]
        }
        failed = c.post("/v2/models/fragile/infer", content=orjson.dumps(body))
        assert failed.status_code == 500
        assert failed.json() == {"error": "inference failed"}  # generic: no onnxruntime internals
        # The model keeps serving what it can, and other models are unaffected.
        np.testing.assert_allclose(
            probabilities(infer(c, "/v2/models/fragile/infer", dim)), trap.reference(dim), atol=1e-5
        )
        np.testing.assert_allclose(
            probabilities(infer(c, "/v2/models/good/infer")), good.reference(IMAGES), atol=1e-5
        )
        text = c.get("/metrics").text
        assert (
            'inference_requests_total{model="fragile",protocol="http",status="error",version="1"} 1.0' in text
        )


def test_corrupt_version_at_start_is_reported(tmp_path: Path) -> None:
    write_model_version(tmp_path, "tiny", 1, variant="corrupt")
    write_model_version(tmp_path, "other", 1)
    with TestClient(create_app(Settings(model_repository=tmp_path))) as c:
        assert load_results(c, "tiny") == {"ok": 0.0, "error": 1.0}
        assert infer(c, "/v2/models/other/infer")["model_version"] == "1"
        assert c.get("/v2/health/ready").status_code == 503


@pytest.mark.parametrize("compute", ["thread", "process", "auto"])
def test_a_version_that_fails_its_warm_up_is_refused(
    tmp_path: Path, compute: str, caplog: pytest.LogCaptureFixture
) -> None:
    write_model_version(tmp_path, "tiny", 1, variant="batch_one_only")  # batches of 2 and more fail
    write_model_version(tmp_path, "other", 1)
    with TestClient(create_app(Settings(model_repository=tmp_path, compute=compute))) as c:
        assert load_results(c, "tiny") == {"ok": 0.0, "error": 1.0}
        assert infer(c, "/v2/models/other/infer")["model_version"] == "1"
    assert any("tiny/1: warm-up failed: " in r.getMessage() for r in caplog.records), caplog.text


@pytest.mark.parametrize(("budget", "models", "per_session"), [(4, 2, 2), (4, 3, 1), (2, 4, 1), (1, 1, 1)])
@pytest.mark.parametrize("compute", ["process", "thread"])
def test_one_thread_budget_divided_among_the_models(
    tmp_path: Path, budget: int, models: int, per_session: int, compute: str
) -> None:
    for i in range(models):
        write_model_version(tmp_path, f"m{i}", 1, seed=i)
    settings = Settings(model_repository=tmp_path, intra_op_threads=budget, compute=compute)
    with TestClient(create_app(settings)) as c:
        registry = c.app.state.models  # type: ignore[attr-defined]
        assert registry.threads == budget
        served = [registry.get(f"m{i}") for i in range(models)]
        for version in served:  # in a child process, as its session reported it
            assert version.runtime.intra_op_threads == per_session
        if compute == "thread":  # every batcher computes on the one executor of `budget` workers
            executors = {id(version.batcher._executor) for version in served}
            assert len(executors) == 1
            assert served[0].batcher._executor._max_workers == budget  # type: ignore[attr-defined]
        else:  # each version in a process of its own
            assert len({version.runtime.pid for version in served}) == models
        for i in range(models):
            assert infer(c, f"/v2/models/m{i}/infer")["model_version"] == "1"
