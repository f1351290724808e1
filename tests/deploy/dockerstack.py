"""Drive a real Docker engine for tests/deploy/test_compose.py: images, the compose project, clients.

Everything made here is found again by id or by a label of its own, so clean-up removes exactly that:
images by the ids built, containers and volumes by the compose project's label (a project name unique to
the run). Every wait is bounded and says what it waited for when it gives up.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.http as triton
import yaml
from tritonclient.utils import InferenceServerException

from tests.helpers.data import ROOT

TOOLS = ROOT / "tools"
TEST_OVERRIDE = ROOT / "deploy" / "test" / "compose.yml"


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def tool(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(TOOLS / script), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def wait_for(what: str, condition: Callable[[], bool], timeout: float, interval: float = 0.5) -> float:
    """Seconds until ``condition()`` held; AssertionError naming ``what`` after ``timeout`` seconds."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not after {timeout:.0f} s")
        time.sleep(interval)
    return time.monotonic() - start


@dataclass(frozen=True)
class Image:
    id: str
    tag: str
    build_seconds: float

    @property
    def size_bytes(self) -> int:
        return int(docker("image", "inspect", "--format", "{{.Size}}", self.id).stdout)

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = json.loads(
            docker("image", "inspect", "--format", "{{json .Config}}", self.id).stdout
        )
        return config


@dataclass(frozen=True)
class Images:
    """Everything the docker tests build, each from its repository Dockerfile on the local base."""

    serve: Image
    serve_gpu: Image
    train: Image
    prometheus: Image


def _all_image_ids() -> set[str]:
    return {i.removeprefix("sha256:") for i in docker("image", "ls", "-aq", "--no-trunc").stdout.split()}


class Builder:
    """``docker build`` of the repository's Dockerfiles, remembering every image each build created.

    The legacy builder (the engine here has no BuildKit front end to pull) keeps an image per step,
    and a multi-stage build's earlier stages are no parent of the final image: removing the final image
    alone would leave them behind. So each build's step images that did not exist before it are
    recorded, and :meth:`remove` deletes exactly those, newest first, never pruning anything else (a
    step taken from an earlier build's cache belongs to that build).
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.created: list[str] = []

    def build(
        self, dockerfile: str, tag: str, *, context: Path = ROOT, timeout: float = 1200, **args: str
    ) -> Image:
        before = _all_image_ids()
        build_args = [a for k, v in args.items() for a in ("--build-arg", f"{k}={v}")]
        command = [
            "docker",
            "build",
            "--network",
            "host",
            "--label",
            self.label,
            "-f",
            str(ROOT / dockerfile),
        ]
        start = time.monotonic()
        output = ""
        try:
            result = subprocess.run(
                [*command, *build_args, "-t", tag, str(context)],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                env={**os.environ, "DOCKER_BUILDKIT": "0"},
            )
            output = result.stdout
        except subprocess.TimeoutExpired as exc:
            output = (
                exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
            )
            raise
        finally:
            # Recorded even when the build failed or timed out: its finished steps are images too.
            new = _all_image_ids() - before
            steps = re.findall(r"^ ---> ([0-9a-f]{12})$", output, re.M)
            self.created += [full for short in dict.fromkeys(steps) for full in new if full.startswith(short)]
        seconds = time.monotonic() - start
        assert result.returncode == 0, (
            f"building {dockerfile} failed:\n{output[-3000:]}{result.stderr[-3000:]}"
        )
        image_id = docker("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
        return Image(image_id.removeprefix("sha256:"), tag, seconds)

    def remove(self) -> list[str]:
        """Delete the images the builds created (tags included); the ids that could not be deleted."""
        pending = list(dict.fromkeys(reversed(self.created)))
        # Builds run side by side share step images, so a parent may come before another build's child:
        # each pass deletes what it can, until a pass deletes nothing.
        while pending:
            failed = [
                i
                for i in pending
                if docker("image", "rm", "--force", "--no-prune", i, check=False).returncode
            ]
            present = _all_image_ids()
            failed = [i for i in failed if i in present]
            if len(failed) == len(pending):
                return failed
            pending = failed
        return []


class Compose:
    """The shipped docker-compose.yml plus deploy/test/compose.yml, as one compose project of this run.

    docker-compose 1.x cannot reset a list from an override, and the engine refuses published ports
    together with host networking, so the merged configuration is written out with each service's
    ``ports`` dropped, and Grafana (no image here) left out. Nothing else is changed.
    """

    def __init__(self, project: str, workdir: Path, env: dict[str, str]) -> None:
        self.project = project
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")} | env
        merged = self._run(
            "-f", "docker-compose.yml", "-f", str(TEST_OVERRIDE), "--profile", "train", "config"
        )
        self.config: dict[str, Any] = yaml.safe_load(merged.stdout)
        del self.config["services"]["grafana"]
        del self.config["volumes"]["grafana-data"]
        for service in self.config["services"].values():
            service.pop("ports", None)
        self.file = workdir / "compose.resolved.yml"
        self.file.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def _run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["docker-compose", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker-compose {' '.join(args)}:\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
            )
        return result

    def __call__(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """A docker-compose command on this project, from the repository root."""
        project = ["-p", self.project, "-f", str(self.file), "--project-directory", str(ROOT)]
        return self._run(*project, *args, timeout=timeout, check=check)

    def container(self, service: str) -> str:
        ids = docker(
            "ps",
            "-aq",
            "--filter",
            f"label=com.docker.compose.project={self.project}",
            "--filter",
            f"label=com.docker.compose.service={service}",
        ).stdout.split()
        assert len(ids) == 1, f"expected one {service} container, found {ids}"
        return ids[0]

    def volume(self, name: str) -> str:
        return f"{self.project}_{name}"

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.project}"
        return {
            "containers": docker("ps", "-aq", "--filter", label, check=False).stdout.split(),
            "volumes": docker("volume", "ls", "-q", "--filter", label, check=False).stdout.split(),
            "networks": docker("network", "ls", "-q", "--filter", label, check=False).stdout.split(),
        }

    def remove(self) -> None:
        """``down -v`` for the project; then anything still carrying its label, by id."""
        self("--profile", "train", "down", "--volumes", "--timeout", "30", check=False)
        left = self.leftovers()
        if left["containers"]:
            docker("rm", "--force", "--volumes", *left["containers"], check=False)
        if left["volumes"]:
            docker("volume", "rm", "--force", *left["volumes"], check=False)
        if left["networks"]:
            docker("network", "rm", *left["networks"], check=False)


def health(container: str) -> str:
    state = json.loads(docker("inspect", "--format", "{{json .State}}", container).stdout)
    return str(state.get("Health", {}).get("Status", "none")) if state["Running"] else state["Status"]


def volume_files(volume: str, image: str) -> dict[str, tuple[int, int]]:
    """Path (relative) -> (uid, gid) of everything in a named volume, read by a throwaway container."""
    script = (
        "import json, os\n"
        "out = {}\n"
        "for d, dirs, files in os.walk('/v'):\n"
        "    for n in dirs + files:\n"
        "        p = os.path.join(d, n); s = os.lstat(p)\n"
        "        out[os.path.relpath(p, '/v')] = [s.st_uid, s.st_gid]\n"
        "print(json.dumps(out))\n"
    )
    result = docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "python",
        "-v",
        f"{volume}:/v:ro",
        image,
        "-c",
        script,
    )
    return {k: (v[0], v[1]) for k, v in json.loads(result.stdout).items()}


# ---------------------------------------------------------------------------------------------- clients


@dataclass
class Outcome:
    ok: bool
    version: str  # the version that answered, or the failure's description
    status: int | None  # HTTP status of a failure (None: a transport error)
    after_mark: bool  # sent after the stream's mark was set (e.g. once `docker compose stop` began)


@dataclass
class Stream:
    """tritonclient.http requests in a loop on its own thread, each outcome recorded in order."""

    address: str  # host:port, as tritonclient wants it (no scheme)
    model: str
    images: np.ndarray
    mark: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    outcomes: list[Outcome] = field(default_factory=list)

    def _client(self) -> triton.InferenceServerClient:
        return triton.InferenceServerClient(self.address, connection_timeout=10, network_timeout=30)

    def run(self, deadline_s: float) -> None:
        end = time.monotonic() + deadline_s
        client = self._client()
        try:
            i = 0
            while not self.stop.is_set() and time.monotonic() < end:
                after = self.mark.is_set()
                batch = self.images[i % len(self.images)][None]
                request = triton.InferInput("image", list(batch.shape), "FP32")
                request.set_data_from_numpy(batch, binary_data=True)
                try:
                    result = client.infer(self.model, [request])
                    response = result.get_response()
                    probabilities = result.as_numpy("probabilities")
                    ok = probabilities is not None and probabilities.shape == (1, 10)
                    self.outcomes.append(Outcome(ok, str(response["model_version"]), None, after))
                except InferenceServerException as exc:
                    status = int(exc.status()) if str(exc.status() or "").isdigit() else None
                    self.outcomes.append(Outcome(False, str(exc.message())[:200], status, after))
                except Exception as exc:  # transport errors: refused, reset, timed out
                    self.outcomes.append(Outcome(False, type(exc).__name__, None, after))
                    # A fresh client: a broken connection must not poison the next request.
                    client.close()
                    client = self._client()
                    time.sleep(0.05)
                i += 1
        finally:
            client.close()


@contextmanager
def streaming(
    address: str, model: str, images: np.ndarray, clients: int = 2, deadline_s: float = 600
) -> Iterator[list[Stream]]:
    """``clients`` streams running for the duration of the block (at most ``deadline_s``)."""
    streams = [Stream(address, model, images[k * 100 :]) for k in range(clients)]
    threads = [threading.Thread(target=s.run, args=(deadline_s,), daemon=True) for s in streams]
    for t in threads:
        t.start()
    try:
        yield streams
    finally:
        for s in streams:
            s.stop.set()
        for t in threads:
            t.join(timeout=60)
