"""The rollout API (``docs/rollout.md``): read a model's rollout (anyone), start and steer it (admin).

``GET /v2/models/{m}/rollout`` answers the record with the serving champion, or ``state: "idle"``.
``POST /v2/repository/models/{m}/rollout`` starts one (body ``{"candidate": "<version>", ...options}``),
``.../rollout/{promote,rollback,pause,resume}`` steer it; every POST needs the admin bearer token.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.errors import InvalidInput
from service.http.body import read_body
from service.http.openapi import errors
from service.http.paths import url_version
from service.http.routes import AdminDep, CoreDep, json_response
from service.rollout.policy import Options, Stage

router = APIRouter()


class StartRollout(BaseModel):
    """The body of ``POST /v2/repository/models/{m}/rollout``; every option has a default."""

    model_config = ConfigDict(extra="forbid")

    candidate: str = Field(description="The version to roll out: loaded or published in the repository.")
    stages: list[Stage] | None = Field(None, min_length=1, max_length=10)
    alpha: float | None = Field(None, gt=0.0, lt=0.5)
    min_labelled: int | None = Field(None, ge=1, le=10_000_000)
    promote_when: Literal["not_worse", "better"] | None = None
    max_error_rate: float | None = Field(None, ge=0.0, le=1.0)
    p99_factor: float | None = Field(None, ge=1.0, le=100.0)
    p99_slack_ms: float | None = Field(None, ge=0.0, le=60_000.0)
    guard_min_requests: int | None = Field(None, ge=1, le=10_000_000)
    grace_s: float | None = Field(None, ge=0.0, le=7 * 86_400.0)

    def options(self) -> Options:
        given = self.model_dump(exclude={"candidate"}, exclude_none=True)
        return Options.model_validate(given)


@router.get("/v2/models/{model_name}/rollout", responses=errors(404, 503))
async def rollout_state(core: CoreDep, model_name: str) -> Response:
    return json_response(core.rollout_state(model_name))


@router.post("/v2/repository/models/{model_name}/rollout", responses=errors(400, 401, 403, 404, 409))
async def start_rollout(request: Request, core: CoreDep, _: AdminDep, model_name: str) -> Response:
    body = await read_body(request, 64 * 1024)
    try:
        parsed: Any = orjson.loads(body or b"{}")
        start = StartRollout.model_validate(parsed)
    except (orjson.JSONDecodeError, ValidationError) as exc:
        raise InvalidInput(f"invalid rollout request: {_first_error(exc)}") from None
    candidate = url_version(start.candidate)
    if candidate is None:  # pragma: no cover - url_version returns None only for None
        raise InvalidInput("candidate is required")
    return json_response(await core.start_rollout(model_name, candidate, start.options()))


@router.post("/v2/repository/models/{model_name}/rollout/{decision}", responses=errors(401, 403, 404, 409))
async def steer_rollout(
    core: CoreDep,
    _: AdminDep,
    model_name: str,
    decision: Annotated[Literal["promote", "rollback", "pause", "resume"], Path()],
) -> Response:
    return json_response(await core.operate_rollout(model_name, decision))


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"{where}: {first['msg']}" if where else str(first["msg"])
    return str(exc)
