"""The inference core on its own: typed requests in, typed answers or one error out, no transport.

This is what a second transport (gRPC) builds on: every case here is reachable without HTTP.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

from service.core import ClassifyRequest, InferenceService, InferRequest
from service.errors import (
    DeadlineExceeded,
    Forbidden,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
)
from service.settings import Settings
from service.telemetry.metrics import Metrics
from tests.helpers.modelfactory import WrittenModel, write_model_version
from tests.helpers.waiting import eventually

T = TypeVar("T")
TOKEN = "an-admin-token-for-tests"


def images(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 50, (rows, 28, 28, 1)).astype(np.float32)


def run(
    test: Callable[[InferenceService, WrittenModel], Awaitable[T]], tmp_path: Path, **overrides: object
) -> T:
    """Start a core on a one-model repository, run ``test`` against it, stop it."""
    model = write_model_version(tmp_path, "tiny", 1, labels=[f"c{i}" for i in range(10)])
    settings = Settings(model_repository=tmp_path, max_queue_delay_us=0, **overrides)  # type: ignore[arg-type]

    async def main() -> T:
        core = InferenceService(settings, Metrics(CollectorRegistry()))
        await core.start()
        try:
            return await test(core, model)
        finally:
            await core.stop()

    return asyncio.run(main())


def requests(core: InferenceService, status: str) -> float:
    value = core.metrics.registry.get_sample_value(
        "inference_requests_total", {"model": "tiny", "version": "1", "status": status, "protocol": "http"}
    )
    return value or 0.0


def test_infer_returns_the_models_numbers(tmp_path: Path) -> None:
    async def test(core: InferenceService, model: WrittenModel) -> None:
        x = images(5)
        response = await core.infer("tiny", InferRequest({"image": x}, id="r1"))
        assert (response.model, response.version, response.id) == ("tiny", 1, "r1")
        assert [s.name for s in response.specs] == ["probabilities"]
        np.testing.assert_allclose(response.outputs["probabilities"], model.reference(x), atol=1e-5)
        uint8 = await core.infer("tiny", InferRequest({"image": x.astype(np.uint8)}), version=1)
        np.testing.assert_allclose(
            uint8.outputs["probabilities"], model.reference(x.astype(np.uint8).astype(np.float32)), atol=1e-5
        )
        assert requests(core, "ok") == 2

    run(test, tmp_path)


def test_requested_outputs_and_unknown_ones(tmp_path: Path) -> None:
    async def test(core: InferenceService, model: WrittenModel) -> None:
        chosen = await core.infer("tiny", InferRequest({"image": images(1)}, outputs=["probabilities"]))
        assert list(chosen.outputs) == ["probabilities"]
        with pytest.raises(InvalidInput, match="unknown output 'logits'"):
            await core.infer("tiny", InferRequest({"image": images(1)}, outputs=["logits"]))
        assert requests(core, "bad_request") == 1

    run(test, tmp_path)


@pytest.mark.parametrize(
    ("inputs", "error", "fragment"),
    [
        ({"pixels": images(1)}, InvalidInput, "unknown input 'pixels'"),
        ({}, InvalidInput, "missing input 'image'"),
        ({"image": images(1).astype(np.int64)}, InvalidInput, "expected datatype FP32 (or UINT8), got INT64"),
        ({"image": images(1)[:, :, :20]}, InvalidInput, "expected shape [-1,28,28,1], got [1,28,20,1]"),
        ({"image": np.full((1, 28, 28, 1), np.nan, np.float32)}, InvalidInput, "non-finite"),
        ({"image": images(9)}, PayloadTooLarge, "request has 9 rows; the limit is 8"),
    ],
)
def test_inputs_that_do_not_fit_the_signature(
    tmp_path: Path, inputs: dict[str, np.ndarray], error: type[Exception], fragment: str
) -> None:
    async def test(core: InferenceService, model: WrittenModel) -> None:
        with pytest.raises(error) as caught:
            await core.infer("tiny", InferRequest(inputs))
        assert fragment in str(caught.value)
        assert requests(core, "bad_request") == 1

    run(test, tmp_path, max_request_rows=8)


def test_unknown_models_and_versions_are_not_counted(tmp_path: Path) -> None:
    async def test(core: InferenceService, model: WrittenModel) -> None:
        with pytest.raises(NotFound, match="unknown model 'nope'"):
            await core.infer("nope", InferRequest({"image": images(1)}))
        with pytest.raises(NotFound, match="no served version 7"):
            core.call("tiny", 7)
        assert sum(requests(core, s) for s in ("ok", "bad_request", "rejected", "error")) == 0

    run(test, tmp_path)


def test_a_passed_deadline_is_answered_without_computing(tmp_path: Path) -> None:
    async def test(core: InferenceService, model: WrittenModel) -> None:
        with pytest.raises(DeadlineExceeded):
            await core.infer("tiny", InferRequest({"image": images(1)}, deadline=time.monotonic() - 1))
        assert requests(core, "timeout") == 1
        stats = core.statistics("tiny")[0].stats
        assert stats.execution_count == 0 and stats.fail.count == 1

    run(test, tmp_path)


def test_draining_refuses_new_requests_and_readiness(tmp_path: Path) -> None:
    async def test(core: InferenceService, model: WrittenModel) -> None:
        core.check_ready()
        assert core.check_model_ready("tiny") == ("tiny", 1)
        deadline = core.begin_drain()
        assert core.draining and deadline > time.monotonic()
        assert core.begin_drain() == deadline  # a second signal keeps the first deadline
        with pytest.raises(Unavailable, match="server is draining") as caught:
            await core.infer("tiny", InferRequest({"image": images(1)}))
        assert caught.value.retry_after_s == 1
        with pytest.raises(Unavailable, match="draining"):
            core.check_ready()
        with pytest.raises(Unavailable, match="draining"):
            core.check_model_ready("tiny")
        assert requests(core, "rejected") == 1
        assert core.pending() == 0
        await core.stop_admitting_and_flush()

    run(test, tmp_path)


def test_metadata_statistics_and_index(tmp_path: Path) -> None:
    async def test(core: InferenceService, model: WrittenModel) -> None:
        info = core.model_info("tiny")
        assert (info.name, info.version, info.versions, info.platform) == (
            "tiny",
            1,
            (1,),
            "onnxruntime_onnx",
        )
        assert info.labels == tuple(f"c{i}" for i in range(10))
        assert (info.preprocessing.height, info.preprocessing.color) == (28, "grayscale")
        assert info.provider == "CPUExecutionProvider" and info.max_batch_size == 32
        assert core.server_info().extensions[0] == "binary_tensor_data"
        await core.infer("tiny", InferRequest({"image": images(3)}))
        [row] = core.statistics()
        assert (row.name, row.version, row.stats.inference_count) == ("tiny", 1, 3)
        assert core.statistics("tiny", 1) == [row]
        [entry] = core.repository_index()
        assert (entry.name, entry.version, entry.state) == ("tiny", 1, "READY")

    run(test, tmp_path)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8).squeeze()).save(buffer, format="PNG")
    return buffer.getvalue()


def test_classify_ranks_the_classes(tmp_path: Path) -> None:
    async def test(core: InferenceService, model: WrittenModel) -> None:
        image = images(1)[0].round()
        answer = await core.classify("tiny", ClassifyRequest([png(image)], top_k=4))
        assert (answer.model, answer.version, len(answer.results)) == ("tiny", 1, 1)
        [result] = answer.results
        assert (len(result.predictions), result.filename, result.input) == (4, None, None)
        expected = model.reference(image[None])[0]
        top = result.predictions[0]
        assert top.class_id == int(expected.argmax()) and top.label == f"c{top.class_id}"
        assert top.probability == pytest.approx(float(expected.max()), abs=1e-5)
        probabilities = [p.probability for p in result.predictions]
        assert probabilities == sorted(probabilities, reverse=True)
        with pytest.raises(InvalidInput, match="top_k"):
            await core.classify("tiny", ClassifyRequest([png(image)], top_k=0))
        with pytest.raises(InvalidInput, match="empty image"):
            await core.classify("tiny", ClassifyRequest([b""]))

    run(test, tmp_path)


def test_classify_several_images_in_order_as_one_request(tmp_path: Path) -> None:
    async def test(core: InferenceService, model: WrittenModel) -> None:
        x = images(3, seed=5).round()
        request = ClassifyRequest(
            [png(i) for i in x], top_k=10, return_input=True, filenames=["a.png", None, "c.png"]
        )
        answer = await core.classify("tiny", request)
        assert [r.filename for r in answer.results] == ["a.png", None, "c.png"]
        expected = model.reference(x)
        for result, image, row in zip(answer.results, x, expected, strict=True):
            assert result.input is not None
            np.testing.assert_array_equal(result.input, image)  # stretch at the model's size: the pixels
            by_class = {p.class_id: p.probability for p in result.predictions}
            np.testing.assert_allclose([by_class[i] for i in range(10)], row, atol=1e-5)
        rows = core.metrics.registry.get_sample_value(
            "inference_rows_total", {"model": "tiny", "version": "1"}
        )
        assert (requests(core, "ok"), rows) == (1, 3)
        with pytest.raises(PayloadTooLarge, match="more than 3 images in one request"):
            await core.classify("tiny", ClassifyRequest([png(i) for i in x] + [png(x[0])]))
        with pytest.raises(InvalidInput, match="image 2 of 2 is empty"):
            await core.classify("tiny", ClassifyRequest([png(x[0]), b""]))
        with pytest.raises(InvalidInput, match="no image"):
            await core.classify("tiny", ClassifyRequest([]))
        with pytest.raises(InvalidInput, match="1 file names for 2 images"):
            await core.classify("tiny", ClassifyRequest([png(x[0])] * 2, filenames=["a.png"]))

    run(test, tmp_path, max_request_rows=3)


@pytest.mark.parametrize(
    ("token", "authorization", "error", "fragment"),
    [
        (None, f"Bearer {TOKEN}", Forbidden, "disabled"),
        (TOKEN, None, Unauthorized, "missing bearer token"),
        (TOKEN, f"Basic {TOKEN}", Unauthorized, "expected 'Authorization: Bearer <token>'"),
        (TOKEN, "Bearer wrong-token-of-some-length", Forbidden, "invalid admin token"),
    ],
)
def test_admin_credentials(
    tmp_path: Path, token: str | None, authorization: str | None, error: type[Exception], fragment: str
) -> None:
    async def test(core: InferenceService, model: WrittenModel) -> None:
        with pytest.raises(error, match=fragment):
            core.authorize_admin(authorization)

    run(test, tmp_path, admin_token=token)


def test_admin_unload_and_load(tmp_path: Path) -> None:
    async def test(core: InferenceService, model: WrittenModel) -> None:
        core.authorize_admin(f"bearer {TOKEN}")
        await core.unload("tiny")
        with pytest.raises(NotFound):
            core.call("tiny")
        with pytest.raises(NotFound):
            await core.unload("tiny")
        assert await core.load("tiny") == [1]
        await core.infer("tiny", InferRequest({"image": images(1)}))

    run(test, tmp_path, admin_token=TOKEN)


def test_background_start_is_live_before_ready(tmp_path: Path) -> None:
    write_model_version(tmp_path, "tiny", 1)

    async def main() -> None:
        core = InferenceService(Settings(model_repository=tmp_path), Metrics(CollectorRegistry()))
        await core.start(background=True)
        with pytest.raises(Unavailable, match="still loading"):
            core.check_ready()
        await eventually(lambda: bool(core.registry.loaded), "the background load")
        core.check_ready()
        await core.stop()
        with pytest.raises(Unavailable, match="draining"):
            core.check_ready()

    asyncio.run(main())


def test_a_core_that_was_never_started(tmp_path: Path) -> None:
    core = InferenceService(Settings(model_repository=tmp_path), Metrics(CollectorRegistry()))
    with pytest.raises(Unavailable, match="still loading"):
        core.check_ready()
    with pytest.raises(Unavailable, match="still loading"):
        core.call("tiny")
    assert core.pending() == 0
    with pytest.raises(RuntimeError, match="not been started"):
        _ = core.registry
