"""service.core.providers: CUDA when it really starts, else CPU, decided once and quietly."""

from __future__ import annotations

import ctypes
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from service.core import providers
from service.core.providers import CPU, CUDA, select_providers

ROOT = Path(__file__).resolve().parents[3]


def _cuda_driver_present() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def fresh_provider_cache() -> Iterator[None]:
    providers._usable.cache_clear()
    providers._default_providers.cache_clear()
    yield
    providers._usable.cache_clear()
    providers._default_providers.cache_clear()


# ---- providers ---------------------------------------------------------------------------------------


def test_probe_model_is_the_documented_identity_model() -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    assert model.SerializeToString() == providers._PROBE_MODEL
    session = ort.InferenceSession(providers._PROBE_MODEL, providers=[CPU])
    assert session.run(None, {"x": np.array([2.5], np.float32)})[0].tolist() == [2.5]


def test_default_providers_are_decided_silently() -> None:
    # onnxruntime logs from C++ straight to stderr, so only a separate process can see what it printed.
    proc = _python(
        "import json; from service.core.providers import select_providers; "
        "print(json.dumps(select_providers()))"
    )
    assert proc.returncode == 0, proc.stderr
    assert "CUDA" not in proc.stderr and "rror" not in proc.stderr, proc.stderr
    providers = json.loads(proc.stdout)
    if _cuda_driver_present():
        assert providers in ([CUDA, CPU], [CPU])
    else:
        assert providers == [CPU]


def test_cuda_probe_is_silent_even_when_it_fails() -> None:
    # Skips the driver check and asks onnxruntime directly: without a GPU (or without the CUDA libraries)
    # this is exactly the session that would print a red error with default logging.
    proc = _python("from service.core import providers; print(providers._session_starts(providers.CUDA))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    if not _cuda_driver_present():
        assert proc.stdout.strip() == "False"


def test_default_is_cpu_only_without_a_cuda_device(
    monkeypatch: pytest.MonkeyPatch, fresh_provider_cache: None
) -> None:
    monkeypatch.setattr(providers, "_cuda_device_count", lambda: 0)
    assert select_providers() == [CPU]


def test_default_puts_cuda_first_when_it_starts(
    monkeypatch: pytest.MonkeyPatch, fresh_provider_cache: None
) -> None:
    monkeypatch.setattr(providers, "_cuda_device_count", lambda: 1)
    monkeypatch.setattr(providers, "_session_starts", lambda provider: provider == CUDA)
    assert select_providers() == [CUDA, CPU]


def test_default_is_decided_once(monkeypatch: pytest.MonkeyPatch, fresh_provider_cache: None) -> None:
    calls = []

    def no_device() -> int:
        calls.append(1)
        return 0

    monkeypatch.setattr(providers, "_cuda_device_count", no_device)
    assert select_providers() == select_providers() == [CPU]
    assert len(calls) == 1


def test_explicit_cpu_request_is_honoured() -> None:
    assert select_providers(["CPUExecutionProvider"]) == [CPU]


def test_explicit_cuda_request_drops_cuda_that_cannot_start(
    monkeypatch: pytest.MonkeyPatch, fresh_provider_cache: None, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(providers, "_cuda_device_count", lambda: 0)
    with caplog.at_level(logging.WARNING, logger="service.core.providers"):
        assert select_providers([CUDA, CPU, CPU]) == [CPU]
    assert "CUDAExecutionProvider" in caplog.text
    with pytest.raises(ValueError, match="none of the requested"):
        select_providers([CUDA])


def test_unknown_provider_is_refused_with_the_available_list() -> None:
    with pytest.raises(
        ValueError, match=r"unknown execution provider.*NoSuchExecutionProvider.*available"
    ) as info:
        select_providers(["NoSuchExecutionProvider", CPU])
    assert CPU in str(info.value)
    with pytest.raises(ValueError):
        select_providers([])


class _FakeLibcuda:
    def __init__(self, init_status: int) -> None:
        self.init_status = init_status

    def cuInit(self, flags: int) -> int:
        return self.init_status


def _loader(monkeypatch: pytest.MonkeyPatch, libraries: dict[str, object]) -> None:
    """ctypes.CDLL as service.core.providers sees it: a file name in ``libraries`` gives that object or
    raises it."""
    real = ctypes.CDLL

    def cdll(name: str, *args: object, **kwargs: object) -> object:
        value = libraries.get(Path(name).name)
        if isinstance(value, OSError):
            raise value
        return real(name, *args, **kwargs) if value is None else value  # type: ignore[arg-type]

    monkeypatch.setattr(providers.ctypes, "CDLL", cdll)


def test_cuda_reason_for_the_cpu_only_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(providers.ort, "get_available_providers", lambda: [CPU])
    assert providers.cuda_unusable_reason() == (
        "this onnxruntime has no CUDAExecutionProvider (the CPU-only onnxruntime package)"
    )


@pytest.mark.parametrize(
    ("libcuda", "reason"),
    [
        (OSError("libcuda.so.1: cannot open shared object file"), "no NVIDIA driver: libcuda.so.1 cannot be"),
        (_FakeLibcuda(100), "the NVIDIA driver failed to initialise (cuInit error 100)"),
        (_FakeLibcuda(0), "no GPU found"),
    ],
    ids=["no-driver", "driver-fails", "no-gpu"],
)
def test_cuda_reason_names_what_the_driver_lacks(
    monkeypatch: pytest.MonkeyPatch, libcuda: object, reason: str
) -> None:
    monkeypatch.setattr(providers.ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(providers, "_cuda_device_count", lambda: 0)
    _loader(monkeypatch, {"libcuda.so.1": libcuda})
    found = providers.cuda_unusable_reason()
    assert found is not None and found.startswith(reason), found


def test_cuda_reason_names_the_missing_cuda_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(providers.ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(providers, "_cuda_device_count", lambda: 1)
    monkeypatch.setattr(providers, "_session_starts", lambda provider: False)
    missing = "libcufft.so.12: cannot open shared object file: No such file or directory"
    _loader(monkeypatch, {"libonnxruntime_providers_cuda.so": OSError(missing)})
    assert providers.cuda_unusable_reason() == f"its libraries cannot be loaded: {missing}"


def test_cuda_library_problem_names_a_real_library() -> None:
    # The real provider library of the installed onnxruntime-gpu: without a driver it cannot load, and
    # the loader's message names the library it could not find.
    problem = providers._cuda_library_problem()
    if _cuda_driver_present():
        assert problem.startswith(("its libraries cannot be loaded", "a session on it did not start")), (
            problem
        )
    else:
        assert re.search(r"its libraries cannot be loaded: lib[\w.+-]+\.so[.\d]*: cannot open", problem), (
            problem
        )


def test_cuda_libraries_are_preloaded_quietly_before_the_probe(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[str] = []

    def preload() -> None:
        calls.append("preload")
        print("Failed to load libcublasLt.so.13")  # what onnxruntime prints for a library it lacks

    monkeypatch.setattr(providers.ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(providers.ort, "preload_dlls", preload)
    monkeypatch.setattr(providers, "_cuda_device_count", lambda: 1)
    monkeypatch.setattr(providers, "_session_starts", lambda provider: calls.append("probe") or True)
    assert providers.cuda_unusable_reason() is None
    assert calls == ["preload", "probe"]
    assert capsys.readouterr().out == ""


def test_default_logs_once_why_cuda_is_not_used(
    monkeypatch: pytest.MonkeyPatch, fresh_provider_cache: None, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(providers.ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(providers, "_cuda_device_count", lambda: 0)
    _loader(monkeypatch, {"libcuda.so.1": OSError("libcuda.so.1: cannot open shared object file")})
    with caplog.at_level(logging.INFO, logger="service.core.providers"):
        assert select_providers() == select_providers() == [CPU]
    messages = [r.getMessage() for r in caplog.records if "CUDA" in r.getMessage()]
    assert messages == [
        "CUDAExecutionProvider unusable, serving on the CPU: no NVIDIA driver: libcuda.so.1 cannot be "
        "loaded (Docker: --gpus, NVIDIA Container Toolkit)"
    ]


def test_explicit_cuda_request_warns_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, fresh_provider_cache: None, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(providers, "_cuda_device_count", lambda: 0)
    _loader(monkeypatch, {"libcuda.so.1": OSError("libcuda.so.1: cannot open shared object file")})
    with caplog.at_level(logging.WARNING, logger="service.core.providers"):
        assert select_providers([CUDA, CPU]) == [CPU]
    assert "(CUDAExecutionProvider: no NVIDIA driver: libcuda.so.1 cannot be loaded" in caplog.text
