"""Dynamic batching: one queue, counted in rows, and one consumer task per model version.

``submit`` admits a request (or refuses it at once: :class:`Overloaded` when the queue is full,
:class:`Unavailable` when stopping), splits it into jobs of at most ``max_batch_size`` rows, appends the
jobs to a deque and awaits their futures. Each job carries its own future, created before it is queued.

The consumer task sleeps on an :class:`asyncio.Event` until there is work, takes whole jobs in FIFO order,
never more than ``max_batch_size`` rows, joins their inputs (on the loop, so that the worker holds the
interpreter lock as briefly as it can between two runs) and hands the batch to a job in the executor:
``run``, check every output's row count, slice each job's rows back out, and send the answers to the loop
(``call_soon_threadsafe``). One batch computes at a time; submissions queue meanwhile, so batches grow
under load. A failed batch fails all of its jobs with a generic :class:`InferenceFailed`
and is logged once; later batches are unaffected.

With ``stage`` (``SERVE_BATCH_STAGING``), a full batch of predictions that forms while another computes
is taken at once and staged behind it: the worker starts it as soon as it is done, without waiting for the
loop to see the answer first, which it would otherwise do while the loop thread keeps the interpreter lock
(docs/hotpath.md, "The compute worker and the interpreter lock"). One batch at most is staged; a batch
that is not full still waits for the answer and grows meanwhile. A job whose deadline passes, or whose
client goes away, after its batch was taken but before the worker starts that batch (staged, or waiting
for the worker) is left out of the compute (answered :class:`DeadlineExceeded` when the batch starts).
Staged rows have left the queue: they no longer count in ``queue_rows`` or against ``max_queue_rows``, so
the queue holds up to one batch more.

With an offload (``run`` is an :class:`Offload`: compute in a process of its own,
:mod:`service.core.offload`), a batch goes to it on the loop instead of to the executor, its inputs
unjoined, and its answer comes back on the loop; staging does not apply. With ``lone`` as well, a batch
that is the only request in flight computes in the executor with ``lone`` instead: a lone client gains
nothing from the offload and would pay for two hand-offs between processes per request.

When a batch goes (:mod:`service.core.batchwait`): ``max_batch_size`` queued rows go at once, and so does
everything while stopping. Fewer rows go when the wait policy says so. ``"adaptive"`` (the default) holds
them only when company is likely: the mean gap between arrivals is under ``max_queue_delay_us`` and at
least half of the recent arrivals found another request in flight (a lone client in a closed loop never
does, so its requests go at once however fast it is), and not once the queue holds as many requests as
were lately in flight at once. A held batch goes at the first of: four mean gaps after the last arrival
(the stream has paused), ``max_queue_delay_us`` after its oldest request, and one batch's compute time
before its earliest deadline. ``"fixed"`` is Triton's rule: the oldest request waits
``max_queue_delay_us`` for the batch to fill. Each batch's hold time (0: none) goes to the observer's
``on_wait``.

A hold never polls. Every arrival wakes the consumer, which asks the policy again; a timer closes the hold
when nobody arrives, but never sooner than one tick of the event loop's timers (``TIMER_TICK``, 1 ms:
libuv and epoll count whole milliseconds, so a shorter timer fires at once and the consumer would spin
through the loop until the time came). A hold can therefore outlast its close time by up to one tick when
no request arrives to end it sooner.

A job leaves the queue in one of two ways: taken into a batch, or dropped (deadline passed, client went
away, shutdown). Dropped jobs stay in the deque as tombstones (``queued`` is False) until the consumer
pops them, so dropping is O(1); their rows leave ``queue_rows`` at once. Deadlines are ``time.monotonic()``
seconds (the batcher's ``clock``), enforced by one timer for the earliest queued deadline (re-armed for
the next when it fires), so an expired request is answered at its deadline (to the timer tick) without a
timer per request; a job whose batch has started is always computed and answered. A batcher belongs to
the event loop that started it; its worker touches nothing of the loop's but through
``call_soon_threadsafe`` (and the staged batch, under a lock).

Two lanes: ``submit(..., background=True)`` queues work that must not delay predictions (the rows of
an explanation, :mod:`service.core.attribution`). Background jobs wait in a deque of their own and
compute only when the prediction lane is idle: no prediction queued, computing or being answered. A batch is
then made of background jobs alone, FIFO, of at most ``max_background_rows`` rows; a batch with predictions
in it is never filled with background rows, because on a CPU every row adds to the batch's compute
time, and the predictions in it would wait for them. A batch that is computing is never interrupted, so
a prediction that arrives meanwhile waits for at most one background batch: keep
``max_background_rows`` small (a few hundred microseconds of compute). Under a load that never leaves
the prediction lane idle, background work waits, and its deadline bounds how long.

Background work is admitted only while the whole queue (both lanes) has room, and a prediction only
looks at the prediction lane's rows, so queued background rows never get a prediction refused;
``queue_rows`` counts both. Background arrivals do not feed the wait policy and are never held for
company, and their time in the queue is not reported (``on_dequeue``); their batches are (``on_batch``,
``on_wait``). Deadlines, cancellation, draining and failures treat both lanes alike.

With a ``tracer`` (:class:`BatchTracing`, given only when tracing is on), each job carries what the tracer
returned when it was submitted, and the tracer hears when its batch starts and finishes or when it is
dropped; without one, the batcher's only tracing work is one ``is None`` test per job and per batch.

One module of this size on purpose: the :class:`Batcher` is one class whose queue, expiry timer,
consumer and two lanes share one state on the event loop; split, that state would travel between
modules on every request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from service.core.batchwait import make_policy
from service.errors import DeadlineExceeded, InferenceFailed, InvalidInput, Overloaded, Unavailable
from service.settings import WaitName

logger = logging.getLogger(__name__)
#: Shortest timer a hold arms, in seconds: the resolution of event-loop timers (see the module docstring).
TIMER_TICK = 0.001
_EXPIRED = "deadline exceeded before the request was computed"
_SHUTTING_DOWN = "server is shutting down"

Arrays = dict[str, np.ndarray]
RunFn = Callable[[Arrays], Arrays]
"""Blocking inference on one batch; called from one thread at a time per batcher."""


class Offload(Protocol):
    """Compute that runs elsewhere and answers on the event loop
    (:class:`service.core.offload.ProcessRuntime`)."""

    def attach(self, loop: asyncio.AbstractEventLoop) -> None: ...

    def submit(
        self, parts: Sequence[Arrays], done: Callable[[Arrays | None, float, str | None], None]
    ) -> None: ...


class BatchObserver(Protocol):
    """Receives the batcher's measurements (see :mod:`service.telemetry.metrics`)."""

    def on_batch(self, rows: int, compute_seconds: float) -> None:
        """Once per computed batch, successful or failed."""

    def on_dequeue(self, queued_seconds: float) -> None:
        """Once per prediction job taken into a batch: seconds from submit to batch start."""

    def on_queue_rows(self, rows: int) -> None:
        """Whenever the number of queued rows changes."""

    def on_wait(self, seconds: float) -> None:
        """Once per batch, before it computes: how long it was held open for more rows (0: not at all)."""


class BatchTracing(Protocol):
    """Receives each job's and batch's life when tracing is on (see
    :class:`service.telemetry.tracing.BatchTracer`)."""

    def submitted(self, rows: int) -> Any:
        """In the submitting request's context: what its job carries (None: the request is not traced)."""

    def started(self, traces: Sequence[Any], rows: int, held_s: float) -> Any:
        """A batch of these jobs' traces was taken; returns what :meth:`finished` gets (None: untraced)."""

    def finished(self, batch: Any, traces: Sequence[Any], compute_s: float, error: str | None) -> None:
        """The batch was computed (``error``: the message its jobs were failed with)."""

    def dropped(self, trace: Any, error: BaseException | None) -> None:
        """A traced job left the queue uncomputed (``error`` None: its client went away)."""


class _Job:
    __slots__ = ("background", "deadline", "enqueued", "future", "inputs", "queued", "rows", "trace")

    def __init__(
        self,
        inputs: Arrays,
        rows: int,
        future: asyncio.Future[Arrays],
        deadline: float | None,
        now: float,
        trace: Any = None,
        background: bool = False,
    ) -> None:
        self.inputs = inputs
        self.rows = rows
        self.future = future
        self.deadline = deadline
        self.enqueued = now
        self.background = background
        self.queued = True  # counted in queue_rows: neither taken into a batch nor dropped
        self.trace = trace  # the tracer's, when tracing is on and the request is traced


class _Batch:
    __slots__ = ("inputs", "jobs", "traced")

    def __init__(self, jobs: list[_Job], traced: Any, inputs: Arrays | None) -> None:
        self.jobs = jobs
        self.traced = traced  # what the tracer's started() returned (tracing on), else None
        self.inputs = inputs  # the jobs' inputs joined on the loop (see _join); None: the worker joins them


class Batcher:
    """Dynamic batcher for one model version; see the module docstring for the semantics."""

    def __init__(
        self,
        run: RunFn | Offload,
        *,
        max_batch_size: int,
        max_queue_delay_us: int,
        max_queue_rows: int,
        executor: concurrent.futures.Executor | None = None,
        observer: BatchObserver | None = None,
        name: str = "",
        wait: WaitName = "adaptive",
        clock: Callable[[], float] | None = None,
        tracer: BatchTracing | None = None,
        max_background_rows: int | None = None,
        stage: bool = False,
        lone: RunFn | None = None,
    ) -> None:
        """``wait`` names the policy for batches that are not full (see the module docstring). ``clock``
        gives the seconds that deadlines, waits and compute times are measured in (default:
        ``time.monotonic``, and ``time.perf_counter`` for compute). ``tracer``: only when tracing is on.
        ``max_background_rows`` bounds a batch of background work (default ``max_batch_size``; a larger
        single job still goes whole). ``stage``: a full batch may wait behind the one computing, for the
        worker to start it (see the module docstring). ``lone``, with an offload ``run``: computes in the
        executor a batch that is the only request in flight, which the offload would make wait for
        two hand-offs between processes with nothing else to do meanwhile."""
        if max_batch_size < 1 or max_queue_delay_us < 0 or max_queue_rows < 1:
            raise ValueError("need max_batch_size >= 1, max_queue_delay_us >= 0, max_queue_rows >= 1")
        self._offload: Offload | None = None if callable(run) else run
        self._run: RunFn | None = run if callable(run) else lone
        self._max_batch_size = max_batch_size
        self._max_background_rows = min(max_background_rows or max_batch_size, max_batch_size)
        self._policy = make_policy(wait, max_queue_delay_us / 1e6)
        self._clock = clock or time.monotonic
        self._stopwatch = clock or time.perf_counter
        self._max_queue_rows = max_queue_rows
        self._owns_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"batcher-{name}"
        )
        self._observer = observer
        self._tracer = tracer
        self._name = name
        self._queue: deque[_Job] = deque()
        self._queue_rows = 0  # prediction lane
        self._background: deque[_Job] = deque()
        self._background_rows = 0
        self._pending = 0
        self._pending_background = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._holding = False  # the consumer holds a batch open: every arrival wakes it
        self._expiry: asyncio.TimerHandle | None = None  # fires at _expires_at, the earliest deadline
        self._expires_at = math.inf
        # Batches handed to the worker and not yet answered, in order: the one computing, and at most one
        # full batch staged behind it (see _hand).
        self._out: deque[_Batch] = deque()
        self._lock = threading.Lock()  # guards _staged and _working, shared with the worker thread
        self._stage = stage and self._offload is None
        self._staged: _Batch | None = None
        self._working = False  # an executor job of this batcher is queued or running
        self._closing = False  # stop() was called: refuse submits, dispatch without waiting for the delay

    @property
    def queue_rows(self) -> int:
        """Rows admitted and not yet taken into a batch, in both lanes."""
        return self._queue_rows + self._background_rows

    @property
    def background_rows(self) -> int:
        """Rows of background work admitted and not yet taken into a batch."""
        return self._background_rows

    @property
    def pending(self) -> int:
        """Requests submitted and not yet answered (queued or computing, both lanes); 0 means idle."""
        return self._pending + self._pending_background

    @property
    def accepting(self) -> bool:
        """Whether ``submit`` admits requests: started and not stopping."""
        return self._task is not None and not self._closing

    def start(self) -> None:
        """Start the consumer task; call from inside the running event loop."""
        if self._task is None and not self._closing:
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self._consume(), name=f"batcher-{self._name}")
            if self._offload is not None:
                self._offload.attach(self._loop)

    async def submit(
        self, inputs: Arrays, *, deadline: float | None = None, background: bool = False
    ) -> Arrays:
        """Compute ``inputs`` (all arrays sharing the leading row dimension) in some batch; ``background``
        work goes in the lane that only fills what predictions leave (see the module docstring).

        Raises :class:`Unavailable` when not accepting, :class:`Overloaded` when the queue is full,
        :class:`DeadlineExceeded` when ``deadline`` (``time.monotonic()`` seconds) passes before the
        request's compute starts, :class:`InferenceFailed` when its batch fails.
        """
        loop = self._loop
        if loop is None or not self.accepting:
            message = _SHUTTING_DOWN if self._closing else f"model '{self._name}' is not ready"
            raise Unavailable(message)
        rows = len(next(iter(inputs.values())))
        if rows < 1:
            raise InvalidInput("a request needs at least one row")
        now = self._clock()
        if deadline is not None and deadline <= now:
            raise DeadlineExceeded(_EXPIRED)
        queued = self._queue_rows + (self._background_rows if background else 0)
        if queued + rows > self._max_queue_rows:
            raise Overloaded(
                f"model '{self._name}' queue is full ({queued} rows queued, limit {self._max_queue_rows})",
                retry_after_s=1,
            )
        if not background:
            self._policy.arrived(now, self._pending)
        size = self._max_batch_size
        tracer = self._tracer
        if rows <= size:
            trace = None if tracer is None else tracer.submitted(rows)
            jobs = [_Job(inputs, rows, loop.create_future(), deadline, now, trace, background)]
        else:  # each chunk is its own job; views, not copies
            chunks = [{k: v[i : i + size] for k, v in inputs.items()} for i in range(0, rows, size)]
            jobs = []
            for i, c in enumerate(chunks):
                part = min(size, rows - i * size)
                trace = None if tracer is None else tracer.submitted(part)
                jobs.append(_Job(c, part, loop.create_future(), deadline, now, trace, background))
        before = self._background_rows + self._queue_rows if background else self._queue_rows
        if background:
            self._background.extend(jobs)
            self._background_rows += rows
            self._pending_background += 1
        else:
            self._queue.extend(jobs)
            self._queue_rows += rows
            self._pending += 1
        self._notify_queue_rows()
        # A first prediction wakes the consumer even when background work is queued: it may be waiting
        # for the prediction lane to go idle. Otherwise the consumer is computing, or holding a batch
        # open, and looks at the queue afterwards.
        if before == 0 or self._queue_rows >= size or (self._holding and not background):
            self._wakeup.set()
        if deadline is not None and deadline < self._expires_at:
            self._arm_expiry(loop, deadline)
        try:
            if len(jobs) == 1:
                return await jobs[0].future
            return _concat(await asyncio.gather(*(job.future for job in jobs)))
        except BaseException:
            for job in jobs:  # client went away or a chunk failed: skip what has not started
                self._drop(job, None)
            raise
        finally:
            if background:
                self._pending_background -= 1
            else:
                self._pending -= 1
                if self._pending == 0 and self._background_rows:
                    self._wakeup.set()  # the prediction lane is idle: background work may go

    async def stop(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Stop admitting now; compute what is queued (``drain``) or fail it with :class:`Unavailable`.

        When ``timeout`` expires, queued jobs and the batch computing are failed with
        :class:`Unavailable` and the consumer is cancelled (the worker thread finishes on its own).
        Idempotent; an owned executor is shut down without blocking the event loop.
        """
        self._closing = True
        if not drain:
            self._fail_queued()
        self._wakeup.set()
        task = self._task
        if task is not None and not task.done():
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done:
                self._fail_queued()
                with self._lock:
                    self._staged = None  # the worker stops after the batch it computes
                for batch in self._out:
                    for job in batch.jobs:
                        self._drop(job, Unavailable(_SHUTTING_DOWN))
                task.cancel()
                await asyncio.wait({task})
        self._fail_queued()  # never started, or the consumer ended early
        if self._expiry is not None:
            self._expiry.cancel()
        if self._owns_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _drop(self, job: _Job, error: Exception | None) -> None:
        """Answer ``job`` with ``error`` (cancel it when None) and release its rows if still queued."""
        if job.queued:
            self._unqueue(job)
            self._notify_queue_rows()
            if job.trace is not None and self._tracer is not None:
                self._tracer.dropped(job.trace, error)
        if not job.future.done():
            if error is None:
                job.future.cancel()
            else:
                job.future.set_exception(error)

    def _unqueue(self, job: _Job) -> None:
        job.queued = False
        if job.background:
            self._background_rows -= job.rows
        else:
            self._queue_rows -= job.rows

    def _arm_expiry(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        self._expires_at = when
        self._expiry = loop.call_later(max(when - self._clock(), TIMER_TICK), self._expire)

    def _expire(self) -> None:
        """The expiry timer: answer every queued job past its deadline, then re-arm for the next one."""
        self._expiry, self._expires_at = None, math.inf
        now, upcoming = self._clock(), math.inf
        for job in itertools.chain(self._queue, self._background):
            if job.queued and job.deadline is not None:
                if job.deadline <= now:
                    self._drop(job, DeadlineExceeded(_EXPIRED))
                else:
                    upcoming = min(upcoming, job.deadline)
        if upcoming < math.inf:
            self._arm_expiry(asyncio.get_running_loop(), upcoming)

    def _fail_queued(self) -> None:
        for queue in (self._queue, self._background):
            while queue:
                self._drop(queue.popleft(), Unavailable(_SHUTTING_DOWN))

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        queue, background, wakeup = self._queue, self._background, self._wakeup
        held_since: float | None = None  # when the consumer began holding the next batch open
        while True:
            while queue and not queue[0].queued:
                queue.popleft()  # tombstones of dropped jobs
            while background and not background[0].queued:
                background.popleft()
            if self._out:  # a batch is computing: only a full batch of predictions goes, staged behind it
                if self._stage and len(self._out) == 1 and self._queue_rows >= self._max_batch_size:
                    self._hand(loop, self._take(), 0.0)
                    continue
                wakeup.clear()  # set by its answer, or by an arrival that fills a batch
                await wakeup.wait()
                continue
            if not queue and (not background or (self._pending and not self._closing)):
                if self._closing:
                    return
                held_since = None
                wakeup.clear()  # a prediction arriving, or the last one answered, sets it
                await wakeup.wait()
                continue
            if queue and not self._closing and self._queue_rows < self._max_batch_size:
                now = self._clock()
                if await self._hold(loop, now):
                    held_since = now if held_since is None else held_since
                    continue
            held = 0.0 if held_since is None else max(0.0, self._clock() - held_since)
            held_since = None
            self._hand(loop, self._take(), held)

    async def _hold(self, loop: asyncio.AbstractEventLoop, now: float) -> bool:
        """Wait while the policy keeps the queued rows open (until an arrival or the timer); False if
        they go now."""
        live = [j for j in self._queue if j.queued]
        deadlines = [j.deadline for j in live if j.deadline is not None]
        close = self._policy.close_at(live[0].enqueued, min(deadlines) if deadlines else None, len(live))
        if close <= now:
            return False
        self._holding = True
        self._wakeup.clear()
        timer = loop.call_later(max(close - now, TIMER_TICK), self._wakeup.set)
        try:
            await self._wakeup.wait()
        finally:
            timer.cancel()
            self._holding = False
        return True

    def _take(self) -> list[_Job]:
        """Pop whole jobs, FIFO: up to ``max_batch_size`` rows of predictions, or when there are none,
        up to ``max_background_rows`` of background work; drop the expired and abandoned."""
        batch, rows, now = list[_Job](), 0, self._clock()
        for queue, limit in (
            (self._queue, self._max_batch_size),
            (self._background, self._max_background_rows),
        ):
            if batch:
                break
            while queue:
                job = queue[0]
                if job.queued and not job.future.done() and (job.deadline is None or job.deadline > now):
                    if batch and rows + job.rows > limit:
                        break
                    self._unqueue(job)
                    batch.append(job)
                    rows += job.rows
                elif job.queued:  # timer or cancellation callback not run yet
                    self._unqueue(job)
                    self._not_computed(job)
                queue.popleft()
        self._notify_queue_rows()
        if self._observer is not None:
            for job in batch:
                if not job.background:  # its wait for an idle lane says nothing about predictions'
                    self._observe(self._observer.on_dequeue, now - job.enqueued)
        return batch

    @staticmethod
    def _trace_start(tracer: BatchTracing, batch: list[_Job], held: float) -> Any:
        """Tell the tracer a batch starts (only with tracing on); what :meth:`_compute` hands back."""
        try:
            return tracer.started([job.trace for job in batch], sum(j.rows for j in batch), held)
        except Exception:  # tracing must never stall the queue
            logger.exception("batch tracer failed")
            return None

    def _hand(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job], held: float) -> None:
        """Give a batch taken from the queue to the worker: staged behind the batch computing, which the
        worker runs next without a turn of the event loop, or in a new executor job when none runs."""
        if not jobs:
            return
        traced = None
        if self._observer is not None:
            self._observe(self._observer.on_wait, held)
        if self._tracer is not None:
            traced = self._trace_start(self._tracer, jobs, held)
        if self._offload is not None and not (
            self._run is not None and len(jobs) == 1 and self._pending + self._pending_background == 1
        ):
            batch = _Batch(jobs, traced, None)
            self._out.append(batch)
            sizes = [job.rows for job in jobs]
            self._offload.submit(
                [job.inputs for job in jobs],
                lambda outputs, seconds, error: self._answered(batch, sizes, outputs, seconds, error),
            )
            return
        batch = _Batch(jobs, traced, _join(jobs))
        self._out.append(batch)
        with self._lock:
            if self._working:
                self._staged = batch
                return
            self._working = True
        try:
            self._executor.submit(self._work, loop, batch)
        except RuntimeError:  # executor shut down under us; keep the consumer alive
            logger.exception("model '%s': cannot schedule a batch", self._name)
            self._working = False
            self._computed(batch, batch.jobs, None, 0.0)

    def _work(self, loop: asyncio.AbstractEventLoop, batch: _Batch | None) -> None:
        """Worker thread: compute ``batch``, then the batch staged meanwhile, until none is. The next batch
        is taken before this one's answer goes to the loop, so the loop, once it has the answer, never
        finds a staged batch that the worker has not taken (and stages at most one at a time). Jobs
        that expired or were abandoned while staged are left out of the compute."""
        while batch is not None:
            done, now = batch, self._clock()
            live = [j for j in done.jobs if not j.future.done() and (j.deadline is None or j.deadline > now)]
            if live:
                joined = done.inputs if len(live) == len(done.jobs) else None
                results, seconds = self._run_batch([j.inputs for j in live], [j.rows for j in live], joined)
            else:
                results, seconds = [], 0.0
            with self._lock:
                batch, self._staged = self._staged, None
                if batch is None:
                    self._working = False
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits for the answers
                loop.call_soon_threadsafe(self._computed, done, live, results, seconds)

    def _answered(
        self, batch: _Batch, sizes: list[int], outputs: Arrays | None, seconds: float, error: str | None
    ) -> None:
        """On the loop: the offload's answer to ``batch``, checked and split as :meth:`_run_batch` does."""
        results = None
        if outputs is not None:
            try:
                results = _split(outputs, sizes)
            except ValueError as exc:
                error = str(exc)
        if results is None:
            logger.error("model '%s': batch of %d rows failed: %s", self._name, sum(sizes), error)
        self._computed(batch, batch.jobs, results, seconds)

    def _computed(
        self, batch: _Batch, live: list[_Job], results: list[Arrays] | None, seconds: float
    ) -> None:
        """On the loop: answer a batch's ``live`` jobs, those computed (all with :class:`InferenceFailed`
        if it failed), and the rest (expired while staged) with :class:`DeadlineExceeded`."""
        if batch in self._out:
            self._out.remove(batch)
        if len(live) < len(batch.jobs):
            computed = {id(job) for job in live}
            for job in batch.jobs:
                if id(job) not in computed:
                    self._not_computed(job)
        if not live:
            self._wakeup.set()
            return
        rows = sum(job.rows for job in live)
        self._policy.computed(rows, seconds)
        if self._observer is not None:
            self._observe(self._observer.on_batch, rows, seconds)
        if batch.traced is not None and self._tracer is not None:
            error = None if results is not None else InferenceFailed().message
            try:
                self._tracer.finished(batch.traced, [job.trace for job in live], seconds, error)
            except Exception:
                logger.exception("batch tracer failed")
        # The consumer first, then the answers: it looks at the lanes before the answered requests resume,
        # as it did when it answered them itself.
        self._wakeup.set()
        for i, job in enumerate(live):
            if not job.future.done():
                if results is None:
                    job.future.set_exception(InferenceFailed())
                else:
                    job.future.set_result(results[i])

    def _not_computed(self, job: _Job) -> None:
        """A job taken from the queue and not computed: past its deadline, or its client went away."""
        expired = not job.future.done()
        if job.trace is not None and self._tracer is not None:
            self._tracer.dropped(job.trace, DeadlineExceeded(_EXPIRED) if expired else None)
        if expired:
            job.future.set_exception(DeadlineExceeded(_EXPIRED))

    def _run_batch(
        self, parts: list[Arrays], sizes: list[int], joined: Arrays | None = None
    ) -> tuple[list[Arrays] | None, float]:
        """Worker thread: concatenate (unless ``joined`` is the parts already joined), run, check row
        counts, split. Never raises."""
        start = self._stopwatch()
        rows = sum(sizes)
        try:
            assert self._run is not None, "an offloaded batcher computes in the executor only with lone"
            results = _split(self._run(joined if joined is not None else _concat(parts)), sizes)
        except Exception:
            logger.exception("model '%s': batch of %d rows failed", self._name, rows)
            return None, self._stopwatch() - start
        return results, self._stopwatch() - start

    def _notify_queue_rows(self) -> None:
        if self._observer is not None:
            self._observe(self._observer.on_queue_rows, self.queue_rows)

    @staticmethod
    def _observe(method: Callable[..., None], *args: float) -> None:
        try:
            method(*args)
        except Exception:  # a broken observer must not stall the queue
            logger.exception("batch observer failed")


def _split(outputs: Arrays, sizes: list[int]) -> list[Arrays]:
    """Each job's rows of a batch's ``outputs``; ValueError when an output has not one row per input row."""
    rows = sum(sizes)
    for k, v in outputs.items():
        if v.ndim == 0 or v.shape[0] != rows:
            raise ValueError(f"output {k!r} has shape {v.shape}, expected {rows} rows")
    if len(sizes) == 1:
        return [outputs]
    bounds = itertools.pairwise(itertools.accumulate(sizes, initial=0))
    return [{k: v[a:b] for k, v in outputs.items()} for a, b in bounds]


def _join(jobs: list[_Job]) -> Arrays | None:
    """The jobs' inputs as one batch, joined on the event loop's thread (the worker's time with the
    interpreter lock is what the loop waits for). None when they do not join: the worker then tries, and
    fails the batch as a failed compute, as before."""
    try:
        return _concat([job.inputs for job in jobs])
    except Exception:
        return None


def _concat(parts: Sequence[Arrays]) -> Arrays:
    """Arrays of the same names joined along the rows, in order; a single part as it is (no copy)."""
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
