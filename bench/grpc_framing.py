"""What HTTP/2 framing alone costs per unary gRPC call, in Python and in C, beside HTTP/1.1 parsing in C.

``python -m bench.grpc_framing`` answers the question behind the gRPC target of ``docs/hotpath.md``:
could a gRPC front end that does its own HTTP/2 framing in Python (the ``h2`` library, the only
maintained pure-Python HTTP/2 stack), instead of grpcio's server, beat the HTTP path? It measures, in
process and in CPU time, the server side of one unary ``ModelInfer`` exchange done by ``h2`` (receive the
HEADERS and DATA frames of a one-image request, answer HEADERS, DATA and trailers, with flow-control
acknowledgements), beside ``httptools`` parsing the same request as HTTP/1.1 (what uvicorn pays before
the application runs), and beside the service's own session (``service.grpc._h2`` over libnghttp2, what
the native gRPC listener runs). No model, no protobuf: framing only. Medians of ``--rounds`` alternating
rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import h2.config
import h2.connection
import h2.events
import httptools

from service.grpc import _h2

PAYLOAD = 3200  # a 28x28 FP32 image as raw input contents, about what a one-image request carries
REQUEST_HEADERS = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", "/inference.GRPCInferenceService/ModelInfer"),
    (":authority", "127.0.0.1:8001"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
    ("user-agent", "grpc-python/1.85"),
]
MESSAGE = b"\0" + PAYLOAD.to_bytes(4, "big") + b"\1" * PAYLOAD
ANSWER = b"\0" + (88).to_bytes(4, "big") + b"\2" * 88  # an OK ModelInferResponse's size here
HTTP1 = (
    b"POST /v2/models/mnist-cnn/infer HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: hey/0.0.1\r\n"
    b"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: 164\r\n"
    b"Content-Length: " + str(PAYLOAD).encode() + b"\r\n\r\n" + b"\1" * PAYLOAD
)


def h2_round(calls: int, seen: list[h2.events.Event] | None = None) -> float:
    """CPU seconds per call spent by the server side of ``calls`` exchanges on one connection; the
    client's events are appended to ``seen`` when given (the test checks the exchange is a real one)."""
    client = _client()
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, validate_inbound_headers=False)
    )
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())

    def serve(wire: bytes) -> bytes:
        for event in server.receive_data(wire):
            if isinstance(event, h2.events.DataReceived):
                server.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                server.send_headers(
                    event.stream_id, [(":status", "200"), ("content-type", "application/grpc")]
                )
                server.send_data(event.stream_id, ANSWER)
                server.send_headers(event.stream_id, [("grpc-status", "0")], end_stream=True)
        return server.data_to_send()

    return _exchanges(calls, client, serve, seen)


def native_round(calls: int, seen: list[h2.events.Event] | None = None) -> float:
    """As :func:`h2_round`, with the service's own session (``service.grpc._h2``, libnghttp2) as the
    server: feed the request's bytes, answer the call, take the bytes to send."""
    client = _client()
    server = _h2.Session(4 << 20)
    server.feed(client.data_to_send())
    client.receive_data(server.data_to_send())
    end, trailers = _h2.END, [(b"grpc-status", b"0")]
    payload = ANSWER[5:]  # the session writes the 5-byte prefix itself

    def serve(wire: bytes) -> bytes:
        for event in server.feed(wire):
            if event[0] == end:
                server.unary(event[1], payload, trailers)
        return server.data_to_send()

    return _exchanges(calls, client, serve, seen)


def _client() -> h2.connection.H2Connection:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    return client


def _exchanges(
    calls: int,
    client: h2.connection.H2Connection,
    serve: Callable[[bytes], bytes],
    seen: list[h2.events.Event] | None,
) -> float:
    """``calls`` unary exchanges: the client's bytes (its flow-control acknowledgements of the last
    answer included) go to ``serve``, whose CPU time alone is measured, and its answer back."""
    spent = 0.0
    for _ in range(calls):
        stream = client.get_next_available_stream_id()
        client.send_headers(stream, REQUEST_HEADERS)
        client.send_data(stream, MESSAGE, end_stream=True)
        wire = client.data_to_send()
        started = time.process_time()
        answer = serve(wire)
        spent += time.process_time() - started
        for event in client.receive_data(answer):
            if seen is not None:
                seen.append(event)
            if isinstance(event, h2.events.DataReceived):
                client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
    return spent / calls


class _Sink:
    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        pass

    def on_body(self, body: bytes) -> None:
        pass


def http1_round(calls: int) -> float:
    """CPU seconds per request for httptools to parse ``calls`` keep-alive requests."""
    parser = httptools.HttpRequestParser(_Sink())
    started = time.process_time()
    for _ in range(calls):
        parser.feed_data(HTTP1)
    return (time.process_time() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    h2_costs, native_costs, http1_costs = [], [], []
    for _ in range(args.rounds):
        h2_costs.append(h2_round(args.calls))
        native_costs.append(native_round(args.calls))
        http1_costs.append(http1_round(args.calls))
    h2_us, http1_us = statistics.median(h2_costs) * 1e6, statistics.median(http1_costs) * 1e6
    native_us = statistics.median(native_costs) * 1e6
    print(f"h2, server side of a unary gRPC exchange: {h2_us:.1f} us per call")
    print(f"service.grpc._h2 (libnghttp2), the same exchange: {native_us:.1f} us per call")
    print(f"httptools, parsing the same request as HTTP/1.1: {http1_us:.1f} us per request")
    print(f"framing alone: h2 costs {h2_us / http1_us:.0f}x httptools, ", end="")
    print(f"the service's session {native_us / http1_us:.1f}x")


if __name__ == "__main__":
    main()
