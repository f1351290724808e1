"""Where a request's time goes: py-spy samples the real service while ``hey`` (or ``h2load``) loads it.

``python -m bench.profile [--body binary|json|grpc] [--concurrency 64] [--seconds 8] [--native]`` starts
``python -m service`` (``SERVE_*`` variables pass through), drives it from a separate process with ``hey``
(HTTP) or ``h2load`` (``--body grpc``: ``ModelInfer`` calls with raw contents, as ``bench.protocols``),
and samples the service process with ``py-spy record`` (raw stacks, per thread, idle time left out). It
prints how busy the event loop and the batch worker thread were, and for the event loop the files and
functions with the largest shares of its busy samples: *self* (the innermost frame) and *inclusive* (the
frame anywhere on the stack). ``--native`` adds C frames (syscalls, the garbage collector, numpy). py-spy
pauses the process for each sample, so throughput under the profiler is lower than in ``bench.serving``;
the shares are what counts (``--nonblocking`` does not pause, but then stacks can be torn). Raw stacks go
to ``bench/results/profile-<body>[-native].txt``.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.grpc_load import infer_request_bytes
from bench.harness import RESULTS, first_test_image, write_bodies
from bench.processes import service
from bench.protocols import grpc_frame

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*)\)$")


def where(frame: str) -> str:
    """The file (Python) or library (native) a raw py-spy frame belongs to."""
    match = _FRAME.match(frame)
    return match["file"] if match else frame


def load(path: Path) -> dict[str, list[tuple[list[str], int]]]:
    """Stacks (outermost first) with their sample counts, by thread name."""
    threads: dict[str, list[tuple[list[str], int]]] = collections.defaultdict(list)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        thread, *frames = stack.split(";")
        name = thread.split(": ", 1)[-1]
        threads[re.sub(r"_\d+$", "", name)].append((frames, int(count)))
    return threads


def shares(stacks: list[tuple[list[str], int]]) -> tuple[int, collections.Counter[str], ...]:
    total = sum(n for _, n in stacks)
    by_file: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        if not frames:
            continue
        by_file[where(frames[-1])] += n
        self_time[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    return total, by_file, self_time, inclusive


def table(title: str, counts: collections.Counter[str], total: int, top: int, only: str = "") -> None:
    print(f"\n{title}")
    rows = [(k, n) for k, n in counts.most_common() if only in k and n < total][:top]
    for key, n in rows:
        print(f"  {100 * n / total:5.1f}%  {key}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist-cnn")
    parser.add_argument(
        "--body", choices=["binary", "json", "grpc"], default="binary", help="grpc: ModelInfer, raw contents"
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0, help="sampling time (load runs 3 s longer)")
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--native", action="store_true", help="include C frames")
    parser.add_argument("--nonblocking", action="store_true", help="sample without pausing the process")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    load_tool = "h2load" if args.body == "grpc" else "hey"
    if not Path(spy).exists() or shutil.which(load_tool) is None:
        print(f"error: needs py-spy (pip install py-spy) and {load_tool} (make system-deps)", file=sys.stderr)
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    image = first_test_image()
    out = RESULTS / f"profile-{args.body}{'-native' if args.native else ''}.txt"
    env = {"SERVE_MODELS": args.model, "SERVE_LOG_LEVEL": "warning"}
    if args.body == "grpc":  # h2c, as bench.protocols drives it: c connections, one call in flight each
        frame = RESULTS / "body-grpc-raw.grpc"
        frame.write_bytes(grpc_frame(infer_request_bytes(args.model, image, raw=True)))
        load_cmd = ["h2load", "-D", f"{args.seconds + 3:g}", "-c", str(args.concurrency), "-m", "1"]
        load_cmd += ["-d", str(frame), "-H", "content-type: application/grpc", "-H", "te: trailers"]
        target = "http://{grpc}/inference.GRPCInferenceService/ModelInfer"
    else:
        body, headers = write_bodies(image, RESULTS)[args.body]
        load_cmd = ["hey", "-z", f"{args.seconds + 3}s", "-c", str(args.concurrency), "-m", "POST"]
        load_cmd += ["-D", str(body)]
        for key, value in headers.items():
            load_cmd += ["-T", value] if key.lower() == "content-type" else ["-H", f"{key}: {value}"]
        target = "{http}" + f"/v2/models/{args.model}/infer"
    with service(env, RESULTS / "profile-service.log") as served:
        target = target.format(http=served.url, grpc=served.grpc_address)
        load_gen = subprocess.Popen([*load_cmd, target], stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(1.5)  # past connection setup
            record = [spy, "record", "--pid", str(served.pid), "--format", "raw", "--output", str(out)]
            record += ["--duration", str(int(args.seconds)), "--rate", str(args.rate), "--threads"]
            record += ["--nolineno"] + ["--native"] * args.native + ["--nonblocking"] * args.nonblocking
            subprocess.run(record, check=True, capture_output=True, timeout=args.seconds + 60)
            summary = load_gen.communicate(timeout=args.seconds + 60)[0]
        finally:
            if load_gen.poll() is None:
                load_gen.kill()
                load_gen.wait()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", summary) or re.search(r"([\d.]+) req/s", summary)
    rate = float(rps[1]) if rps else float("nan")
    print(f"{args.body} bodies, c={args.concurrency}: {rate:.0f} req/s under py-spy")
    expected = args.rate * int(args.seconds)
    threads = load(out)
    for name, stacks in sorted(threads.items()):
        busy = sum(n for _, n in stacks)
        print(f"thread {name}: busy {100 * busy / expected:.0f}% of the samples")
    total, by_file, self_time, inclusive = shares(threads["MainThread"])
    table("event loop, self time by file or library:", by_file, total, args.top)
    table("event loop, self time by function:", self_time, total, args.top)
    table("event loop, inclusive time, service code:", inclusive, total, args.top, only="service/")
    (RESULTS / f"{out.stem}.json").write_text(
        json.dumps(
            {
                "body": args.body,
                "concurrency": args.concurrency,
                "native": args.native,
                "event_loop_samples": total,
                "expected_samples": expected,
                "self_by_file": {k: n / total for k, n in by_file.most_common(args.top)},
                "self_by_function": {k: n / total for k, n in self_time.most_common(args.top)},
            },
            indent=2,
        )
    )
    print(f"\nraw stacks: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
