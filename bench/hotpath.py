"""CPU per request of the HTTP hot path itself: the app answering ``POST .../infer`` with the model stubbed.

``python -m bench.hotpath`` drives the real app (``create_app``, lifespan, middleware, fast path, parsing,
core, encoding) in process with single-image requests, JSON and binary, but with ``Batcher.submit``
answering at once, so neither onnxruntime nor thread hand-offs are in the number: what is left is the
Python the request path costs, in CPU microseconds per request. ``--baseline-tree DIR`` runs the same
against another source tree (e.g. ``git archive`` of an earlier commit, unpacked), interleaved, and
prints the minimum over ``--rounds`` for each: the minimum is what survives a machine busy with other work.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]


def bodies(image: np.ndarray) -> dict[str, tuple[bytes, list[tuple[bytes, bytes]]]]:
    json_body = orjson.dumps(
        {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 28, 28, 1], "data": image.tolist()}]}
    )
    tensor = {"name": "image", "datatype": "FP32", "shape": [1, 28, 28, 1]}
    head = orjson.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": image.nbytes}}],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    )
    binary = head + image.tobytes()
    return {
        "json": (json_body, [(b"content-length", str(len(json_body)).encode())]),
        "binary": (
            binary,
            [
                (b"content-length", str(len(binary)).encode()),
                (b"inference-header-content-length", str(len(head)).encode()),
            ],
        ),
    }


def child(kind: str, requests: int) -> float:
    """In this process (``sys.path`` set to the tree): CPU microseconds per request."""
    import uvloop

    from service.app import create_app
    from service.core import batching
    from service.settings import Settings

    outputs = {"probabilities": np.full((1, 10), 0.1, np.float32)}

    async def answer_at_once(self: object, inputs: object, *, deadline: float | None = None) -> object:
        return outputs

    batching.Batcher.submit = answer_at_once  # type: ignore[assignment,method-assign]
    image = np.random.default_rng(0).integers(0, 256, 784).astype(np.float32)
    body, headers = bodies(image)[kind]
    app = create_app(Settings(model_repository=Path("models"), models=["mnist-cnn"]))
    path = "/v2/models/mnist-cnn/infer"
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST"}
    scope |= {"scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": ""}
    scope |= {"headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    statuses: list[int] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(int(message["status"]))  # type: ignore[call-overload]

    async def run() -> float:
        async with app.router.lifespan_context(app):
            for _ in range(500):
                await app(dict(scope), receive, send)
            started = time.process_time()
            for _ in range(requests):
                await app(dict(scope), receive, send)
            return (time.process_time() - started) / requests * 1e6

    used = uvloop.run(run())
    if set(statuses) != {200}:
        raise RuntimeError(f"unexpected statuses {set(statuses)}")
    return used


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-tree", type=Path, help="also measure the app of this source tree")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.requests)))
        return 0
    trees = {"this": ROOT}
    if args.baseline_tree is not None:
        trees["baseline"] = args.baseline_tree.resolve()
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for kind in ("json", "binary"):
            for name, tree in trees.items():
                # This script, with the other tree's service package first on the path.
                cmd = [sys.executable, __file__, "--child", kind, "--requests", str(args.requests)]
                env = {**os.environ, "PYTHONPATH": str(tree)}
                out = subprocess.run(
                    cmd, cwd=tree, env=env, capture_output=True, text=True, check=True
                ).stdout
                results.setdefault((name, kind), []).append(float(out.strip().splitlines()[-1]))
    print("CPU µs per request, minimum over rounds (all rounds in brackets):")
    for kind in ("json", "binary"):
        line = [f"  {kind:6}"]
        for name in trees:
            runs = results[(name, kind)]
            line.append(f"{name} {min(runs):6.1f} [{', '.join(f'{r:.1f}' for r in runs)}]")
        if "baseline" in trees:
            line.append(f"= {min(results[('this', kind)]) / min(results[('baseline', kind)]):.3f}x")
        print("  ".join(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
