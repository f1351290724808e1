"""The service on a GPU against raw onnxruntime CUDA at its best batch size, after proving CUDA is in use.

``python -m bench.gpu [--model mnist-cnn] [--batches 1,8,32,128,512] [--rows 16] [--concurrency 64]``
(``bench/gpu.sh`` sets up what it needs and runs it) does, in this order, and stops at the first failure:

1. **CUDA is really used.** onnxruntime falls back to the CPU without an error when the CUDA provider
   cannot load (a missing cuDNN, no driver, the CPU wheel): the session then simply lists only
   ``CPUExecutionProvider``. So a CUDA session must list CUDA first, and a profiled run must place the
   model's compute nodes (Conv, Gemm, MatMul, ...) on ``CUDAExecutionProvider``. Otherwise: exit 3, saying
   which check failed and why CUDA is unusable (:func:`service.core.providers.cuda_unusable_reason`).
2. **Raw onnxruntime CUDA**, in process, at each batch size of ``--batches``: samples per second; the
   best is the ceiling.
3. **The service** (``python -m service`` with ``SERVE_PROVIDERS=CUDAExecutionProvider``, free ports),
   whose model metadata must report the CUDA provider (else exit 3), driven over gRPC with raw tensors of
   ``--rows`` images per request from ``--concurrency`` connections (:mod:`bench.grpc_load`).

Inputs are seeded random images of the model's input shape, so no data set is needed.

It prints samples per second of both and their ratio, and writes ``bench/results/gpu.json``. Exit codes:
0 measured, 2 bad arguments, 3 CUDA not in use.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
#: Operators that do the model's arithmetic: these must run on CUDA (shape and copy nodes may not).
COMPUTE_OPS = frozenset({"Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul"})
#: The exit status when CUDA is not in use.
NO_CUDA = 3


class CudaNotUsed(RuntimeError):
    """The CUDA execution provider is not doing the work (a silent CPU fallback, or none at all)."""


def parse_batches(text: str) -> list[int]:
    """``"1,8,32"`` as batch sizes: positive integers, at most 4096, at least one."""
    try:
        batches = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"batch sizes must be integers separated by commas, got {text!r}"
        ) from None
    if not batches or any(not 1 <= b <= 4096 for b in batches):
        raise argparse.ArgumentTypeError(f"batch sizes must be from 1 to 4096, got {text!r}")
    return batches


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def placement(profile: list[dict[str, Any]]) -> dict[str, collections.Counter[str]]:
    """From an onnxruntime profile (``end_profiling()``'s JSON): node runs by provider, per operator."""
    by_op: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for event in profile:
        args = event.get("args") or {}
        if event.get("cat") == "Node" and "provider" in args and "op_name" in args:
            by_op[args["op_name"]][args["provider"]] += 1
    return by_op


def check_placement(by_op: dict[str, collections.Counter[str]]) -> None:
    """CudaNotUsed unless every compute operator the profile saw ran on CUDA (and it saw one)."""
    compute = {op: counts for op, counts in by_op.items() if op in COMPUTE_OPS}
    if not compute:
        raise CudaNotUsed(
            f"the profile shows no compute operator ({sorted(COMPUTE_OPS)}) at all: {dict(by_op)}"
        )
    elsewhere = {op: dict(c) for op, c in compute.items() if set(c) != {CUDA}}
    if elsewhere:
        raise CudaNotUsed(f"compute operators ran outside {CUDA}: {elsewhere}")


def synthetic_image(metadata: Path) -> np.ndarray:
    """One seeded random FP32 row of the model's input shape (no data set needed on the GPU machine)."""
    spec = json.loads(metadata.read_text())["inputs"][0]
    if spec["datatype"] != "FP32" or spec["name"] != "image":
        raise SystemExit(f"error: bench.gpu sends one FP32 input named 'image'; the model takes {spec}")
    shape = [1, *spec["shape"][1:]]
    return np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)


def cuda_session(model: Path, providers: list[str] | None = None) -> Any:
    """A session asked for CUDA first; CudaNotUsed when onnxruntime quietly gave a CPU one instead."""
    import onnxruntime as ort

    asked = providers or [CUDA, CPU]
    session = ort.InferenceSession(str(model), providers=asked)
    got = session.get_providers()
    if not got or got[0] != CUDA:
        from service.core.providers import cuda_unusable_reason

        why = cuda_unusable_reason() or "onnxruntime gave no reason"
        raise CudaNotUsed(f"asked onnxruntime for {asked}, the session runs on {got}: {why}")
    return session


def profiled_placement(
    model: Path, image: np.ndarray, providers: list[str]
) -> dict[str, collections.Counter[str]]:
    """Run ``model`` once with profiling on ``providers``: node runs by provider, per operator."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "placement")
        session = ort.InferenceSession(str(model), options, providers=providers)
        name = session.get_inputs()[0].name
        for _ in range(3):
            session.run(None, {name: image})
        return placement(json.loads(Path(session.end_profiling()).read_text()))


def raw_throughput(session: Any, image: np.ndarray, batch: int, seconds: float) -> float:
    """Samples per second of ``session`` at ``batch`` rows per run, after a warm-up."""
    name = session.get_inputs()[0].name
    x = np.ascontiguousarray(np.repeat(image, batch, axis=0))
    for _ in range(10):
        session.run(None, {name: x})
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {name: x})
        runs += 1
    return runs * batch / (time.perf_counter() - start)


def measure_service(args: argparse.Namespace, image: np.ndarray) -> dict[str, Any]:
    """Start the service on CUDA, check its provider, drive it over gRPC: samples per second and latency."""
    import httpx

    from bench.grpc_load import closed_loop, infer_request_bytes
    from bench.harness import RESULTS
    from bench.processes import service

    env = {"SERVE_MODELS": args.model, "SERVE_PROVIDERS": CUDA, "SERVE_LOG_LEVEL": "warning"}
    with service(env, RESULTS / "gpu-service.log") as served:
        url = served.url
        provider = httpx.get(f"{url}/v2/models/{args.model}", timeout=10).json()["parameters"]["provider"]
        if CUDA not in provider:
            raise CudaNotUsed(f"the service reports provider {provider!r} for {args.model}, not {CUDA}")
        body = infer_request_bytes(args.model, np.repeat(image, args.rows, axis=0), raw=True)
        target = {"protocol": "grpc", "address": served.grpc_address, "body": body}
        closed_loop(target, concurrency=args.concurrency, seconds=2, processes=args.processes)  # warm-up
        result = closed_loop(
            target, concurrency=args.concurrency, seconds=args.seconds, processes=args.processes
        )
    if result["failed"]:
        raise RuntimeError(f"{result['failed']} requests failed: {result['statuses']}")
    return {"provider": provider, "samples_per_s": result["rps"] * args.rows} | {
        k: result[k] for k in ("rps", "p50_ms", "p99_ms", "responses")
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist-cnn")
    parser.add_argument("--batches", type=parse_batches, default=parse_batches("1,8,32,128,512"))
    parser.add_argument("--rows", type=positive, default=16, help="images per request to the service")
    parser.add_argument("--concurrency", type=positive, default=64)
    parser.add_argument("--processes", type=positive, default=max(1, (os.cpu_count() or 2) // 4))
    parser.add_argument("--seconds", type=float, default=10.0, help="load per measurement")
    args = parser.parse_args(argv)
    from bench.harness import RESULTS, ROOT

    versions = [p for p in (ROOT / "models" / args.model).glob("*") if p.name.isdigit()]
    if not versions:
        print(f"error: no versions of model {args.model!r} under models/", file=sys.stderr)
        return 2
    model = max(versions, key=lambda p: int(p.name)) / "model.onnx"
    image = synthetic_image(model.parent / "metadata.json")
    try:
        session = cuda_session(model)
        by_op = profiled_placement(model, image, [CUDA, CPU])
        check_placement(by_op)
    except CudaNotUsed as exc:
        print(f"CUDA NOT IN USE: {exc}", file=sys.stderr)
        return NO_CUDA
    print("placement: " + ", ".join(f"{op} {dict(c)}" for op, c in sorted(by_op.items())))
    raw = {b: raw_throughput(session, image, b, 3.0) for b in args.batches}
    for b, rate in raw.items():
        print(f"raw onnxruntime CUDA, batch {b:4}: {rate:10.0f} samples/s")
    best = max(raw, key=lambda b: raw[b])
    try:
        service = measure_service(args, image)
    except CudaNotUsed as exc:
        print(f"CUDA NOT IN USE: {exc}", file=sys.stderr)
        return NO_CUDA
    ratio = service["samples_per_s"] / raw[best]
    print(
        f"service ({service['provider']}), {args.rows} rows a request, c={args.concurrency} over gRPC: "
        f"{service['samples_per_s']:.0f} samples/s, "
        f"p50 {service['p50_ms']:.1f} ms, p99 {service['p99_ms']:.1f} ms"
    )
    print(f"service / raw onnxruntime CUDA at its best batch ({best}): {ratio:.2f}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gpu.json").write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "model": args.model,
                "raw_samples_per_s": raw,
                "best_batch": best,
                "service": service,
                "ratio": ratio,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
