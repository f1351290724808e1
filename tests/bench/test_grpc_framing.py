"""bench.grpc_framing measures real unary gRPC exchanges (h2, the service's own session), not empty loops."""

from __future__ import annotations

import h2.events

from bench import grpc_framing


def test_the_measured_exchange_is_a_complete_unary_call() -> None:
    seen: list[h2.events.Event] = []
    assert grpc_framing.h2_round(3, seen) > 0
    responses = [e for e in seen if isinstance(e, h2.events.ResponseReceived)]
    data = [e for e in seen if isinstance(e, h2.events.DataReceived)]
    trailers = [e for e in seen if isinstance(e, h2.events.TrailersReceived)]
    assert len(responses) == len(data) == len(trailers) == 3
    assert all(dict(e.headers)[b":status"] == b"200" for e in responses)
    assert all(e.data == grpc_framing.ANSWER for e in data)
    assert all(dict(e.headers)[b"grpc-status"] == b"0" for e in trailers)


def test_the_native_session_answers_the_same_complete_unary_calls() -> None:
    seen: list[h2.events.Event] = []
    assert grpc_framing.native_round(3, seen) > 0
    data = [e for e in seen if isinstance(e, h2.events.DataReceived)]
    trailers = [e for e in seen if isinstance(e, h2.events.TrailersReceived)]
    assert len(data) == len(trailers) == 3
    assert all(e.data == grpc_framing.ANSWER for e in data)  # the same bytes as the h2 server's answer
    assert all(dict(e.headers)[b"grpc-status"] == b"0" for e in trailers)


def test_the_http1_reference_parses_the_whole_request() -> None:
    assert grpc_framing.http1_round(10) > 0
    assert grpc_framing.HTTP1.endswith(b"\r\n\r\n" + b"\1" * grpc_framing.PAYLOAD)
