"""Starting and stopping the child processes of :mod:`service.core.offload`.

Children are forked from a zygote (:func:`service.core.offload_child.zygote`), one per service process,
started with the first child and again when it has died: it has imported numpy, onnxruntime and the
child's code once, so a child starts in milliseconds plus its model's load, not in the half second
those imports take. :func:`start_child` asks it for a child, hands the child its end of a connection
and the shared memory (passed file descriptors), and waits until the child has loaded and warmed up
its version. :class:`Child` is the parent's handle on one: its pid, the connection and the memory.
The zygote reaps its children; a child that outlives its :meth:`Child.stop` by
``STOP_TIMEOUT_S`` is killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

from service.core import offload_child
from service.core.offload_child import SharedMemory
from service.core.runtime import ModelLoadError

log = logging.getLogger(__name__)

#: Longest a child may take to load and warm up its version before it is killed and the version refused.
START_TIMEOUT_S = 300.0
#: Longest a stopped child may take to finish its batch and exit before it is killed.
STOP_TIMEOUT_S = 10.0
_INITIAL_BYTES = 1 << 20


class _Zygote:
    """The process children are forked from (:func:`service.core.offload_child.zygote`)."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}  # numpy's import starts no thread to fork over
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _ZYGOTE, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.socket = ours

    def fork(self, args: tuple[object, ...], fds: list[int]) -> int:
        """A new child running ``offload_child.main(conn, memory, *args)``; its pid. OSError when the
        zygote is gone."""
        socket.send_fds(self.socket, [pickle.dumps(args)], fds)
        answer = self.socket.recv(offload_child.PID.size)
        if len(answer) != offload_child.PID.size:
            raise OSError("the compute zygote exited")
        (pid,) = offload_child.PID.unpack(answer)
        if pid < 0:
            raise OSError("the compute zygote refused the request")
        return int(pid)

    def close(self) -> None:
        self.socket.close()


_ZYGOTE = (
    "import socket, sys\n"
    f"from {offload_child.__name__} import zygote\n"
    "zygote(socket.socket(fileno=int(sys.argv[1])))\n"
)
_zygote_lock = threading.Lock()
_zygote: _Zygote | None = None


def _fork(args: tuple[object, ...], fds: list[int]) -> int:
    """A child forked by this process's zygote, started (again) when it is not running."""
    with _zygote_lock:
        try:
            return _live_zygote().fork(args, fds)
        except OSError:  # it died since it was last seen: one new zygote, one more try
            return _live_zygote(replace=True).fork(args, fds)


def _live_zygote(replace: bool = False) -> _Zygote:
    """The zygote, a new one when there is none, it has exited, or ``replace``; hold the lock."""
    global _zygote
    if replace or _zygote is None or _zygote.process.poll() is not None:
        if _zygote is not None:
            _zygote.close()
        _zygote = _Zygote()
    return _zygote


def running(pid: int) -> bool:
    """Whether process ``pid`` runs: neither gone (the zygote reaps its children) nor a zombie (the
    orphan of a zygote that died, until whoever adopted it reaps it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


class Child:
    """One started child: its pid, its end of the connection, and the shared memory."""

    def __init__(self, pid: int, conn: Connection, memory: SharedMemory) -> None:
        self.pid = pid
        self.conn = conn
        self.memory = memory
        self.provider = ""  # the session's, once the child is ready
        self.threads = 0  # the session's intra-op threads, once the child is ready

    def stop(self) -> None:
        """Close the connection (the child exits after the batch it computes) and see it go in the
        background, killing it when it lingers."""
        with contextlib.suppress(OSError):
            self.conn.close()
        with contextlib.suppress(OSError):
            os.close(self.memory.fd)
        threading.Thread(target=self._reap, name="compute-reap", daemon=True).start()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def alive(self) -> bool:
        return running(self.pid)

    def _reap(self) -> None:
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while self.alive():
            if time.monotonic() > deadline:
                log.warning("compute process %d did not exit; killing it", self.pid)
                self.kill()
                return
            time.sleep(0.05)


def start_child(
    path: Path, sha256: str, providers: list[str], threads: int, inter_op_threads: int, warmup: list[int]
) -> Child:
    """Start a child for the version at ``path`` and wait until it is ready (its ``provider`` and
    ``threads`` are then the session's).
    Blocking (call it from a worker thread); ModelLoadError when the child refuses the version or dies."""
    fd = os.memfd_create(f"compute-{path.parent.name}-{path.name}", os.MFD_CLOEXEC)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.ftruncate(fd, _INITIAL_BYTES)
        memory = SharedMemory(fd)
        args = (str(path), sha256, providers, threads, inter_op_threads, warmup)
        try:
            pid = _fork(args, [theirs.fileno(), fd])
        except OSError as exc:
            raise ModelLoadError(f"{path}: cannot start a compute process: {exc}") from exc
    except BaseException:
        os.close(fd)
        ours.close()
        raise
    finally:
        theirs.close()
    child = Child(pid, Connection(ours.detach()), memory)
    try:
        if not child.conn.poll(START_TIMEOUT_S):
            raise ModelLoadError(f"{path}: not loaded within {START_TIMEOUT_S:g} s")
        status, *detail = offload_child.receive(child.conn)
    except (EOFError, OSError):
        child.stop()
        raise ModelLoadError(f"{path}: the compute process exited while loading (see the log)") from None
    except BaseException:
        child.kill()
        child.stop()
        raise
    if status != "ready":
        child.stop()
        raise ModelLoadError(detail[0])
    child.provider, child.threads = detail
    return child
