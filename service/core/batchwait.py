"""When the batcher closes a batch that is not full: the wait policies.

The consumer asks its policy for a close time whenever the queue holds fewer than ``max_batch_size`` rows
and no batch is computing, and again at every arrival while it holds. Both policies are pure arithmetic on
the times they are given (``time.monotonic()`` seconds by default), so they are tested without an event loop.

:class:`FixedWait` (``SERVE_BATCH_WAIT=fixed``) is Triton's rule: the oldest queued request waits up to
``max_queue_delay_us`` for the batch to fill. It taxes a lone client the whole delay on every request.

:class:`AdaptiveWait` (the default) waits only when company is likely, from three things it measures:

- the **gap** between arrivals (an exponentially weighted mean, weight 1/4);
- the **overlap**: the weighted share (weight 1/8) of arrivals that found another request in flight
  (queued, computing or being answered). A lone client in a closed loop never overlaps itself: its next
  request comes only after this one's answer, so waiting can never bring it company;
- the **concurrency**: the most requests in flight at once lately (a peak that decays by 1/64 an arrival);
- the **compute time** of a batch (weighted mean, weight 1/4).

It dispatches at once when the mean gap is unknown or at least ``max_queue_delay_us``, when fewer than
half of the recent arrivals overlapped, or when the queue already holds as many requests as the recent
concurrency (everyone seen lately is here: in a closed loop with fewer clients than ``max_batch_size``,
nobody else can come). Otherwise it holds the batch until the first of:

- ``max_queue_delay_us`` after the oldest queued request arrived;
- four mean gaps after the last arrival: the stream has paused (at a few thousand requests a second
  that is longer than the default 500 us, so a loaded server batches as the fixed rule does);
- the earliest queued deadline less one batch's compute time, so that waiting never makes a request miss
  a deadline that dispatching at once would have met.

A full batch goes at once under both policies.
"""

from __future__ import annotations

from typing import Protocol

from service.settings import WaitName

GAP_WEIGHT = 0.25
OVERLAP_WEIGHT = 0.125
PEAK_DECAY = 1 - 1 / 64
COMPUTE_WEIGHT = 0.25
MIN_OVERLAP = 0.5  # share of recent arrivals that found company, below which nobody waits
QUIET_GAPS = 4.0  # mean gaps without an arrival after which the stream counts as paused


class WaitPolicy(Protocol):
    """Decides how long a batch that is not full stays open. Called on the event loop only."""

    def arrived(self, now: float, in_flight: int) -> None:
        """A request arrived at ``now``; ``in_flight`` other requests were submitted and not yet answered."""

    def computed(self, rows: int, seconds: float) -> None:
        """A batch of ``rows`` rows took ``seconds`` to compute."""

    def close_at(self, oldest: float, earliest_deadline: float | None, queued: int) -> float:
        """When to dispatch the queued rows: ``oldest`` is the oldest queued request's arrival time,
        ``earliest_deadline`` the earliest deadline among the queued requests (None: none has one),
        ``queued`` how many requests are queued. A time not after now means at once."""


class FixedWait:
    """The oldest request waits up to ``max_delay`` seconds for the batch to fill; nothing is measured."""

    def __init__(self, max_delay: float) -> None:
        self._max_delay = max_delay

    def arrived(self, now: float, in_flight: int) -> None:
        pass

    def computed(self, rows: int, seconds: float) -> None:
        pass

    def close_at(self, oldest: float, earliest_deadline: float | None, queued: int) -> float:
        return oldest + self._max_delay


class AdaptiveWait:
    """Waits for company only when it is likely; see the module docstring for the rule."""

    def __init__(self, max_delay: float) -> None:
        self._max_delay = max_delay
        self._last: float | None = None
        self._gap: float | None = None
        self._overlap = 0.0
        self._peak = 0.0
        self._compute: float | None = None

    @property
    def gap(self) -> float | None:
        """Mean seconds between arrivals; None before the second arrival."""
        return self._gap

    @property
    def overlap(self) -> float:
        """Weighted share of recent arrivals that found another request in flight, 0..1."""
        return self._overlap

    @property
    def concurrency(self) -> float:
        """The most requests in flight at once lately, this one included (a decaying peak)."""
        return self._peak

    def arrived(self, now: float, in_flight: int) -> None:
        self._peak = max(in_flight + 1.0, self._peak * PEAK_DECAY)
        if self._last is not None:
            gap = max(0.0, now - self._last)
            self._gap = gap if self._gap is None else self._gap + GAP_WEIGHT * (gap - self._gap)
        self._last = now
        self._overlap += OVERLAP_WEIGHT * ((1.0 if in_flight > 0 else 0.0) - self._overlap)

    def computed(self, rows: int, seconds: float) -> None:
        c = self._compute
        self._compute = seconds if c is None else c + COMPUTE_WEIGHT * (seconds - c)

    def close_at(self, oldest: float, earliest_deadline: float | None, queued: int) -> float:
        gap, last = self._gap, self._last
        if gap is None or last is None or gap >= self._max_delay or self._overlap < MIN_OVERLAP:
            return oldest
        if queued + 0.5 >= self._peak:
            return oldest
        until = min(oldest + self._max_delay, last + QUIET_GAPS * gap)
        if earliest_deadline is not None:
            until = min(until, earliest_deadline - (self._compute or 0.0))
        return until


def make_policy(name: WaitName, max_delay: float) -> WaitPolicy:
    """The policy called ``name`` (``SERVE_BATCH_WAIT``) with ``max_delay`` seconds of most wait."""
    if name == "adaptive":
        return AdaptiveWait(max_delay)
    if name == "fixed":
        return FixedWait(max_delay)
    raise ValueError(f"unknown batch wait policy {name!r}; expected 'adaptive' or 'fixed'")
