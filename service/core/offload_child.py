"""The child side of :mod:`service.core.offload`: one model version's onnxruntime session in a process of
its own, computing the batches its parent writes into their shared memory.

The child loads the version with :func:`service.core.runtime.load_model` (every check of the thread
mode), checks that it read the metadata the parent read (its sha256), warms up, and answers
``("ready", provider, intra-op threads)`` or ``("refused", reason)``. Then, until its connection
closes (the parent closed it, or died), it reads one request at a time: the inputs' names, dtypes,
shapes and offsets in the shared memory, where the outputs go, and the memory's size (the parent
grows it for a large batch). It runs the batch and answers ``("ok", seconds, outputs, size)``, with
each output's name, dtype, shape and offset, having grown the memory when the outputs did not fit,
or ``("failed", seconds, reason, size)``.

It ignores SIGINT: an interrupt at a terminal reaches the whole process group, and the parent, not the
child, decides when the compute stops (a drained shutdown computes what is queued).

Children are forked from a zygote (:func:`zygote`, started by :mod:`service.core.offload`): a process that has
imported numpy, onnxruntime and this module once and has no other thread, so that a child starts in
milliseconds, not in the half second those imports take. It reads one request at a time from its
socket (a SOCK_SEQPACKET pair): the pickled arguments of :func:`main`, with the child's connection and
shared memory as passed file descriptors. It forks, answers the child's pid, and lets the kernel reap
its children (SIGCHLD ignored). It exits when the socket closes, that is when its parent is gone.
"""

from __future__ import annotations

import mmap
import os
import pickle
import signal
import socket
import struct
import time
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from service.core.runtime import ModelLoadError, load_model

ALIGN = 64  # every array starts on a cache line


def aligned(offset: int) -> int:
    return -(-offset // ALIGN) * ALIGN


class SharedMemory:
    """The memfd both processes map. Either grows it (never shrinks it) while the other waits: the parent
    before a request, the child before its answer, and each message carries the size, which the other
    side follows. In between, nothing costs a system call."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = os.fstat(fd).st_size
        self.map = mmap.mmap(fd, self.size)

    def ensure(self, size: int) -> None:
        """Hold at least ``size`` bytes, growing the memory (at least doubling it) when it is smaller."""
        if size > self.size:
            os.ftruncate(self.fd, max(size, 2 * self.size))
            self.follow(os.fstat(self.fd).st_size)

    def follow(self, size: int) -> None:
        """Map the ``size`` bytes the other process grew the memory to. The old map closes when its last
        view is gone."""
        if size > self.size:
            self.size = size
            self.map = mmap.mmap(self.fd, size)

    def view(self, dtype: str, shape: Sequence[int], offset: int) -> np.ndarray:
        return np.ndarray(tuple(shape), np.dtype(dtype), buffer=self.map, offset=offset)


def send(conn: Connection, message: tuple[Any, ...]) -> None:
    """``message`` pickled (plain pickle: multiprocessing's own pickler costs more per message)."""
    conn.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))


def receive(conn: Connection) -> Any:
    """The next message; EOFError when the other side closed the connection."""
    return pickle.loads(conn.recv_bytes())


def main(
    conn: Connection,
    fd: int,
    path: str,
    sha256: str,
    providers: list[str],
    threads: int,
    inter_op_threads: int,
    warmup_sizes: list[int],
) -> None:
    """The child process's work: load, warm up, then compute until ``conn`` closes (``fd``: the memory)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    memory = SharedMemory(fd)
    try:
        runtime = load_model(
            Path(path), providers=providers, intra_op_threads=threads, inter_op_threads=inter_op_threads
        )
        if runtime.metadata.sha256 != sha256:
            raise ModelLoadError(f"{path}: metadata.json changed while the version was loading")
        runtime.warm_up(warmup_sizes)
    except ModelLoadError as exc:
        send(conn, ("refused", str(exc)))
        return
    send(conn, ("ready", runtime.provider, runtime.intra_op_threads))
    while True:
        try:
            inputs, out_offset, size = receive(conn)
        except (EOFError, OSError):
            return
        start = time.perf_counter()
        try:
            memory.follow(size)
            feed = {name: memory.view(dtype, shape, offset) for name, dtype, shape, offset in inputs}
            results = runtime.run(feed)
            outputs = _place(memory, results, out_offset)
        except Exception as exc:  # the parent logs it and fails the batch; the child goes on
            send(conn, ("failed", time.perf_counter() - start, f"{type(exc).__name__}: {exc}", memory.size))
            continue
        finally:
            feed = {}  # no view of the map outlives the batch, so a later growth can close it
        send(conn, ("ok", time.perf_counter() - start, outputs, memory.size))


def _place(
    memory: SharedMemory, results: dict[str, np.ndarray], offset: int
) -> list[tuple[str, str, tuple[int, ...], int]]:
    """Copy the outputs into the shared memory from ``offset`` on; their names, dtypes, shapes, offsets."""
    arrays = {name: np.asarray(value) for name, value in results.items()}
    for name, array in arrays.items():
        if array.dtype.hasobject:
            raise TypeError(f"output {name!r} has dtype {array.dtype}, which shared memory cannot hold")
    places, end = [], offset
    for name, array in arrays.items():
        places.append((name, array.dtype.str, array.shape, end))
        end = aligned(end + array.nbytes)
    memory.ensure(end)
    for (_, dtype, shape, at), array in zip(places, arrays.values(), strict=True):
        memory.view(dtype, shape, at)[...] = array
    return places


PID = struct.Struct("<q")


def zygote(sock: socket.socket) -> None:
    """Fork a child running :func:`main` for every request on ``sock`` until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, 1 << 16, 2)
        except OSError:
            return
        if not message:
            return
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            sock.sendall(PID.pack(-1))
            continue
        pid = os.fork()
        if pid == 0:  # the child: it never returns into the zygote's loop
            code = 1
            try:
                sock.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                main(Connection(fds[0]), fds[1], *pickle.loads(message))
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)
        sock.sendall(PID.pack(pid))
