"""Schema-driven fuzzing of the whole OpenAPI document (schemathesis) against the real app, in process.

Every operation gets generated requests, valid and invalid by its schema; schemathesis' built-in checks
demand no 5xx, documented status codes, content types and headers, bodies that match the documented
schemas (``{"error": ...}`` for every error answer), 4xx for schema-invalid requests and no 400 for
schema-valid ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import positive_data_acceptance
from schemathesis.generation import GenerationMode
from schemathesis.python.asgi import shutdown_lifespans

from service.app import create_app
from service.settings import Settings
from tests.helpers.modelfactory import write_model_version

ADMIN_TOKEN = "schema-test-admin-token"
EXAMPLES = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
# Whether a schema-valid infer, classify or explain body (or an explanation's patch size) is acceptable
# depends on the model's signature, which no schema for every model can express: for these, on a served
# model, a 400 is a correct answer.
MODEL_DEPENDENT_BODIES = ("/infer", "/classify", "/explain")


@pytest.fixture
def api_schema(tmp_path: Path) -> Iterator[Any]:
    write_model_version(tmp_path, "tiny", 1)
    app = create_app(Settings(model_repository=tmp_path, admin_token=ADMIN_TOKEN, max_queue_delay_us=0))
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    shutdown_lifespans()  # schemathesis starts the app's lifespan on first use; it ends with the test


def run_all(api_schema: Any, path_parameters: dict[str, str], exclude: Callable[[str], list[Any]]) -> None:
    """Drive every operation's strategies (schema-valid and schema-invalid data) with Hypothesis,
    collecting failures per operation and mode.

    schemathesis' own pytest loader needs pytest internals that pytest 9 no longer has, so operations
    are driven with Hypothesis directly, schemathesis' documented alternative.
    """
    operations = [result.ok() for result in api_schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {
        "POST /v2/models/{model_name}/infer",
        "POST /v2/models/{model_name}/versions/{version}/classify",
        "POST /v2/repository/models/{model_name}/load",
        "GET /metrics",
    } <= labels, labels
    failures: dict[str, BaseException] = {}
    for operation in operations:
        fixed = {k: v for k, v in path_parameters.items() if f"{{{k}}}" in operation.path}
        for mode in GenerationMode:
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=fixed or None)
            try:
                check_operation(strategy, exclude(operation.label))
            except Unsatisfiable:
                # No schema-invalid request exists (no parameters, or only free-form strings).
                assert mode is GenerationMode.NEGATIVE, operation.label
            except Exception as exc:
                failures[f"{operation.label} ({mode})"] = exc
    assert not failures, "\n\n".join(f"{label}:\n{exc}" for label, exc in failures.items())


def check_operation(strategy: Any, excluded: list[Any]) -> None:
    @EXAMPLES
    @given(case=strategy)
    def conforms(case: schemathesis.Case) -> None:
        case.call_and_validate(excluded_checks=excluded)

    conforms()


def test_every_operation_conforms(api_schema: Any) -> None:
    """Generated model names: unknown models, odd versions, hostile headers and bodies."""
    run_all(api_schema, {}, lambda label: [])


def test_operations_on_a_served_model_conform(api_schema: Any) -> None:
    """The same, with every request addressed to the served model, so bodies reach the parser."""

    def exclude(label: str) -> list[Any]:
        return [positive_data_acceptance] if label.endswith(MODEL_DEPENDENT_BODIES) else []

    run_all(api_schema, {"model_name": "tiny"}, exclude)
