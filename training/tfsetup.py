"""Importing TensorFlow for a command: a clear message when it is not installed, and no CUDA noise on CPU.

``make run`` installs the serving dependencies only; TensorFlow comes with the ``train`` extra
(``make train-deps``). Without it a training command used to end in ``ModuleNotFoundError: keras``; now it
exits 2 with the command to run.

On a machine without a usable GPU, importing TensorFlow and listing devices writes lines such as
``failed call to cuInit: ... UNKNOWN ERROR (303)`` and ``Could not find cuda drivers`` on stderr, before
TensorFlow's own log level applies. They alarm a user training on CPU, which is the normal case here, so
they are filtered out of what the import writes; anything else it writes is passed on unchanged. A machine
with an NVIDIA driver whose GPU cannot be used gets one line that says so.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import tempfile
from pathlib import Path

from training.errors import UsageError

INSTALL_HINT = (
    "training needs the train extra (TensorFlow, tf2onnx, onnx), which `make run` does not install: "
    "run `make train-deps` (or `.venv/bin/pip install -e '.[train]'`) once, then this command again"
)
_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWE]\d{4} [\d:.]+ +\d+ (port|cudart_stub|cuda_platform|cuda_executor|cuda_diagnostics|gpu_device"
    r"|cpu_feature_guard)\.cc:\d+\])"
)
_imported = False


def quiet_lines(text: str) -> list[str]:
    """The lines of ``text`` that are not TensorFlow's start-up and CUDA-probing noise."""
    return [line for line in text.splitlines() if line.strip() and not _NOISE.match(line)]


def require_train_extra(*modules: str) -> None:
    """Raise :class:`UsageError` (exit 2) with the install command when one of ``modules`` is missing."""
    if any(importlib.util.find_spec(module) is None for module in modules):
        raise UsageError(INSTALL_HINT)


def import_tensorflow() -> None:
    """Import TensorFlow and probe its devices once, filtering the start-up noise out of stderr.

    Raises :class:`UsageError` (exit 2) with the install command when TensorFlow is missing.
    """
    global _imported
    if _imported:
        return
    require_train_extra("tensorflow", "keras", "tf2onnx", "onnx")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = quiet_lines(captured.read().decode("utf-8", errors="replace"))
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)
    if not gpus and Path("/proc/driver/nvidia").exists():
        print(
            "an NVIDIA driver is present but TensorFlow cannot use the GPU: training on CPU", file=sys.stderr
        )
    _imported = True
