"""Photos through /classify: accuracy per kind of photo, and what the preprocessing costs per image.

    python -m bench.preprocess [--per-kind 200] [--repeats 30] [--skip-accuracy] [--skip-cost]

Accuracy: the real service (one process, on a scratch copy of the shipped MNIST models) gets
``--per-kind`` photo-like images of real MNIST test digits of each kind in ``tests/helpers/photos.py``,
25 per multipart request. ``mnist-cnn (stretch)`` is the same model whose metadata declares
``"resize": "stretch"``: what /classify did with photos before digit preprocessing.

Cost: in this process, the median (and fastest) wall time per image of decoding alone, of ``prepare``
with digit preprocessing and with stretch, for sizes from a 28x28 PNG to a 12-megapixel phone photo,
beside the cost of handing work to a thread (``asyncio.to_thread``), which is what running
preprocessing off the event loop adds. Timings on a shared machine are noisy; compare the rows of one
run with each other. Results also go to ``bench/results/preprocess.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from service.contract import Preprocessing
from service.images.decode import open_image
from service.images.preprocess import MAX_PIXELS, prepare
from tests.helpers.data import MODELS, load_digits
from tests.helpers.photos import CLEAN, KINDS, photos, render
from tests.helpers.server import running_service

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BATCH = 25
#: (row label, model name in the scratch repository)
MODELS_COMPARED = (
    ("mnist-cnn", "mnist-cnn"),
    ("mnist-mlp", "mnist-mlp"),
    ("mnist-cnn (stretch)", "mnist-cnn-stretch"),
)
DIGIT = Preprocessing(height=28, width=28, color="grayscale", resize="digit")
STRETCH = Preprocessing(height=28, width=28, color="grayscale", resize="stretch")


def scratch_repository(root: Path) -> Path:
    """mnist-cnn and mnist-mlp as shipped, and mnist-cnn again as ``mnist-cnn-stretch``, declaring stretch."""
    for name in ("mnist-cnn", "mnist-mlp"):
        shutil.copytree(MODELS / name / "1", root / name / "1", ignore=shutil.ignore_patterns("report"))
    stretch = root / "mnist-cnn-stretch" / "1"
    shutil.copytree(root / "mnist-cnn" / "1", stretch)
    metadata = json.loads((stretch / "metadata.json").read_text())
    metadata.update(name="mnist-cnn-stretch", preprocessing=STRETCH.model_dump())
    (stretch / "metadata.json").write_text(json.dumps(metadata))
    return root


def accuracy(per_kind: int, workdir: Path) -> dict[str, dict[str, float]]:
    """{kind: {model row label: accuracy}} through the real service."""
    repository = scratch_repository(workdir / "models")
    table: dict[str, dict[str, float]] = {}
    env = {"SERVE_MODEL_REPOSITORY": str(repository)}
    with (
        running_service(workdir, env=env) as service,
        httpx.Client(base_url=service.url, timeout=120) as client,
    ):
        for kind in KINDS:
            shots = list(photos(kind, per_kind, seed=2024))
            labels = np.array([label for *_, label in shots])
            table[kind] = {}
            for row, model in MODELS_COMPARED:
                predicted = []
                for start in range(0, per_kind, BATCH):
                    files = [
                        ("file", (f"{n}", d, ct)) for n, (d, ct, _) in enumerate(shots[start : start + BATCH])
                    ]
                    response = client.post(f"/v2/models/{model}/classify?top_k=1", files=files)
                    if response.status_code == 400 and "no digit found" in response.text:
                        predicted += _one_by_one(client, model, shots[start : start + BATCH])
                        continue
                    response.raise_for_status()
                    predicted += [r["predictions"][0]["class_id"] for r in response.json()["results"]]
                table[kind][row] = float((np.array(predicted) == labels).mean())
            print(
                f"  {kind:16s} " + "  ".join(f"{r}: {100 * a:5.1f} %" for r, a in table[kind].items()),
                flush=True,
            )
    return table


def _one_by_one(client: httpx.Client, model: str, shots: list[tuple[bytes, str, int]]) -> list[int]:
    """Classes for a batch that held an image without a digit (counted wrong: -1), image by image."""
    out = []
    for data, content_type, _ in shots:
        response = client.post(
            f"/v2/models/{model}/classify?top_k=1", content=data, headers={"Content-Type": content_type}
        )
        out.append(response.json()["predictions"][0]["class_id"] if response.status_code == 200 else -1)
    return out


def timed_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median, fastest) milliseconds of ``fn()``: on a shared machine the fastest run is the closer
    estimate of the work itself, the median of what a request meets."""
    fn()  # warm caches
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times), 1000 * min(times)


def cost_inputs() -> dict[str, bytes]:
    """Encoded test images, from what the canvas sends to a 12-megapixel phone photo."""
    images, _ = load_digits("mnist")
    digit = images[0, ..., 0]
    rng = np.random.default_rng(0)
    out = {}
    mnist = Image.fromarray(digit.astype(np.uint8))
    out["MNIST digit, 28x28 PNG"] = _png(mnist)
    out["canvas drawing, 280x280 PNG"] = _png(mnist.resize((280, 280), Image.Resampling.BILINEAR))
    for label, frame, jpeg in (
        ("phone photo, 300x300 JPEG", (300, 300), 85),
        ("photo, 1200x900 JPEG", (1200, 900), 85),
        ("photo, 4000x3000 JPEG (12 MP)", (4000, 3000), 85),
        ("photo, 4000x3000 PNG (12 MP)", (4000, 3000), None),
    ):
        out[label], _ = render(digit, replace(CLEAN, frame=frame, jpeg=jpeg, blur=(2.0, 3.0)), rng)
    return out


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def cost(repeats: int) -> dict[str, dict[str, float]]:
    """{input: {decode_ms, digit_ms, stretch_ms}} and the thread hop, in milliseconds per image."""
    table: dict[str, dict[str, float]] = {}
    for label, data in cost_inputs().items():
        runs: dict[str, Callable[[], object]] = {
            "decode": lambda d=data: open_image(d, max_pixels=MAX_PIXELS).convert("RGBA"),
            "digit": lambda d=data: prepare(d, DIGIT),
            "stretch": lambda d=data: prepare(d, STRETCH),
        }
        table[label] = {}
        for name, fn in runs.items():
            table[label][f"{name}_median_ms"], table[label][f"{name}_fastest_ms"] = timed_ms(fn, repeats)
        print(f"  {label:32s} " + "  ".join(f"{k} {v:7.2f}" for k, v in table[label].items()), flush=True)
    table["thread hop"] = {"hop_median_ms": _thread_hop_ms(max(repeats, 200))}
    print_cost(table)
    return table


def print_cost(table: dict[str, dict[str, float]]) -> None:
    print("\n| image | decode | digit (decode included) | stretch (decode included) |")
    print("|---|---|---|---|")
    for label, cells in table.items():
        if "decode_median_ms" in cells:
            parts = [
                f"{cells[f'{n}_median_ms']:.2f} ({cells[f'{n}_fastest_ms']:.2f})"
                for n in ("decode", "digit", "stretch")
            ]
            print(f"| {label} | " + " | ".join(parts) + " |")
    print(
        f"\nthread hop (asyncio.to_thread of a no-op): {table['thread hop']['hop_median_ms']:.3f} ms (median)"
    )


def _thread_hop_ms(repeats: int) -> float:
    async def hops() -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            await asyncio.to_thread(lambda: None)
            times.append(time.perf_counter() - started)
        return 1000 * statistics.median(times)

    return asyncio.run(hops())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=200, help="photos per kind of corruption")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per image for the cost")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-cost", action="store_true")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    if not args.skip_cost:
        print("cost per image (median ms):")
        results["cost"] = cost(args.repeats)
    if not args.skip_accuracy:
        print(f"accuracy, {args.per_kind} photos per kind:")
        with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as workdir:
            results["accuracy"] = accuracy(args.per_kind, Path(workdir))
        print_accuracy(results["accuracy"], args.per_kind)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "preprocess.json").write_text(json.dumps(results, indent=2))
    return 0


def print_accuracy(table: dict[str, dict[str, float]], per_kind: int) -> None:
    rows = [label for label, _ in MODELS_COMPARED]
    print(f"\n| kind ({per_kind} photos each) | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    for kind, cells in table.items():
        print(f"| {kind} | " + " | ".join(f"{100 * cells[r]:.1f} %" for r in rows) + " |")
    means = [statistics.mean(cells[r] for cells in table.values()) for r in rows]
    print("| **mean** | " + " | ".join(f"**{100 * m:.1f} %**" for m in means) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
