// Run an async task at most once per interval, and never twice at once.

/**
 * `soon()` asks for a run within `interval` ms of the last one (for "while drawing"); `now()` asks
 * for one as early as possible, after any run in progress (for "the stroke ended"); `cancel()`
 * drops a pending request. `onPending(true|false)` reports when work is wanted or running, and when
 * all of it is done.
 */
export function throttle(task, interval, onPending = () => {}) {
  let running = false;
  let wanted = false;
  let pending = false;
  let lastStart = -Infinity;
  let timer = null;

  const setPending = (value) => {
    if (value !== pending) {
      pending = value;
      onPending(value);
    }
  };
  const run = async () => {
    timer = null;
    if (running || !wanted) return;
    wanted = false;
    running = true;
    lastStart = performance.now();
    try {
      await task();
    } finally {
      running = false;
      if (wanted) schedule(0);
      else setPending(false);
    }
  };
  const schedule = (delay) => {
    if (running) return; // run() schedules the next one when it finishes
    if (timer !== null) {
      if (delay > 0) return; // one is already due within the interval
      clearTimeout(timer);
    }
    timer = setTimeout(run, delay);
  };

  return {
    soon() {
      wanted = true;
      setPending(true);
      schedule(Math.max(0, lastStart + interval - performance.now()));
    },
    now() {
      wanted = true;
      setPending(true);
      schedule(0);
    },
    cancel() {
      wanted = false;
      if (timer !== null) clearTimeout(timer);
      timer = null;
      if (!running) setPending(false);
    },
  };
}
