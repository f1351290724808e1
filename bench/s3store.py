"""What an s3:// repository costs: publishing, a first download, a cached load, a listing.

``python -m bench.s3store`` starts moto's S3 server (its own process, on loopback) and, for a shipped
model, times with ``time.perf_counter`` (median of ``--rounds``):

- ``publish``: ``training.publish.publish`` of one version (claim, files, metadata last);
- ``download``: ``S3Store.local_version`` into an empty cache (metadata, model.onnx streamed and hashed,
  the entry renamed into place);
- ``cached``: the same call with the entry present (one GET of metadata.json, its sha256, a stat);
- ``session``: ``service.core.runtime.load_model`` on the cached directory (hash check, onnxruntime session,
  signature check), what loading costs with any repository;
- ``scan``: one listing of the repository after ``--versions`` versions were published;
- ``client``: making a store (a boto3 client), which the others reuse.

moto keeps objects in memory on the same machine, so the figures are the client's work and the
protocol's round trips, not a network's: compare them with each other, in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from service.contract import METADATA_FILE, MODEL_FILE, read_metadata
from service.core.runtime import load_model
from service.storage import open_store
from service.storage.cache import ModelCache
from service.storage.s3 import S3Store
from tests.helpers.data import MODELS
from tests.helpers.s3server import moto_server
from training.publish import publish


def timed(action: Callable[[], object], rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def run(model: str, rounds: int, versions: int) -> dict[str, float]:
    metadata, _ = read_metadata(MODELS / model / "1" / METADATA_FILE)
    model_bytes = (MODELS / model / "1" / MODEL_FILE).read_bytes()
    with tempfile.TemporaryDirectory() as tmp, moto_server(Path(tmp)) as s3:
        os.environ.update(s3.env())
        s3.client().create_bucket(Bucket="bench")
        url = "s3://bench/models"

        def publish_one() -> int:
            published = publish(url, model, model_bytes, lambda v: metadata.model_copy(update={"version": v}))
            return published.version

        results = {"publish_s": timed(publish_one, rounds)}
        while max(open_store(url).numbers(model)) < versions:
            publish_one()

        store = open_store(url)  # one client throughout: creating a boto3 client costs ~0.1 s itself
        assert isinstance(store, S3Store)

        def download() -> None:
            store.cache = ModelCache(Path(tempfile.mkdtemp(dir=tmp)), 1024**3)
            store.local_version(model, 1)

        results["download_s"] = timed(download, rounds)
        path = store.local_version(model, 1)
        results["cached_s"] = timed(lambda: store.local_version(model, 1), rounds)
        providers = ["CPUExecutionProvider"]
        results["session_s"] = timed(lambda: load_model(path, providers=providers).close(), rounds)
        results["scan_s"] = timed(store.scan, rounds)
        results["client_s"] = timed(lambda: open_store(url), rounds)
        results["model_bytes"] = len(model_bytes)
        results["versions"] = versions
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist-cnn")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--versions", type=int, default=50)
    args = parser.parse_args()
    print(json.dumps(run(args.model, args.rounds, args.versions), indent=2))


if __name__ == "__main__":
    main()
