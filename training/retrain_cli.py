"""``python -m training retrain ...``: fine-tune the newest version on feedback; publish only a winner.

Exit codes: 0 published, nothing new, or too little feedback yet; 1 export or parity failure; 2 bad usage,
missing data or an unusable repository; 3 the challenger did not beat the champion (nothing published).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from training import tfsetup
from training.data import resolve_data_dir
from training.errors import UsageError
from training.feedback import new_since_newest
from training.options import bounded, repository
from training.publish import validate_name

if TYPE_CHECKING:
    from training.retrain import Result

EXAMPLE = (
    "python -m training retrain --repository models/ --name mnist-cnn --feedback /var/lib/feedback --epochs 2"
)
DESCRIPTION = (
    "Fine-tune the newest version of a model on its original training data plus the feedback clients "
    "sent, compare it with the serving version on the original test set and on held-out feedback, and "
    "publish it only if it stays within the guard on the first and improves on the second."
)
EPILOG = (
    f"example: {EXAMPLE}. Exit codes: 0 published, nothing new or waiting for more feedback, 1 export "
    "failed, 2 bad usage or missing data, 3 refused (nothing published)."
)
EXIT_REFUSED = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``retrain`` command's options (registered by :func:`training.arguments.build_parser`)."""
    parser.add_argument(
        "--repository",
        type=repository,
        required=True,
        help="the model repository: a directory or s3://bucket/prefix",
    )
    parser.add_argument("--name", required=True, help="the model to retrain")
    parser.add_argument(
        "--feedback", type=Path, required=True, help="the feedback directory the service writes"
    )
    parser.add_argument(
        "--data-dir", type=Path, help="original data (default: $DATA_DIR, else ../shared/data)"
    )
    parser.add_argument("--offline", action="store_true", help="never download; fail if the files are absent")
    parser.add_argument("--epochs", type=bounded(int, minimum=1), help="default: the champion's")
    parser.add_argument(
        "--learning-rate", "--lr", type=bounded(float, minimum=0, strict=True), help="default: the champion's"
    )
    parser.add_argument(
        "--limit-train", type=bounded(int, minimum=1), metavar="N", help="use N original training images"
    )
    parser.add_argument(
        "--feedback-share",
        type=bounded(float, minimum=0, maximum=0.9),
        default=0.2,
        help="feedback's share of each epoch, by repetition (default 0.2, measured: docs/benchmarks.md)",
    )
    parser.add_argument(
        "--holdout",
        type=bounded(float, minimum=0, maximum=0.9, strict=True),
        default=0.3,
        help="fraction of feedback held out to compare the models (default 0.3)",
    )
    parser.add_argument(
        "--min-holdout",
        type=bounded(int, minimum=1),
        default=10,
        help="train only once this many feedback items are held out (default 10)",
    )
    parser.add_argument(
        "--max-regression",
        type=bounded(float, minimum=0),
        default=0.5,
        metavar="POINTS",
        help="refuse when test accuracy drops more than this many points below the champion's (default 0.5)",
    )
    parser.add_argument(
        "--min-improvement",
        type=bounded(float, minimum=0),
        default=0.0,
        metavar="POINTS",
        help="refuse unless holdout accuracy beats the champion's by more than this (default 0: any gain)",
    )
    parser.add_argument(
        "--no-rollout",
        dest="rollout",
        action="store_false",
        help="publish a winner to serve at once, as before; by default it is published as a candidate and "
        "its rollout (shadow, canary, decided on live feedback) starts (docs/rollout.md)",
    )
    parser.add_argument("--report", type=Path, help="also write the figures and the decision here as JSON")


def run(args: argparse.Namespace, *, command: str) -> int:
    """Run ``retrain`` with parsed ``args``; :class:`TrainingError` for what the caller reports."""
    name = validate_name(args.name)
    if isinstance(args.repository, Path) and not args.repository.is_dir():
        raise UsageError(f"--repository {args.repository}: not a directory")
    if not args.feedback.is_dir():
        raise UsageError(f"--feedback {args.feedback}: not a directory")
    print(f"retraining {name} in {args.repository} on the feedback in {args.feedback}", flush=True)
    new, version = new_since_newest(args.repository, name, args.feedback)
    if new == 0 and version is not None:
        # The common case for a scheduled job: answer before paying for TensorFlow.
        print(f"nothing new: no feedback for {name} since version {version} was trained")
        return 0
    tfsetup.import_tensorflow()
    from training import retrain

    config = retrain.RetrainConfig(
        repository=args.repository,
        name=name,
        feedback=args.feedback,
        data_dir=resolve_data_dir(args.data_dir),
        offline=args.offline,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        limit_train=args.limit_train,
        feedback_share=args.feedback_share,
        holdout=args.holdout,
        min_holdout=args.min_holdout,
        max_regression=args.max_regression,
        min_improvement=args.min_improvement,
        command=command,
        rollout=args.rollout,
    )
    result = retrain.retrain(config)
    print(render(result, name))
    if args.report is not None:
        payload = {"status": result.status, "message": result.message, **result.record}
        args.report.write_text(json.dumps(payload, indent=2) + "\n")
    return EXIT_REFUSED if result.status == "refused" else 0


def render(result: Result, name: str) -> str:
    """The lines a person reads: what was compared, both models' figures, the bars, the decision."""
    record = result.record
    feedback = record["feedback"]
    lines = [
        f"retrain {name}: champion is version {record['base_version']}",
        f"feedback: {feedback['items']} usable items ({feedback['new']} new), {feedback['train']} train, "
        f"{feedback['validation']} validation, {feedback['holdout']} held out"
        + (f"; skipped {feedback['skipped']}" if feedback["skipped"] else ""),
    ]
    if "decision" in record:
        decision, champion, challenger = record["decision"], record["champion"], record["challenger"]
        mixing = record["mixing"]
        lines.append(
            f"challenger: {record['start']}; {mixing['original_train']} original training images + "
            f"feedback x{mixing['feedback_repeats']} ({mixing['epoch_size']} per epoch)"
        )
        rows = [
            ("", f"champion v{record['base_version']}", "challenger", "bar", "passed"),
            (
                f"test accuracy ({record['n_test']})",
                f"{champion['test_accuracy']:.2%}",
                f"{challenger['test_accuracy']:.2%}",
                f">= {decision['test_floor']:.2%}",
                "yes" if decision["test_ok"] else "NO",
            ),
            (
                f"feedback holdout ({record['n_holdout']})",
                f"{champion['holdout_accuracy']:.2%}",
                f"{challenger['holdout_accuracy']:.2%}",
                f"> {decision['holdout_bar']:.2%}",
                "yes" if decision["holdout_ok"] else "NO",
            ),
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        table = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
        ]
        rule = "-" * max(len(line) for line in table)
        lines += [rule, *table, rule]
    outcome = {
        "published": "decision: ",
        "refused": "decision: REFUSED, nothing published (exit 3): ",
    }.get(result.status, "")
    lines.append(outcome + result.message)
    return "\n".join(lines)
