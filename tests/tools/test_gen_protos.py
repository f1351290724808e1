"""The checked-in gRPC code is what the pinned grpcio-tools makes from the checked-in protos, and it loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2

from tools import gen_protos

ROOT = Path(__file__).resolve().parents[2]


def test_regenerating_gives_the_checked_in_files(tmp_path: Path) -> None:
    written = gen_protos.generate(tmp_path)
    assert {p.name for p in written} == {
        "__init__.py",
        "grpc_service_pb2.py",
        "grpc_service_pb2.pyi",
        "grpc_service_pb2_grpc.py",
        "model_config_pb2.py",
        "model_config_pb2.pyi",
        "model_config_pb2_grpc.py",
    }
    assert gen_protos.differences(tmp_path, gen_protos.GENERATED) == []


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    gen_protos.generate(fresh)
    stale = tmp_path / "stale"
    stale.mkdir()
    for path in fresh.iterdir():
        (stale / path.name).write_bytes(path.read_bytes())
    (stale / "grpc_service_pb2.py").write_text("# edited by hand\n")
    (stale / "model_config_pb2.pyi").unlink()
    assert gen_protos.differences(fresh, stale) == ["grpc_service_pb2.py", "model_config_pb2.pyi"]


def test_the_generated_code_passes_its_version_checks_without_warnings() -> None:
    # A fresh interpreter, every warning an error: protobuf's gencode/runtime check and grpcio's
    # generated-version check both run at import.
    code = (
        "import service.grpc.generated.grpc_service_pb2_grpc as g, google.protobuf, grpc;"
        "print(g.GRPC_GENERATED_VERSION, google.protobuf.__version__, grpc.__version__)"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    generated, protobuf, grpcio = done.stdout.split()
    assert generated == gen_protos.GRPCIO_TOOLS
    header = (gen_protos.GENERATED / "grpc_service_pb2.py").read_text()
    assert "# Protobuf Python Version: 7.35.1" in header
    assert tuple(map(int, protobuf.split(".")[:2])) >= (7, 35)
    assert tuple(map(int, grpcio.split(".")[:2])) >= (1, 85)


def test_tritons_health_proto_matches_the_standard_health_service(tmp_path: Path) -> None:
    # health.proto is kept but not compiled: grpcio-health-checking serves grpc.health.v1. Their Check
    # must be the same on the wire.
    out = tmp_path / "health.pb"
    gen_protos.protoc(f"--descriptor_set_out={out}", str(gen_protos.PROTOS / "health.proto"))
    [triton] = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    standard = descriptor_pb2.FileDescriptorProto()
    health_pb2.DESCRIPTOR.CopyToProto(standard)
    assert triton.package == standard.package == "grpc.health.v1"

    def fields(file: descriptor_pb2.FileDescriptorProto, message: str) -> list[tuple[str, int, int]]:
        [msg] = [m for m in file.message_type if m.name == message]
        return [(f.name, f.number, f.type) for f in msg.field]

    for message in ("HealthCheckRequest", "HealthCheckResponse"):
        assert fields(triton, message) == fields(standard, message)
    [triton_enum] = next(m for m in triton.message_type if m.name == "HealthCheckResponse").enum_type
    [standard_enum] = next(m for m in standard.message_type if m.name == "HealthCheckResponse").enum_type
    triton_values = [(v.name, v.number) for v in triton_enum.value]
    assert triton_values == [(v.name, v.number) for v in standard_enum.value][: len(triton_values)]
    [check] = [m for m in triton.service[0].method if m.name == "Check"]
    assert (check.input_type, check.output_type) == (
        ".grpc.health.v1.HealthCheckRequest",
        ".grpc.health.v1.HealthCheckResponse",
    )
