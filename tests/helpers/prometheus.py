"""Start a real Prometheus (the apt package) on a free loopback port, and stop exactly that process."""

from __future__ import annotations

import shutil
import subprocess
import time
from contextlib import suppress
from pathlib import Path

import httpx

from bench.processes import exited, until_bound
from tests.helpers.server import free_port, stop_process


def start_prometheus(config: Path, storage: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Prometheus with ``config`` and its data under ``storage``, ready (``/-/ready``): its process and
    URL. Started on a new port when the one chosen was taken first (``until_bound``)."""

    def start() -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    shutil.which("prometheus") or "prometheus",
                    f"--config.file={config}",
                    f"--storage.tsdb.path={storage}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            with suppress(httpx.HTTPError):
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    return process, url
            time.sleep(0.2)
        if process.poll() is None:
            stop_process(process)
            raise TimeoutError(f"prometheus not ready after 60 s; see {log}")
        raise exited("prometheus", process, log)

    return until_bound(start)
