"""Types of service.grpc._wire, the C extension (service/grpc/_wire.c) that reads and writes ModelInfer
messages of the plain form without message objects."""

def decode_infer(
    data: bytes,
) -> tuple[str, str, str, list[tuple[str, str, list[int]]], list[str], list[bytes]] | None:
    """A serialized ModelInferRequest of the plain form as (model_name, model_version, id, inputs as
    (name, datatype, shape), output names, raw_input_contents); None for any other message (parameters,
    typed contents, unknown or repeated fields, text that is not UTF-8, malformed bytes)."""

def encode_infer(
    model_name: str, model_version: str, id: str, outputs: list[tuple[str, str, tuple[int, ...], bytes]]
) -> bytes:
    """The serialized ModelInferResponse of these outputs (name, datatype, shape, raw bytes), as protobuf's
    SerializeToString writes it."""
