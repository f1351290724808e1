"""Versions of a shipped model for rollout tests: the same network, its answers for two classes swapped.

    publish_variant(MODELS / "mnist-mlp" / "1", root, "mnist-mlp", 2, swap=(3, 5), candidate=True)

writes ``root/mnist-mlp/2`` (the graph's probabilities permuted by a ``Gather``, so every 3 is read as
a 5 and the reverse; the metadata's version and sha256 updated), published atomically like the trainer.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from PIL import Image

from service.contract import CANDIDATE_FILE, METADATA_FILE, MODEL_FILE


def swapped_graph(model_bytes: bytes, swap: tuple[int, int], classes: int) -> bytes:
    """The model with output classes ``swap[0]`` and ``swap[1]`` exchanged."""
    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    output = graph.output[0].name
    inner = f"{output}_unswapped"
    for node in graph.node:
        node.output[:] = [inner if name == output else name for name in node.output]
    order = np.arange(classes, dtype=np.int64)
    order[[swap[0], swap[1]]] = order[[swap[1], swap[0]]]
    graph.initializer.append(numpy_helper.from_array(order, name="swap_order"))
    graph.node.append(helper.make_node("Gather", [inner, "swap_order"], [output], axis=1))
    return model.SerializeToString()


def publish_variant(
    source: Path,
    root: Path,
    name: str,
    version: int,
    *,
    swap: tuple[int, int] | None = None,
    candidate: bool = False,
) -> Path:
    """Publish ``source`` (a version directory) as ``root/name/version``, classes swapped when asked."""
    metadata = json.loads((source / METADATA_FILE).read_text())
    data = (source / MODEL_FILE).read_bytes()
    if swap is not None:
        data = swapped_graph(data, swap, len(metadata["labels"]))
    digest = hashlib.sha256(data).hexdigest()
    # Only model.onnx is published with it, so that is all its file list names (docs/repository.md).
    metadata.update(version=version, sha256=digest, files={MODEL_FILE: digest})
    final = root / name / str(version)
    staging = root / name / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    (staging / MODEL_FILE).write_bytes(data)
    (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    if candidate:
        (staging / CANDIDATE_FILE).write_text("")
    os.rename(staging, final)
    return final


def copy_version(source: Path, root: Path, name: str, version: int = 1) -> Path:
    """``source`` copied as it is (same version number) into ``root/name/version``."""
    final = root / name / str(version)
    shutil.copytree(source, final, ignore=shutil.ignore_patterns("train", "report*", "*.png"))
    return final


def png(image: np.ndarray) -> bytes:
    """A [28, 28, 1] 0..255 array as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0].astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()
