"""Peak memory of training on a large image folder: the images stay on disk, not in the process.

    python -m bench.imagefolder_memory [--images 100000] [--size 64] [--preset tiny-mlp] [--epochs 1]

Writes ``--images`` PNGs (``--size`` x ``--size`` RGB, ten classes, made from the CIFAR-10 subset by
scaling, shifting and mirroring) into a temporary folder, runs the real ``python -m training train
--images ...`` on it, and samples the trainer's memory from ``/proc`` twice a second: resident set size
(RSS), split into anonymous memory (what the process holds) and file-backed pages (mapped libraries and
files, shared with the page cache). Everything it wrote is removed at the end. The numbers are printed and
written to ``bench/results/imagefolder_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.reference_models import ROOT

DATA_DIR = Path(os.environ.get("DATA_DIR") or ROOT.parent / "shared" / "data")
LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def write_folder(root: Path, count: int, size: int) -> None:
    """``count`` distinct PNGs of ``size`` x ``size`` under ``root/<class>/``, from CIFAR-10 images."""
    with np.load(DATA_DIR / "cifar10" / "cifar10_subset_lossless.npz") as data:
        images = np.concatenate([data["x_train"], data["x_test"]])
        labels = np.concatenate([data["y_train"], data["y_test"]]).reshape(-1)
    for name in LABELS:
        (root / name).mkdir(parents=True)
    rng = np.random.default_rng(0)
    started = time.monotonic()
    for i in range(count):
        j = i % len(images)
        image = Image.fromarray(images[j]).resize((size + 8, size + 8), Image.Resampling.BILINEAR)
        dx, dy = rng.integers(0, 9, 2)
        image = image.crop((dx, dy, dx + size, dy + size))
        if (i // len(images)) % 2:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image.save(root / LABELS[labels[j]] / f"{i:06d}.png", compress_level=1)
        if (i + 1) % 10000 == 0:
            print(f"wrote {i + 1:,} images ({time.monotonic() - started:.0f} s)", flush=True)


def _status(pid: int) -> dict[str, int]:
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


def sample(
    process: subprocess.Popen[bytes],
    peaks: dict[str, int],
    timeline: list[tuple[float, int]],
    stop: threading.Event,
) -> None:
    started = time.monotonic()
    while not stop.is_set() and process.poll() is None:
        try:
            status = _status(process.pid)
        except (OSError, ValueError):
            break
        for key, value in status.items():
            peaks[key] = max(peaks.get(key, 0), value)
        timeline.append((round(time.monotonic() - started, 1), status.get("RssAnon", 0) // 2**20))
        stop.wait(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--preset", default="tiny-mlp")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--scratch", type=Path, help="where to write the folder (default: a temporary one)")
    args = parser.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="imagefolder-memory-", dir=args.scratch))
    try:
        folder, repository, log = scratch / "images", scratch / "models", scratch / "train.log"
        write_folder(folder, args.images, args.size)
        on_disk = sum(f.stat().st_size for f in folder.rglob("*.png"))
        command = [
            sys.executable,
            "-m",
            "training",
            "train",
            "--images",
            str(folder),
            "--preset",
            args.preset,
        ]
        command += ["--epochs", str(args.epochs), "--name", "memory", "--publish", str(repository)]
        command += ["--cache-dir", str(scratch / "cache")]
        # Log lines with timestamps, to tell which phase the memory peak falls in.
        env_extra = {"PYTHONUNBUFFERED": "1"}
        peaks: dict[str, int] = {}
        timeline: list[tuple[float, int]] = []
        stop = threading.Event()
        started = time.monotonic()
        with log.open("wb") as out:
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env_extra}
            process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
            sampler = threading.Thread(target=sample, args=(process, peaks, timeline, stop), daemon=True)
            sampler.start()
            code = process.wait()
            stop.set()
            sampler.join()
        wall = time.monotonic() - started
        tail = log.read_text(errors="replace").splitlines()[-18:]
        print("\n".join(tail))
        if code != 0:
            print(f"trainer exited with {code}", file=sys.stderr)
            return 1
        cache = sum(f.stat().st_size for f in (scratch / "cache").glob("*.npy"))
        result: dict[str, Any] = {
            "images": args.images,
            "size": args.size,
            "preset": args.preset,
            "epochs": args.epochs,
            "png_bytes": on_disk,
            "cache_bytes": cache,
            "decoded_in_memory_bytes": args.images * args.size * args.size * 3,
            "peak_rss_bytes": peaks.get("VmRSS", 0),
            "peak_rss_anon_bytes": peaks.get("RssAnon", 0),
            "peak_rss_file_bytes": peaks.get("RssFile", 0),
            "wall_s": round(wall, 1),
            "anon_mib_timeline": timeline[:: max(1, len(timeline) // 200)],
        }
        mib = {k: f"{v / 2**20:,.0f} MiB" for k, v in result.items() if k.endswith("_bytes")}
        print(json.dumps({**{k: v for k, v in result.items() if k != "anon_mib_timeline"}, **mib}, indent=2))
        out_dir = ROOT / "bench" / "results"
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "imagefolder_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
