"""The served models: which versions are loaded, their batchers, and swapping in new versions.

The registry is the only owner of runtimes and batchers, and of the process's compute threads: one
budget of ``settings.compute_threads`` onnxruntime intra-op threads. Every batcher computes on one
executor of that many workers, and each version's session gets ``budget // models`` intra-op threads
(at least 1), so at most ``budget`` threads compute at once however many models are busy (measured
with ``python -m bench.threads``; see ``docs/architecture.md``). Loading (hash check, session creation,
signature check, warm-up) runs in a worker thread; a version is visible to requests only once it
has passed every step. The repository is a :class:`service.storage.store.ModelStore` (a directory, or an
``s3://`` bucket whose versions are downloaded into a local cache first; ``docs/cluster.md``); when it
cannot be read, what is loaded keeps serving. A new version is loaded beside the old one and swapped
in with one dict assignment, so a request sees either the old or the new version, never a half-loaded
one; the old version finishes what it has queued and is stopped once idle.

Which loaded version answers unversioned requests (the *champion*) follows the model's rollout record
(:mod:`service.rollout.policy`, ``docs/rollout.md``), kept in the same store beside the model
(:mod:`service.rollout.records`) and read again at every scan: the newest version that is not rejected,
not the running rollout's candidate, and not marked as a candidate unless promoted. Candidates, and a
promoted champion's predecessor during its grace period, stay loaded whatever the version policy says.

One module of this size on purpose: what is served, failed, available and marked, and each model's
champion and record, change together under one lock; building and stopping one version is
:mod:`service.core.served`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import time
from collections.abc import Iterable

from opentelemetry.trace import Status, StatusCode

from service.contract import CANDIDATE_FILE, valid_model_name
from service.core.runtime import ModelLoadError
from service.core.served import IndexRow, ServedVersion, load_and_warm, serve, stop_served
from service.core.signature import ModelSignature
from service.errors import Conflict, NotFound, Unavailable, echo
from service.rollout.policy import RolloutRecord, eligible_champions
from service.rollout.records import RecordError, read_record, remove_record, write_record
from service.settings import Settings
from service.storage import ModelStore, StoreError, VersionCorrupt, open_store
from service.telemetry.metrics import Metrics
from service.telemetry.tracing import Tracing

log = logging.getLogger(__name__)


class ModelRegistry:
    """Loads, serves and retires model versions from the repository."""

    def __init__(
        self, settings: Settings, metrics: Metrics, providers: list[str], tracing: Tracing | None = None
    ) -> None:
        """``tracing``: spans for loads, retirements and unloads, and each batcher's batch tracer."""
        self.settings = settings
        self.tracing = tracing
        self.metrics = metrics
        self.providers = providers
        self.store: ModelStore = open_store(
            settings.model_repository,
            cache_dir=settings.model_cache_dir,
            cache_bytes=settings.model_cache_bytes,
        )
        self.root = self.store.url
        # The message of the store's last failure; None while it answers (reported once per outage).
        self._store_problem: str | None = None
        # Per model, the last failure to read its rollout record (reported once per outage).
        self._record_problem: dict[str, str] = {}
        self._served: dict[str, dict[int, ServedVersion]] = {}
        self._expected: set[str] = set()
        self._configured = 0  # models configured at start (SERVE_MODELS, or every one found)
        # (name, version) -> stamp of the failed attempt, so the watcher retries only changed versions.
        self._failed: dict[tuple[str, int], str] = {}
        # (name, version) -> missing files already reported for an incomplete version directory.
        self._incomplete: dict[tuple[str, int], tuple[str, ...]] = {}
        self._unloaded: set[str] = set()
        # Per model: its rollout record, the champion's version, the versions on disk.
        self._records: dict[str, RolloutRecord] = {}
        # Per model, its rollout record as last read from or written to the store, and how many times
        # this process wrote it: a read that a write overtook is older than what the write left.
        self._stored: dict[str, RolloutRecord] = {}
        self._writes: dict[str, int] = {}
        self._champion: dict[str, int] = {}
        self._available: dict[str, list[int]] = {}
        self._marked: dict[str, set[int]] = {}
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self.loaded = False  # the initial load has finished (successfully or not)
        self.threads = settings.compute_threads
        self._executor = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="compute")

    # ---- queries (event loop, no awaits) ---------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True when the initial load is done and enough models are served: ``ready_min_models`` of them
        when set; otherwise every model configured at start and every model loaded since, and at least
        one, so that unloading every model (or finding none) turns readiness off."""
        if not self.loaded:
            return False
        served = sum(1 for versions in self._served.values() if versions)
        wanted = self.settings.ready_min_models
        if wanted:
            return served >= wanted
        return served >= max(1, self._configured) and all(self._served.get(n) for n in self._expected)

    def missing(self) -> str:
        """Why :attr:`ready` is false, in words (for the 503 answer)."""
        missing = [n for n in self.names() if not self.versions(n)]
        served = len(self.names()) - len(missing)
        wanted = self.settings.ready_min_models or max(1, self._configured)
        unloaded = sorted(self._unloaded - set(missing))
        return (
            f"{served} of at least {wanted} models served"
            + (f"; not served: {', '.join(missing)}" if missing else "")
            + (f"; unloaded: {', '.join(unloaded)}" if unloaded else "")
        )

    def names(self) -> list[str]:
        return sorted(set(self._served) | self._expected)

    def versions(self, name: str) -> list[int]:
        return sorted(self._served.get(name, {}))

    def get(self, name: str, version: int | None = None) -> ServedVersion:
        """The served version asked for (newest when ``version`` is None); NotFound otherwise."""
        served = self._served.get(name)
        if not served:
            if not self.loaded:
                raise Unavailable("models are still loading")
            if name in self._expected:
                raise Unavailable(f"model {echo(name)} is not ready")
            raise NotFound(f"unknown model {echo(name)}")
        if version is None:
            champion = self._champion.get(name)
            if champion is None or champion not in served:
                raise Unavailable(f"model {echo(name)} has no champion version loaded (only candidates)")
            return served[champion]
        try:
            return served[version]
        except KeyError:
            raise NotFound(f"model {echo(name)} has no served version {version}") from None

    def served(self, name: str, version: int) -> ServedVersion | None:
        """The loaded version, or None."""
        return self._served.get(name, {}).get(version)

    def available(self, name: str) -> list[int]:
        """The model's complete versions on disk at the last scan."""
        return self._available.get(name, [])

    def record(self, name: str) -> RolloutRecord | None:
        """The model's rollout record as last read or written."""
        return self._records.get(name)

    async def fetch_record(self, name: str) -> RolloutRecord | None:
        """The model's rollout record as the store holds it now (None when it has none, or it is damaged:
        logged). While the store cannot be read, the record last read: every replica keeps following the
        plan it knows until the store answers again."""
        writes = self._writes.get(name, 0)
        try:
            data = await asyncio.to_thread(read_record, self.store, name)
            if self._writes.get(name, 0) != writes:
                # apply_record wrote while this read was in flight: the bytes read may be the record
                # before that write, and the one written is the newer.
                return self._stored.get(name)
            record = None if data is None else RolloutRecord.model_validate(data)
        except (RecordError, ValueError) as exc:
            log.error("rollout record of %s ignored: %s", name, exc)
            return None
        except StoreError as exc:
            if self._record_problem.get(name) != str(exc):
                log.error("rollout record of %s cannot be read (%s); following the one read last", name, exc)
            self._record_problem[name] = str(exc)
            return self._stored.get(name)
        if self._record_problem.pop(name, None) is not None:
            log.info("rollout record of %s read again", name)
        self._remember(name, record)
        return record

    def _remember(self, name: str, record: RolloutRecord | None) -> None:
        if record is None:
            self._stored.pop(name, None)
        else:
            self._stored[name] = record

    def cache_record(self, name: str, record: RolloutRecord) -> None:
        """Answer with ``record`` from now on (the caller stores it with :meth:`apply_record` next)."""
        self._records[name] = record
        self._choose_champion(name)

    async def apply_record(self, name: str, record: RolloutRecord | None, *, remove: bool = False) -> None:
        """Store ``record`` (or remove the model's record) and bring the served versions in line."""
        try:
            if remove or record is None:
                await asyncio.to_thread(remove_record, self.store, name)
            else:
                await asyncio.to_thread(write_record, self.store, name, record.model_dump(mode="json"))
        except (OSError, StoreError) as exc:
            # Back to the record the store held last (read again at the sync below, when it answers).
            stored = self._stored.get(name)
            if stored is None:
                self._records.pop(name, None)
            else:
                self._records[name] = stored
            self._choose_champion(name)
            await self.sync([name])
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                # This process's configuration, not a fault: the compose and Kubernetes replicas mount
                # the repository read-only, and the rollout controller or the trainer writes records.
                raise Conflict(
                    f"cannot write the rollout record of '{name}' ({why}): the repository is read-only "
                    "for this process; the rollout controller or the trainer writes it (docs/rollout.md)"
                ) from exc
            raise Unavailable(
                f"cannot write the rollout record of '{name}' ({why}): the repository did not take "
                "the write; try again"
            ) from exc
        self._writes[name] = self._writes.get(name, 0) + 1
        self._remember(name, None if remove else record)
        await self.sync([name])

    def index(self) -> list[IndexRow]:
        """Repository index rows: every version found on disk, with its state."""
        found = self.store.known(self.settings.models)
        rows = []
        for name in sorted(set(found) | set(self._served)):
            served = self._served.get(name, {})
            for version in sorted(set(found.get(name, [])) | set(served)):
                if version in served:
                    state, reason = "READY", ""
                elif (record := self._records.get(name)) is not None and version in record.rejected:
                    state, reason = "UNAVAILABLE", "rolled back"
                elif (name, version) in self._failed:
                    state, reason = "UNAVAILABLE", "failed to load (see server log)"
                else:
                    state, reason = "UNAVAILABLE", "not selected by the version policy"
                rows.append(IndexRow(name, version, state, reason))
        return rows

    def pending(self) -> int:
        """Requests queued or computing across every served version."""
        return sum(v.batcher.pending for served in self._served.values() for v in served.values())

    # ---- changes ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Initial load: every selected version of every configured model."""
        try:
            await asyncio.to_thread(self.store.check)
            found = await self._scan(self.settings.models)
        except StoreError as exc:
            log.error("model repository cannot be used: %s", exc)
            found = {}
        self._expected = set(self.settings.models or found)
        self._configured = len(self._expected)
        for name in sorted(self._expected - set(found)):
            log.error("model '%s' configured in SERVE_MODELS but not found in %s", name, self.root)
        try:
            await self.sync()
        finally:
            self.loaded = True

    async def sync(self, names: Iterable[str] | None = None) -> None:
        """Bring the served versions in line with the repository and the version policy."""
        async with self._lock:
            try:
                found = await self._scan(self.settings.models)
            except StoreError:
                return  # reported by _scan; what serves keeps serving
            targets = sorted(set(names) if names is not None else set(found) | set(self._served))
            for name in targets:
                if name in self._unloaded and names is None:
                    continue
                await self._sync_model(name, found.get(name, []))

    async def load(self, name: str) -> None:
        """Admin load: (re)load a model per the version policy; NotFound if it has no versions on disk."""
        if not valid_model_name(name):
            raise NotFound(f"unknown model {echo(name)}")
        try:
            found = await self._scan([name])
        except StoreError as exc:
            raise Unavailable(
                f"cannot load {echo(name)}: the model repository is unavailable ({exc})"
            ) from None
        if not found.get(name):
            raise NotFound(f"model {echo(name)} has no complete version in the repository")
        self._unloaded.discard(name)
        self._expected.add(name)
        await self.sync([name])
        if not self._served.get(name):
            raise Unavailable(f"model '{name}' failed to load (see server log)")

    async def unload(self, name: str) -> None:
        """Admin unload: stop serving every version of a model until it is loaded again."""
        async with self._lock:
            if name not in self._served and name not in self._expected:
                raise NotFound(f"unknown model {echo(name)}")
            self._unloaded.add(name)
            self._expected.discard(name)
            versions = list(self._served.get(name, {}))
            if self.tracing is not None:
                with self.tracing.lifecycle("model.unload", {"inference.model.name": name}) as span:
                    span.set_attribute("inference.model.versions", versions)
                    for version in versions:
                        self._retire(name, version)
            else:
                for version in versions:
                    self._retire(name, version)
            self._served.pop(name, None)

    async def _scan(self, names: Iterable[str] | None) -> dict[str, list[int]]:
        """The store's committed versions; a failure is logged once per outage and counted."""
        try:
            found = await asyncio.to_thread(self.store.scan, None if names is None else sorted(names))
        except StoreError as exc:
            self.metrics.repository_up.set(0)
            self.metrics.repository_errors.inc()
            if str(exc) != self._store_problem:
                log.error("model repository failed: %s; serving what is loaded", exc)
            self._store_problem = str(exc)
            raise
        self.metrics.repository_up.set(1)
        if self._store_problem is not None:
            log.info("model repository %s answers again", self.root)
            self._store_problem = None
        return found

    async def _sync_model(self, name: str, available: list[int]) -> None:
        record = await self.fetch_record(name)
        if record is None:
            self._records.pop(name, None)
        else:
            self._records[name] = record
        self._available[name] = available
        marked = {v for v in available if self.store.has_file(name, v, CANDIDATE_FILE)}
        self._marked[name] = marked
        eligible = eligible_champions(available, marked, record)
        wanted = set(self.settings.policy.select(eligible))
        rejected = set(record.rejected) if record is not None else set()
        # Candidates waiting for a rollout, the rollout's candidate, a promoted champion's predecessor.
        newest = max(eligible, default=0)
        promoted = set(record.promoted) if record is not None else set()
        wanted |= {v for v in marked - rejected - promoted if v > newest}
        if record is not None and record.active and record.candidate in available:
            wanted.add(record.candidate)
        grace = record.grace_until if record is not None else None
        if record is not None and record.previous in available and grace is not None and time.time() < grace:
            wanted.add(record.previous)
        served = self._served.setdefault(name, {})
        for version in sorted(wanted - set(served)):
            loaded = await self._load_version(name, version)
            if loaded is not None:
                served[version] = loaded
        self._report_incomplete(name, max(served, default=0))
        # Retire what the policy no longer selects, but only when something newer is serving,
        # so a broken new version never takes the model down.
        for version in sorted(set(served) - wanted):
            newer = any(v > version for v in served if v in wanted)
            if newer or version not in available or version in rejected:
                self._retire(name, version)
        self._choose_champion(name)
        if not served:
            del self._served[name]

    async def _load_version(self, name: str, version: int) -> ServedVersion | None:
        stamp = self.store.stamp(name, version)
        if self._failed.get((name, version)) == stamp:
            return None
        if self.tracing is None:
            return await self._load_served(name, version, stamp)
        attributes = {"inference.model.name": name, "inference.model.version": version}
        with self.tracing.lifecycle("model.load", attributes) as span:
            served = await self._load_served(name, version, stamp)
            if served is None:
                span.set_status(Status(StatusCode.ERROR, "refused (see the server log)"))
            else:
                span.set_attribute("inference.provider", served.runtime.provider)
            return served

    async def _load_served(self, name: str, version: int, stamp: str) -> ServedVersion | None:
        started = time.perf_counter()
        try:
            path = await asyncio.to_thread(self.store.local_version, name, version)
            runtime = await asyncio.to_thread(
                load_and_warm,
                path,
                self.providers,
                self.session_threads(),
                self.settings,
                self._signature(name),
            )
        except (ModelLoadError, VersionCorrupt) as exc:
            self._failed[(name, version)] = stamp
            self.metrics.load_total.labels(name, "error").inc()
            log.error("refused model version %s/%s/%d: %s", self.root, name, version, exc)
            return None
        except StoreError as exc:  # unreachable, or access refused: not a verdict on the version
            self.metrics.repository_errors.inc()
            log.error("cannot fetch %s version %d now (tried again at the next scan): %s", name, version, exc)
            return None
        self._failed.pop((name, version), None)
        self.metrics.load_total.labels(name, "ok").inc()
        self.metrics.load_duration.labels(name).observe(time.perf_counter() - started)
        served = serve(runtime, self.settings, self.metrics, self._executor, self.tracing)
        log.info(
            "serving %s version %d on %s (%.0f ms to load and warm up)",
            name,
            version,
            runtime.provider,
            (time.perf_counter() - started) * 1000,
        )
        return served

    def _choose_champion(self, name: str) -> None:
        """The newest loaded version the record lets answer unversioned requests (none: Unavailable)."""
        served = self._served.get(name, {})
        eligible = eligible_champions(
            self._available.get(name, []), self._marked.get(name, set()), self._records.get(name)
        )
        champions = [v for v in eligible if v in served]
        if champions:
            self._champion[name] = max(champions)
        else:
            self._champion.pop(name, None)

    def _report_incomplete(self, name: str, newest_served: int) -> None:
        """Log and count (once per state) version directories newer than what serves that lack a file."""
        for version, missing in sorted(self.store.incomplete(name).items()):
            key = (name, version)
            if version <= newest_served or self._incomplete.get(key) == tuple(missing):
                continue
            self._incomplete[key] = tuple(missing)
            self.metrics.load_total.labels(name, "error").inc()
            log.error(
                "refused model version %s/%s/%d: incomplete (missing %s)",
                self.root,
                name,
                version,
                ", ".join(missing),
            )

    def session_threads(self) -> int:
        """Intra-op threads for a session loaded now: the budget divided among the models served."""
        return max(1, self.threads // max(1, len(self._expected | set(self._served))))

    def _signature(self, name: str) -> ModelSignature | None:
        """The signature a new version of ``name`` must keep: the newest served version's."""
        previous = self._served.get(name)
        return previous[max(previous)].runtime.signature if previous else None

    def _retire(self, name: str, version: int) -> None:
        served = self._served.get(name, {})
        old = served.pop(version, None)
        if old is None:
            return
        log.info("retiring %s version %d once its queued requests finish", name, version)
        task = asyncio.get_running_loop().create_task(self._stop_when_idle(old))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _stop_when_idle(self, old: ServedVersion) -> None:
        """Stop a retired version once the requests that chose it before the swap have submitted their
        rows (bounded by the drain time); stopping then computes what is queued."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(old.idle.wait(), timeout=self.settings.drain_seconds)
        await self._stop_version(old)

    async def _stop_version(self, old: ServedVersion, timeout: float | None = None) -> None:
        if self.tracing is None:
            return await stop_served(old, timeout if timeout is not None else self.settings.drain_seconds)
        attributes = {"inference.model.name": old.name, "inference.model.version": old.version}
        with self.tracing.lifecycle("model.retire", attributes):
            await stop_served(old, timeout if timeout is not None else self.settings.drain_seconds)

    async def drain(self, timeout: float) -> None:
        """Stop admitting and compute what is queued now, without waiting for batches to fill.

        Versions stay registered, so lookups still answer (new requests get 503 from the stopped
        batchers); :meth:`stop` releases them afterwards.
        """
        batchers = [v.batcher for served in self._served.values() for v in served.values()]
        await asyncio.gather(*(b.stop(drain=True, timeout=timeout) for b in batchers))

    async def stop(self, timeout: float) -> None:
        """Stop admitting, finish queued work (up to ``timeout`` seconds), release every session."""
        everything = [v for served in self._served.values() for v in served.values()]
        self._served.clear()
        await asyncio.gather(*(self._stop_version(v, timeout) for v in everything))
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)
