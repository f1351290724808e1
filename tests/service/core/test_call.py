"""service.core.call: a request to one version is counted by outcome and timed, whatever the transport."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from service import errors
from service.core import InferenceService, InferRequest, status_label
from service.errors import InvalidInput
from tests.service.core.test_service import WrittenModel, images, requests, run


@pytest.mark.parametrize(
    ("exc", "label"),
    [
        (errors.InvalidInput("x"), "bad_request"),
        (errors.PayloadTooLarge("x"), "bad_request"),
        (errors.UnsupportedMedia("x"), "bad_request"),
        (errors.NotFound("x"), "bad_request"),
        (errors.Unavailable("x"), "rejected"),
        (errors.Overloaded("x"), "rejected"),
        (errors.DeadlineExceeded("x"), "timeout"),
        (errors.InferenceFailed(), "error"),
        (RuntimeError("a bug"), "error"),
    ],
)
def test_status_labels(exc: BaseException, label: str) -> None:
    assert status_label(exc) == label


def test_decoding_inside_a_call_is_counted_and_timed(tmp_path: Path) -> None:
    async def test(core: InferenceService, model: WrittenModel) -> None:
        with pytest.raises(InvalidInput, match="bad wire format"):
            async with core.call("tiny") as call:
                assert (call.name, call.version) == ("tiny", 1)
                assert call.signature.inputs[0].shape == (-1, 28, 28, 1)
                assert call.settings is core.settings
                raise InvalidInput("bad wire format")
        with pytest.raises(RuntimeError):
            async with core.call("tiny"):
                raise RuntimeError("a transport bug")
        assert (requests(core, "bad_request"), requests(core, "error")) == (1, 1)
        count = core.metrics.registry.get_sample_value(
            "inference_request_duration_seconds_count", {"model": "tiny", "version": "1", "protocol": "http"}
        )
        assert count == 2

    run(test, tmp_path)


def test_a_call_counts_under_its_transports_protocol(tmp_path: Path) -> None:
    async def test(core: InferenceService, model: WrittenModel) -> None:
        async with core.call("tiny", protocol="grpc") as call:
            await call.infer(InferRequest({"image": images(1)}))
        with pytest.raises(InvalidInput):
            async with core.call("tiny", protocol="grpc") as call:
                await call.infer(InferRequest({"image": images(1)}, outputs=["nope"]))
        sample = core.metrics.registry.get_sample_value
        mv = {"model": "tiny", "version": "1"}
        assert sample("inference_requests_total", {**mv, "status": "ok", "protocol": "grpc"}) == 1
        assert sample("inference_requests_total", {**mv, "status": "bad_request", "protocol": "grpc"}) == 1
        assert requests(core, "ok") == 0  # nothing under http

    run(test, tmp_path)


def test_the_one_call_helpers_count_under_the_given_protocol(tmp_path: Path) -> None:
    async def test(core: InferenceService, model: WrittenModel) -> None:
        await core.infer("tiny", InferRequest({"image": images(1)}), protocol="grpc")
        await core.infer("tiny", InferRequest({"image": images(1)}))
        sample = core.metrics.registry.get_sample_value
        mv = {"model": "tiny", "version": "1", "status": "ok"}
        assert sample("inference_requests_total", {**mv, "protocol": "grpc"}) == 1
        assert sample("inference_requests_total", {**mv, "protocol": "http"}) == 1

    run(test, tmp_path)


def test_a_request_cancelled_after_its_deadline_counts_as_a_timeout(tmp_path: Path) -> None:
    # What a gRPC deadline does: grpcio cancels the handler once the client's deadline has passed.
    async def test(core: InferenceService, model: WrittenModel) -> None:
        entered = asyncio.Event()

        async def past_deadline_then_wait() -> None:
            async with core.call("tiny", protocol="grpc") as call:
                call._deadline(None, time.monotonic() - 1)  # the deadline the request was given, already over
                entered.set()
                await asyncio.Event().wait()  # until cancelled

        task = asyncio.create_task(past_deadline_then_wait())
        await asyncio.wait_for(entered.wait(), timeout=30)  # the bound only ends a failure
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        sample = core.metrics.registry.get_sample_value
        labels = {"model": "tiny", "version": "1", "status": "timeout", "protocol": "grpc"}
        assert sample("inference_requests_total", labels) == 1

    run(test, tmp_path)


def test_a_cancelled_request_is_not_counted(tmp_path: Path) -> None:
    async def test(core: InferenceService, model: WrittenModel) -> None:
        entered = asyncio.Event()

        async def enter_and_wait() -> None:
            async with core.call("tiny"):
                entered.set()
                await asyncio.Event().wait()  # until cancelled

        task = asyncio.create_task(enter_and_wait())
        await asyncio.wait_for(entered.wait(), timeout=30)  # the bound only ends a failure
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sum(requests(core, s) for s in ("ok", "bad_request", "rejected", "timeout", "error")) == 0

    run(test, tmp_path)


def test_checked_requests_skip_the_second_check(tmp_path: Path) -> None:
    async def test(core: InferenceService, model: WrittenModel) -> None:
        x = images(2)
        async with core.call("tiny") as call:
            # A transport that checked these already (as the HTTP parser does) vouches for them.
            response = await call.infer(InferRequest({"image": x}, outputs=["probabilities"], checked=True))
        np.testing.assert_allclose(response.outputs["probabilities"], model.reference(x), atol=1e-5)
        with pytest.raises(InvalidInput, match="unknown output 'nope'"):
            await core.infer("tiny", InferRequest({"image": x}, outputs=["nope"]))

    run(test, tmp_path)
