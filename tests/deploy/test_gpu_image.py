"""The GPU serving image, proven without a GPU: inside it every library the CUDA execution provider needs
resolves except the driver's libcuda.so.1, and a CUDA session fails for that reason only.

`onnxruntime-gpu` is built for one CUDA major version (13 for 1.31); the image takes its own
``[cuda,cudnn]`` extras, so the CUDA runtime, cuBLAS and cuDNN wheels match it. On a GPU host the NVIDIA
Container Toolkit mounts libcuda.so.1. Marked ``docker``: `make test-deploy` runs it.
"""

from __future__ import annotations

import json

import pytest

from tests.deploy.dockerstack import Images, docker

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

CUDA_CHECK = r"""
import ctypes, json, pathlib, re, subprocess, sys
import onnxruntime as ort
from onnxruntime.capi import build_and_package_info as info
from service.core import providers

capi = pathlib.Path(ort.__file__).parent / "capi"
site = capi.parent.parent
def missing(lib):
    out = subprocess.run(["ldd", str(lib)], capture_output=True, text=True).stdout
    return sorted(set(re.findall(r"^\s*(\S+) => not found", out, re.M)))
wheel_libs = sorted(str(p) for p in site.glob("nvidia/*/lib/*.so*"))
session = subprocess.run(
    [sys.executable, "-c", "import onnxruntime as ort; from service.core.providers import _PROBE_MODEL as m; "
     "providers = ['CUDAExecutionProvider', 'CPUExecutionProvider']; "
     "print(ort.InferenceSession(m, providers=providers).get_providers())"],
    capture_output=True, text=True)
print(json.dumps({
    "cuda_version": info.cuda_version,
    "runtime_wheel": [p.name for p in site.glob("nvidia/cu*/lib/libcudart.so.*")],
    "provider_missing": missing(capi / "libonnxruntime_providers_cuda.so"),
    "wheel_libs": len(wheel_libs),
    "wheel_missing": sorted({m for lib in wheel_libs for m in missing(lib)}),
    "cudnn": ctypes.CDLL("libcudnn.so.9") is not None,
    "session_providers": session.stdout.strip(),
    "session_unopened": sorted(set(re.findall(r"(\S+): cannot open shared object file", session.stderr))),
    "reason": providers.cuda_unusable_reason(),
}))
"""


def test_gpu_serving_image_resolves_every_cuda_library_but_the_driver(images: Images) -> None:
    run = ["run", "--rm", "--network", "none", "--entrypoint", "python"]
    result = docker(*run, images.serve_gpu.id, "-c", CUDA_CHECK, timeout=300)
    found = json.loads(result.stdout.strip().splitlines()[-1])
    major = found["cuda_version"].split(".")[0]
    # The CUDA runtime came from the wheel's own extras, in the major version onnxruntime was built for.
    assert found["runtime_wheel"] == [f"libcudart.so.{major}"], found
    # Only the driver is missing: the NVIDIA Container Toolkit mounts it on a GPU host.
    assert found["provider_missing"] == ["libcuda.so.1"], found
    assert found["wheel_libs"] > 5 and set(found["wheel_missing"]) <= {"libcuda.so.1"}, found
    assert found["cudnn"] is True
    assert found["session_unopened"] == ["libcuda.so.1"], found
    assert found["session_providers"] == "['CPUExecutionProvider']", found
    assert found["reason"].startswith("no NVIDIA driver: libcuda.so.1 cannot be loaded"), found
