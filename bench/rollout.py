"""Labelled items and seconds from the start of a rollout to its automatic decision, on real processes.

    python -m bench.rollout [--repeats 3] [--stages default|fast]

Two scenarios on the shipped ``mnist-mlp``, each on a fresh repository and a fresh ``python -m service``,
while one client streams unversioned requests (HTTP, keep-alive, 20 routing keys): a *worse* candidate
(the shipped model with classes 3 and 5 swapped) against the shipped champion, and a *better* one (the
shipped model against a champion with 3 and 5 swapped). Labelled feedback (MNIST test digits, true
labels, in order) is the only accuracy evidence. Prints a Markdown table and writes
``bench/results/rollout.json``. Not a test: timing belongs here.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import httpx

from tests.helpers.data import MODELS
from tests.helpers.rolloutdrive import Stream, feed_until
from tests.helpers.server import running_service
from tests.helpers.variants import publish_variant

NAME = "mnist-mlp"
ADMIN, FEEDBACK = "admin-token-0123456789", "feedback-token-0123456789"
FAST = [
    {"kind": "shadow", "weight": 1.0, "min_requests": 50},
    {"kind": "canary", "weight": 0.1, "min_requests": 20},
    {"kind": "canary", "weight": 0.5, "min_requests": 50},
]


def scenario(kind: str, stages: list[dict[str, Any]] | None, offset: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        source = MODELS / NAME / "1"
        worse = kind == "worse"
        publish_variant(source, root / "models", NAME, 1, swap=None if worse else (3, 5))
        publish_variant(source, root / "models", NAME, 2, swap=(3, 5) if worse else None, candidate=True)
        env = {
            "SERVE_MODEL_REPOSITORY": str(root / "models"),
            "SERVE_MODELS": NAME,
            "SERVE_ADMIN_TOKEN": ADMIN,
            "SERVE_FEEDBACK_DIR": str(root / "feedback"),
            "SERVE_FEEDBACK_TOKEN": FEEDBACK,
            "SERVE_INTRA_OP_THREADS": "1",
        }
        with (
            running_service(root, env=env) as service,
            Stream(service.url, NAME, keys=20, limit_s=600) as stream,
        ):
            body: dict[str, Any] = {"candidate": "2"}
            if stages is not None:
                body["stages"] = stages
            started = httpx.post(
                f"{service.url}/v2/repository/models/{NAME}/rollout",
                json=body,
                headers={"Authorization": f"Bearer {ADMIN}"},
                timeout=30,
            )
            started.raise_for_status()
            goal = "rolled_back" if worse else "promoted"
            outcome = feed_until(service.url, NAME, goal, FEEDBACK, start=offset, limit=2000, timeout_s=500)
        evidence = outcome.state["evidence"]
        return {
            "scenario": kind,
            "decision": goal,
            "labelled_items": outcome.items,
            "seconds": round(outcome.seconds, 2),
            "stages": outcome.stages,
            "requests_streamed": stream.requests,
            "failed_requests": len(stream.failures),
            "champion_only": evidence["champion_only"],
            "candidate_only": evidence["candidate_only"],
            "p_value": evidence["p_value_worse"] if worse else evidence["p_value_better"],
            "reason": outcome.state["reason"],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stages", choices=("default", "fast"), default="default")
    args = parser.parse_args()
    stages = FAST if args.stages == "fast" else None
    load_before = os.getloadavg()
    rows = [
        scenario(kind, stages, offset=repeat * 2000)
        for repeat in range(args.repeats)
        for kind in ("worse", "better")
    ]
    load_after = os.getloadavg()
    out = Path(__file__).parent / "results" / "rollout.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"load_before": load_before, "load_after": load_after, "rows": rows}, indent=2))
    print(f"load average before {load_before}, after {load_after}; stages: {args.stages}")
    print(
        "| scenario | decision | labelled items | seconds | stage changes (state, items, s) | "
        "b / c | p | requests streamed | failed |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        stages_text = ", ".join(f"{s} {i} ({t} s)" for s, i, t in r["stages"])
        print(
            f"| {r['scenario']} | {r['decision']} | {r['labelled_items']} | {r['seconds']} | {stages_text} | "
            f"{r['champion_only']} / {r['candidate_only']} | {r['p_value']:.2g} | {r['requests_streamed']} | "
            f"{r['failed_requests']} |"
        )


if __name__ == "__main__":
    main()
