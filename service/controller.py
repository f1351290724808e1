"""``python -m service.controller``: decide rollouts for every replica, from Prometheus (Flagger's pattern).

Replicas run with ``SERVE_ROLLOUT_DECIDER=controller``: they route by the rollout record and count
their evidence in ``rollout_evidence_total{model,rollout,kind}`` and ``rollout_latency_seconds``, but
decide nothing. This process, every ``--interval`` seconds, for every model whose record has an active
rollout: adds up the evidence of every replica through Prometheus' HTTP API (``sum by (kind)``, and the
p99 of each role from the histogram), applies the same rule as a single replica
(:func:`service.rollout.policy.next_step`), and writes the record (through
:mod:`service.rollout.records`) when the evidence or the state changed. Each replica follows within its
``SERVE_ROLLOUT_INTERVAL_S``. The repository is a directory or ``s3://bucket/prefix``
(:mod:`service.storage.store`; the record lives beside the model either way).

    python -m service.controller --repository /models --prometheus http://prometheus:9090 [--interval 2]

Exit codes: 0 after SIGTERM/SIGINT (or one pass with ``--once``), 2 bad usage. ``docs/rollout.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from service.rollout.policy import (
    Evidence,
    RolloutRecord,
    VersionEvidence,
    apply_decision,
    mcnemar,
    next_step,
)
from service.rollout.records import RecordError, read_record, write_record
from service.storage import Location, ModelStore, StoreError, open_store, parse_location

log = logging.getLogger("service.controller")


class PrometheusError(RuntimeError):
    """Prometheus could not be reached or did not answer a query with a vector."""


class Prometheus:
    """Instant queries against Prometheus' HTTP API (the standard library's client: the serving image
    needs nothing more for the controller)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's vector result."""
        address = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        try:
            with urllib.request.urlopen(address, timeout=self.timeout) as answer:
                body = json.loads(answer.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise PrometheusError(f"query {promql!r}: {exc}") from exc
        if not isinstance(body, dict) or body.get("status") != "success":
            raise PrometheusError(f"query {promql!r}: {str(body)[:200]}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


def gather(client: Prometheus, model: str, rollout: str) -> Evidence:
    """Every replica's evidence for one rollout, added up by Prometheus."""
    selector = f'model="{model}",rollout="{rollout}"'
    kinds = {
        row["metric"].get("kind", ""): int(float(row["value"][1]))
        for row in client.query(f"sum by (kind) (rollout_evidence_total{{{selector}}})")
    }
    p99 = {
        row["metric"].get("role", ""): float(row["value"][1]) * 1000
        for row in client.query(
            f"histogram_quantile(0.99, sum by (le, role) (rollout_latency_seconds_bucket{{{selector}}}))",
        )
        if row["value"][1] not in ("NaN", "+Inf")
    }

    def version(role: str) -> VersionEvidence:
        return VersionEvidence(
            requests=kinds.get(f"{role}_requests", 0),
            errors=kinds.get(f"{role}_errors", 0),
            p99_ms=p99.get(role),
            labelled=kinds.get(f"{role}_labelled", 0),
            correct=kinds.get(f"{role}_correct", 0),
        )

    return mcnemar(
        Evidence(
            champion=version("champion"),
            candidate=version("candidate"),
            shadow_compared=kinds.get("shadow_compared", 0),
            shadow_agreed=kinds.get("shadow_agreed", 0),
            shadow_errors=kinds.get("shadow_errors", 0),
            shadow_skipped=kinds.get("shadow_skipped", 0),
            champion_only=kinds.get("champion_only", 0),
            candidate_only=kinds.get("candidate_only", 0),
        )
    )


def decide(repository: ModelStore | Location, model: str, client: Prometheus) -> str | None:
    """One pass for one model: the decision taken (``advance``, ``promote``, ``rollback``) or None."""
    data = read_record(repository, model)
    if data is None:
        return None
    record = RolloutRecord.model_validate(data)
    if record.state not in ("shadow", "canary"):
        return None
    evidence = gather(client, model, record.id)
    step = None
    if evidence != record.evidence:
        record.evidence = evidence
        record.revision += 1
    step = next_step(record)
    if step is not None:
        apply_decision(record, step[0], step[1], by="rule")
        log.info("rollout of %s version %s: %s (%s)", model, record.candidate, step[0], step[1])
    if record.revision == data.get("revision"):
        return None
    latest = read_record(repository, model)
    if latest is None or latest.get("revision") != data.get("revision"):
        return None  # an operator wrote meanwhile: decide again on the next pass, from their record
    write_record(repository, model, record.model_dump(mode="json"))
    return None if step is None else step[0]


def run(
    repository: ModelStore | Location, prometheus: str, interval: float, stop: threading.Event, *, once: bool
) -> None:
    client = Prometheus(prometheus)
    store = repository if isinstance(repository, ModelStore) else open_store(repository)
    while not stop.is_set():
        try:
            models = sorted(store.scan())
        except StoreError as exc:
            log.error("no decisions this pass: %s", exc)
            models = []
        for model in models:
            try:
                decide(store, model, client)
            except (PrometheusError, RecordError, StoreError, ValueError, OSError) as exc:
                log.error("rollout of %s: no decision this pass: %s", model, exc)
        if once:
            return
        stop.wait(interval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.controller", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repository", required=True, help="the model repository: a directory or s3://bucket/prefix"
    )
    parser.add_argument(
        "--prometheus", required=True, help="Prometheus' base URL, e.g. http://prometheus:9090"
    )
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between passes (default 2)")
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    args = parser.parse_args(argv)
    try:
        repository = parse_location(args.repository)
    except ValueError as exc:
        parser.error(f"--repository: {exc}")
    if not isinstance(repository, str) and not repository.is_dir():
        parser.error(f"--repository {args.repository}: not a directory")
    if not 0.1 <= args.interval <= 3600:
        parser.error("--interval must be from 0.1 to 3600 seconds")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("deciding rollouts in %s from %s every %g s", args.repository, args.prometheus, args.interval)
    run(repository, args.prometheus, args.interval, stop, once=args.once)
    return 0


if __name__ == "__main__":
    sys.exit(main())
