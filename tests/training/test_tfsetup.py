"""TensorFlow's start-up noise is filtered out of stderr, everything else passes, and a missing train
extra is a usage error that names the command to run."""

from __future__ import annotations

import pytest

from training import tfsetup
from training.errors import UsageError

NOISE = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796590734.383366   13276 port.cc:153] oneDNN custom operations are on. You may see slightly ...
I0000 00:00:1796590734.383820   13276 cudart_stub.cc:31] Could not find cuda drivers on your machine.
E0000 00:00:1796590738.314197   13276 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error
"""


def test_cuda_probing_noise_is_dropped() -> None:
    assert tfsetup.quiet_lines(NOISE) == []


def test_other_lines_pass_unchanged() -> None:
    real = "E0000 00:00:1796590738.314197   13276 op_kernel.cc:1857] OP_REQUIRES failed: out of memory"
    text = NOISE + real + "\nTraceback (most recent call last):\n"
    assert tfsetup.quiet_lines(text) == [real, "Traceback (most recent call last):"]


def test_a_missing_train_extra_names_the_install_command() -> None:
    with pytest.raises(UsageError, match=r"make train-deps") as caught:
        tfsetup.require_train_extra("onnx", "no_such_module_for_this_test")
    assert caught.value.exit_code == 2


def test_an_installed_train_extra_passes() -> None:
    tfsetup.require_train_extra("onnx", "numpy")
