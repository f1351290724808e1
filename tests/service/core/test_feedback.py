"""The core's feedback operation without a transport: checks in order, what it stores, what it counts."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

from service.core import ClassifyRequest, InferenceService
from service.core.feedback import authorize, image_extension, reason_of
from service.errors import (
    Forbidden,
    InsufficientStorage,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    Unavailable,
    UnsupportedMedia,
)
from service.feedback.store import FeedbackStore, QuotaFull, log_path, read_log
from service.settings import Settings
from service.telemetry.metrics import Metrics
from tests.helpers.modelfactory import write_model_version

T = TypeVar("T")
TOKEN = "a-feedback-token-for-tests"
BEARER = f"Bearer {TOKEN}"
LABELS = [f"c{i}" for i in range(10)]


def png(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 60, (28, 28), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def run(test: Callable[[InferenceService], Awaitable[T]], tmp_path: Path, **overrides: object) -> T:
    write_model_version(tmp_path / "models", "tiny", 1, labels=LABELS)
    values: dict[str, object] = {
        "model_repository": tmp_path / "models",
        "max_queue_delay_us": 0,
        "feedback_dir": tmp_path / "feedback",
        "feedback_token": TOKEN,
    }
    values.update(overrides)
    settings = Settings(**values)  # type: ignore[arg-type]

    async def main() -> T:
        core = InferenceService(settings, Metrics(CollectorRegistry()))
        await core.start()
        try:
            return await test(core)
        finally:
            await core.stop()

    return asyncio.run(main())


def counted(core: InferenceService, label: str, result: str) -> float:
    value = core.metrics.registry.get_sample_value(
        "feedback_items_total", {"model": "tiny", "label": label, "result": result}
    )
    return value or 0.0


def test_a_submitted_image_is_classified_then_stored(tmp_path: Path) -> None:
    async def test(core: InferenceService) -> None:
        classified = await core.classify("tiny", ClassifyRequest([png()], 1))
        async with core.feedback_call("tiny", None, BEARER, "c3") as call:
            receipt = await call.submit(png())
        assert (receipt.model, receipt.version, receipt.label) == ("tiny", 1, "c3")
        assert receipt.predicted == classified.results[0].predictions[0].label
        assert counted(core, "c3", "accepted") == 1
        assert core.model_info("tiny").feedback is True

    run(test, tmp_path)
    (item,) = read_log(log_path(tmp_path / "feedback", "tiny")).items
    assert (tmp_path / "feedback" / item.file).read_bytes() == png()
    assert item.file == f"tiny/c3/{item.id}.png"


def test_the_classification_is_counted_under_the_callers_protocol(tmp_path: Path) -> None:
    async def test(core: InferenceService) -> None:
        async with core.feedback_call("tiny", None, BEARER, "c3", protocol="grpc") as call:
            await call.submit(png())
        async with core.feedback_call("tiny", None, BEARER, "c3") as call:
            await call.submit(png())
        sample = core.metrics.registry.get_sample_value
        labels = {"model": "tiny", "version": "1", "status": "ok"}
        assert sample("inference_requests_total", {**labels, "protocol": "grpc"}) == 1
        assert sample("inference_requests_total", {**labels, "protocol": "http"}) == 1

    run(test, tmp_path)


@pytest.mark.parametrize(
    ("authorization", "label", "error", "result"),
    [
        (None, "c1", Unauthorized, "unauthorized"),
        ("Bearer wrong-token-wrong-token", "c1", Forbidden, "unauthorized"),
        (BEARER, "nope", InvalidInput, "bad_label"),
    ],
)
def test_refusals_before_the_body_is_read(
    tmp_path: Path, authorization: str | None, label: str, error: type[ServiceError], result: str
) -> None:
    async def test(core: InferenceService) -> None:
        read = False
        with pytest.raises(error):
            async with core.feedback_call("tiny", None, authorization, label) as call:
                read = True  # the transport would read the body here
                await call.submit(png())
        assert not read
        assert counted(core, label if label in LABELS else "", result) == 1

    run(test, tmp_path)
    assert read_log(log_path(tmp_path / "feedback", "tiny")).items == []


def test_unknown_models_versions_and_disabled_feedback_are_not_found(tmp_path: Path) -> None:
    async def test(core: InferenceService) -> None:
        for name, version in (("nope", None), ("tiny", 7)):
            with pytest.raises(NotFound):
                core.feedback_call(name, version, BEARER, "c1")

    run(test, tmp_path)

    async def off(core: InferenceService) -> None:
        with pytest.raises(NotFound, match="feedback is not enabled"):
            core.feedback_call("tiny", None, BEARER, "c1")
        assert core.model_info("tiny").feedback is False

    run(off, tmp_path / "off", feedback_token=None)


def test_a_draining_server_takes_no_feedback(tmp_path: Path) -> None:
    async def test(core: InferenceService) -> None:
        core.begin_drain()
        with pytest.raises(Unavailable):
            async with core.feedback_call("tiny", None, BEARER, "c1") as call:
                await call.submit(png())
        assert counted(core, "c1", "unavailable") == 1

    run(test, tmp_path)


def test_the_stored_gauges_start_from_the_logs_on_disk(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "feedback", max_items=10, max_bytes=1 << 20)
    store.store("tiny", "c1", png(), "png", served_version=1, predicted="c2")

    async def test(core: InferenceService) -> None:
        registry = core.metrics.registry
        assert registry.get_sample_value("feedback_stored_items", {"model": "tiny"}) == 1
        assert registry.get_sample_value("feedback_stored_bytes", {"model": "tiny"}) == len(png())

    run(test, tmp_path)


def test_authorize() -> None:
    authorize(BEARER, TOKEN)
    authorize(f"bearer  {TOKEN} ", TOKEN)
    for header, error in ((None, Unauthorized), ("Basic x", Unauthorized), ("Bearer", Unauthorized)):
        with pytest.raises(error):
            authorize(header, TOKEN)
    with pytest.raises(Forbidden):
        authorize("Bearer " + TOKEN + "x", TOKEN)


def test_extensions_come_from_the_bytes() -> None:
    assert image_extension(png()) == "png"
    assert image_extension(b"\xff\xd8\xff\xe0 jpeg") == "jpg"
    with pytest.raises(UnsupportedMedia):
        image_extension(b"GIF89a")


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (QuotaFull("full", "quota_bytes"), "quota_bytes"),
        (InsufficientStorage("disk"), "storage_full"),
        (PayloadTooLarge("big"), "bad_image"),
        (UnsupportedMedia("gif"), "bad_image"),
        (Unavailable("draining"), "unavailable"),
        (ServiceError("feedback could not be stored"), "storage_error"),
    ],
)
def test_every_refusal_has_a_reason(error: ServiceError, reason: str) -> None:
    assert reason_of(error) == reason
