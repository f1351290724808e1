"""Which onnxruntime execution providers this process can use: CUDA when it really starts, else CPU.

onnxruntime-gpu lists ``CUDAExecutionProvider`` even on machines without a driver, a GPU or the CUDA
libraries, and then falls back to the CPU with an error-looking log line. :func:`select_providers`
decides once per process, quietly, and :func:`cuda_unusable_reason` says why CUDA is not used, in the
order an operator fixes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# Providers that cannot work without an NVIDIA driver and at least one device.
_NEEDS_CUDA_DEVICE = frozenset({CUDA, "TensorrtExecutionProvider"})

# A one-node ONNX model (Identity, x: float[1] -> y, IR 7, opset 13), serialized. The serving side may not
# import the onnx package, so the bytes are spelled out; tests rebuild them with onnx.helper and compare.
_PROBE_MODEL = (
    b'\x08\x07:;\n\x10\n\x01x\x12\x01y"\x08Identity\x12\x05probeZ\x0f\n\x01x\x12\n\n\x08\x08\x01\x12\x04'
    b"\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\r"
)

log = logging.getLogger(__name__)


def select_providers(requested: Sequence[str] | None = None) -> list[str]:
    """The execution providers to create sessions with, in priority order.

    ``requested`` (from ``SERVE_PROVIDERS``) wins: a name onnxruntime does not know raises ValueError
    listing the available ones; a known provider that cannot start here (CUDA without a driver or GPU,
    or without its CUDA/cuDNN libraries) is dropped with a warning that says why, and ValueError is
    raised when nothing is left. ``None`` means CUDA first when usable, else CPU only, and says once, at
    INFO, why CUDA is not used. Each provider is probed once per process (a dropped CUDA once more, for
    the warning's reason), with onnxruntime's logging silenced, so an unusable CUDA never prints an error.
    """
    if requested is None:
        return list(_default_providers())
    available = ort.get_available_providers()
    unknown = [p for p in requested if p not in available]
    if unknown:
        raise ValueError(f"unknown execution provider(s) {unknown}; available: {available}")
    usable = [p for p in dict.fromkeys(requested) if _usable(p)]
    if not usable:
        raise ValueError(f"none of the requested execution providers {list(requested)} can start here")
    if dropped := [p for p in requested if p not in usable]:
        why = f" ({CUDA}: {cuda_unusable_reason()})" if CUDA in dropped else ""
        log.warning("execution provider(s) %s cannot start on this machine%s; using %s", dropped, why, usable)
    return usable


def cuda_unusable_reason() -> str | None:
    """Why the CUDA execution provider cannot run in this process, or None when it can.

    The first cause found, in the order an operator fixes them: an onnxruntime without CUDA (the CPU
    wheel), no NVIDIA driver (``libcuda.so.1``: on Docker, ``--gpus`` and the NVIDIA Container Toolkit),
    a driver that sees no GPU, then CUDA or cuDNN libraries that the provider cannot load (named).
    """
    if CUDA not in ort.get_available_providers():
        return "this onnxruntime has no CUDAExecutionProvider (the CPU-only onnxruntime package)"
    if _cuda_device_count() < 1:
        return _no_cuda_device_reason()
    _preload_cuda_libraries()
    if _session_starts(CUDA):
        return None
    return _cuda_library_problem()


@functools.cache
def _default_providers() -> tuple[str, ...]:
    reason = cuda_unusable_reason()
    if reason is None:
        return (CUDA, CPU)
    log.info("CUDAExecutionProvider unusable, serving on the CPU: %s", reason)
    return (CPU,)


@functools.cache
def _usable(provider: str) -> bool:
    if provider == CPU:
        return True
    if provider == CUDA:
        return cuda_unusable_reason() is None
    if provider in _NEEDS_CUDA_DEVICE and _cuda_device_count() < 1:
        return False
    return _session_starts(provider)


def _cuda_device_count() -> int:
    # Asking the driver is silent and cheap, and spares loading the CUDA provider library (hundreds of
    # MB) on machines with no GPU at all.
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int(0)
        if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
    except (OSError, AttributeError):
        return 0
    return count.value


def _no_cuda_device_reason() -> str:
    try:
        status = ctypes.CDLL("libcuda.so.1").cuInit(0)
    except OSError:
        return "no NVIDIA driver: libcuda.so.1 cannot be loaded (Docker: --gpus, NVIDIA Container Toolkit)"
    return f"the NVIDIA driver failed to initialise (cuInit error {status})" if status else "no GPU found"


def _preload_cuda_libraries() -> None:
    # CUDA and cuDNN from pip wheels (onnxruntime-gpu[cuda,cudnn]) live in site-packages, off the loader's
    # path: onnxruntime loads them on request. What it cannot find it print()s to stdout; that is
    # discarded, and _cuda_library_problem names the culprit instead.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.suppress(Exception):  # a failed preload leaves the loader's own search
            ort.preload_dlls()


def _cuda_library_problem() -> str:
    # The provider library links the CUDA libraries: loading it names the first one missing, in the
    # loader's own words ("libcublasLt.so.13: cannot open shared object file ...").
    try:
        ctypes.CDLL(str(Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"))
    except OSError as exc:
        return f"its libraries cannot be loaded: {exc}"
    return "a session on it did not start (onnxruntime fell back to the CPU)"


def _session_starts(provider: str) -> bool:
    # onnxruntime-gpu lists CUDA even where its libraries are missing, then logs an error and falls back
    # to CPU when a session asks for it. A throwaway session with logging off finds out quietly. The
    # failure is logged by the process-wide default logger, not the session's, so both are silenced;
    # onnxruntime has no getter, so the default logger goes back to its documented default (2, warning).
    options = ort.SessionOptions()
    options.log_severity_level = 4
    ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(_PROBE_MODEL, options, providers=[provider, CPU])
    except Exception:  # any failure to start means "not usable"; cuda_unusable_reason says why
        return False
    finally:
        ort.set_default_logger_severity(2)
    return provider in session.get_providers()
