"""How much should feedback weigh? Retrain one champion on the same feedback at several shares, compare.

    python -m bench.feedback_share [--data-dir DIR] [--limit-train N] [--feedback N] [--shares 0,0.1,...]

A ``cnn`` champion is trained on ``--limit-train`` MNIST images and published into a scratch repository.
Clients then send ``--feedback`` MNIST test digits rotated by 90 degrees (which the champion misreads) with
their true labels, through the service's own feedback store. For each share, ``retrain`` runs on a fresh
copy of the repository (same seed, same epochs), and both versions are measured on the MNIST test set and
on 2,000 other rotated test digits that no run ever sees (as PNGs through the model's preprocessing, as
``/classify`` reads them). Results go to ``bench/results/feedback_share.json``
and a Markdown table on stdout. Not a test: it takes minutes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import onnxruntime as ort
from PIL import Image

from service.contract import Preprocessing
from service.feedback.store import FeedbackStore
from training import pipeline, retrain
from training.data import Dataset, load_dataset, resolve_data_dir
from training.feedback import model_input
from training.presets import preset_defaults

ROOT = Path(__file__).resolve().parents[1]
NAME = "mnist-cnn"
#: Rotated test digits never sent as feedback: the unseen examples of the new kind.
UNSEEN = slice(5000, 7000)


def rotated(dataset: Dataset, part: slice) -> tuple[np.ndarray, np.ndarray]:
    return np.rot90(dataset.x_test[part], k=1, axes=(1, 2)), dataset.y_test[part]


def accuracy(version_dir: Path, images: np.ndarray, labels: np.ndarray) -> float:
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(None, {"image": images.astype(np.float32)})
    return float((np.asarray(probabilities).argmax(axis=1) == labels).mean())


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.squeeze(-1)).save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--limit-train", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=3, help="champion epochs (retrain: --retrain-epochs)")
    parser.add_argument("--retrain-epochs", type=int, default=2)
    parser.add_argument("--feedback", type=int, default=400, help="rotated digits sent as feedback")
    parser.add_argument("--shares", default="0,0.05,0.1,0.2,0.3,0.5")
    parser.add_argument("--scratch", type=Path, help="working directory (default: a temporary one)")
    args = parser.parse_args()
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="feedback-share-"))
    dataset = load_dataset("mnist", resolve_data_dir(args.data_dir), download=False)

    champion_repo = scratch / "champion"
    hp = replace(preset_defaults("cnn"), epochs=args.epochs, limit_train=args.limit_train, patience=0)
    started = time.perf_counter()
    config = pipeline.RunConfig("mnist", "cnn", hp, name=NAME, repository=champion_repo)
    pipeline.run(dataset, config, verbose=0)
    champion_s = time.perf_counter() - started
    feedback = scratch / "feedback"
    store = FeedbackStore(feedback, max_items=1_000_000, max_bytes=1 << 40)
    for image, label in zip(*rotated(dataset, slice(0, args.feedback)), strict=True):
        store.store(NAME, str(label), png(image), "png", served_version=1, predicted="?")

    # The unseen digits as the service reads them: each PNG through the version's preprocessing.
    pre = Preprocessing.model_validate(
        json.loads((champion_repo / NAME / "1" / "metadata.json").read_text())["preprocessing"]
    )
    x_raw, y_unseen = rotated(dataset, UNSEEN)
    x_unseen = np.stack([model_input(png(image), pre) for image in x_raw])
    v1 = champion_repo / NAME / "1"
    rows: list[dict[str, Any]] = []
    for share in [float(s) for s in args.shares.split(",")]:
        repository = scratch / f"share-{share:g}"
        shutil.rmtree(repository, ignore_errors=True)
        shutil.copytree(champion_repo, repository)
        config = retrain.RetrainConfig(
            repository=repository,
            name=NAME,
            feedback=feedback,
            data_dir=resolve_data_dir(args.data_dir),
            epochs=args.retrain_epochs,
            feedback_share=share,
            max_regression=100.0,  # measure every share, even one the guard would refuse
        )
        started = time.perf_counter()
        result = retrain.retrain(config, verbose=0)
        seconds = time.perf_counter() - started
        v2 = repository / NAME / "2"
        record = result.record
        rows.append(
            {
                "share": share,
                "repeats": record["mixing"]["feedback_repeats"],
                "seconds": round(seconds, 1),
                "test_champion": record["champion"]["test_accuracy"],
                "test_challenger": record["challenger"]["test_accuracy"],
                "holdout_champion": record["champion"]["holdout_accuracy"],
                "holdout_challenger": record["challenger"]["holdout_accuracy"],
                "unseen_champion": accuracy(v1, x_unseen, y_unseen),
                "unseen_challenger": accuracy(v2, x_unseen, y_unseen) if v2.is_dir() else None,
                "n_holdout": record["n_holdout"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "champion_fit_s": champion_s, "rows": rows}
    (results / "feedback_share.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nchampion: cnn, {args.limit_train} MNIST images, {args.epochs} epochs ({champion_s:.0f} s)")
    print("| share | repeats | test acc. (champion -> new) | feedback holdout | unseen rotated | retrain s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['share']:g} | x{r['repeats']} | {r['test_champion']:.2%} -> {r['test_challenger']:.2%} | "
            f"{r['holdout_champion']:.1%} -> {r['holdout_challenger']:.1%} ({r['n_holdout']}) | "
            f"{r['unseen_champion']:.1%} -> {r['unseen_challenger']:.1%} | {r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
