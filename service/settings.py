"""Service configuration: one pydantic-settings class, read from ``SERVE_*`` environment variables.

Tests build ``Settings(...)`` directly; nothing reads the environment at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.storage import parse_location
from service.storage.discovery import VersionPolicy

#: The batch-wait policies ``SERVE_BATCH_WAIT`` names (:mod:`service.core.batchwait`).
WaitName = Literal["adaptive", "fixed"]


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Everything an operator can tune. Every field is bounded; why the defaults: docs/benchmarks.md."""

    model_config = SettingsConfigDict(env_prefix="SERVE_", extra="forbid", frozen=True)

    model_repository: str = Field(
        "models",
        min_length=1,
        description="The model repository: a directory, or s3://bucket/prefix (credentials from the "
        "standard AWS chain, AWS_ENDPOINT_URL for S3-compatible stores; docs/cluster.md).",
    )
    model_cache_dir: Path | None = Field(
        None,
        description="Where versions of an s3:// repository are downloaded, keyed by sha256 and kept "
        "across restarts; unset: <tmp>/digits-serving-models.",
    )
    model_cache_bytes: int = Field(
        4 * 1024**3,
        ge=1024**2,
        le=1024**4,
        description="Most bytes the model cache keeps; least recently used versions are removed beyond it.",
    )
    models: Annotated[list[str] | None, NoDecode] = Field(
        None, description="Comma-separated model names to serve; unset serves every model found."
    )
    version_policy: str = Field(
        "latest:1", description="Which versions to serve: 'latest:N', 'all' or 'specific:1,3'."
    )
    providers: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="onnxruntime execution providers, in order; unset: CUDA if usable, else CPU.",
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        le=256,
        description=(
            "Compute threads for the whole process, divided among the models served (each session gets "
            "budget // models, at least 1; at most budget batches compute at once); 0 = one per CPU but "
            "one (left for the event loop)."
        ),
    )
    inter_op_threads: int = Field(
        0, ge=0, le=256, description="onnxruntime inter-op threads (0 = ORT default)."
    )

    max_batch_size: int = Field(32, ge=1, le=4096, description="Most rows (samples) in one batch.")
    max_queue_delay_us: int = Field(
        500, ge=0, le=10_000_000, description="Longest a queued request waits for its batch to fill, in us."
    )
    batch_wait: WaitName = Field(
        "adaptive",
        description="When a batch that is not full goes: 'adaptive' waits (up to max_queue_delay_us) only "
        "while other requests are likely to join, never for a lone client; 'fixed' always lets the oldest "
        "request wait max_queue_delay_us (Triton's rule).",
    )
    compute: Literal["thread", "process", "auto"] = Field(
        "thread",
        description="Where batches compute: 'thread', in this process's compute threads; 'process', each "
        "model version's session in a child process of its own, so the event loop never waits for the "
        "interpreter lock: on 2 cores, c=16 ~1.2x, c=64 ~1.0x, multiplexed gRPC ~1.8x, but a lone "
        "client (c=1) ~0.8x; 'auto', a child process and a session here too, for requests alone in "
        "flight (twice the model's memory) (docs/hotpath.md, 'Compute in a process of its own').",
    )
    batch_staging: bool = Field(
        False,
        description="With compute 'thread': let one full batch wait behind the batch computing, for the "
        "compute worker to start it without a turn of the event loop: on 2 cores, multiplexed gRPC "
        "(many calls per connection) ~1.8x, HTTP ~0.9x (docs/hotpath.md, 'The compute worker and the "
        "interpreter lock').",
    )
    max_queue_rows: int = Field(
        2048,
        ge=1,
        le=1_000_000,
        description="Most rows queued per model version; beyond it requests get 503.",
    )
    max_request_rows: int = Field(
        256, ge=1, le=1_000_000, description="Most rows in one request; beyond it requests get 413."
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        le=1024**3,
        description="Largest request body, before and after gzip/deflate decompression; beyond it 413.",
    )
    max_image_pixels: int = Field(
        4096 * 4096,
        ge=1,
        le=1 << 30,
        description="Largest image (width x height) /classify decodes; else 413.",
    )
    max_request_pixels: int = Field(
        16 * 4096 * 4096,
        ge=1,
        le=1 << 31,
        description="Most pixels (width x height, read from the headers before decoding) of all the images "
        "of one /classify or feedback request together; else 413. The default is 16 images of the "
        "largest size: seconds of CPU, not minutes.",
    )
    preprocess_threads: int = Field(
        0,
        ge=0,
        le=64,
        description="Threads that decode and prepare /classify images of more than 4 Mpx in all (their "
        "own pool; each holds one decoded image, about 210 MB at 4096x4096), besides one thread for "
        "smaller requests; 0 = the compute budget, at most 2 (docs/hostile-clients.md: the memory bound).",
    )
    preprocess_queue: int = Field(
        16,
        ge=0,
        le=10_000,
        description="/classify requests waiting for a preprocessing thread; beyond it 503 + Retry-After.",
    )
    default_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="Deadline for requests that set no parameters.timeout."
    )

    header_timeout_s: float = Field(
        5.0,
        ge=0.1,
        le=300,
        description="Seconds a connection has to deliver a request's whole header block, from its first "
        "byte (or from the connection's opening); then 408 and close.",
    )
    body_timeout_s: float = Field(
        60.0,
        ge=0.1,
        le=3600,
        description="Seconds a request's body may take to arrive after its header block; then 408 and close.",
    )
    max_header_bytes: int = Field(
        32 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Largest request line plus header block, in bytes; beyond it 431 and close.",
    )
    max_connections: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="Most open HTTP connections; 0 = the file-descriptor limit less an eighth (at least "
        "64 kept for files and gRPC), and never more. Over it the longest-idle connection is closed, or "
        "the new one answered 503 when none is idle.",
    )
    ready_min_models: int = Field(
        0,
        ge=0,
        le=10_000,
        description="Readiness needs at least this many models served; 0 = every configured model (and "
        "at least one), so a process that serves nothing is never ready.",
    )
    poll_interval_s: float = Field(
        0.0, ge=0, le=86_400, description="Seconds between repository scans for new versions; 0 = off."
    )
    admin_token: str | None = Field(
        None, min_length=16, description="Bearer token for the repository load/unload API; unset = disabled."
    )
    grpc_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description="Port of the KServe V2 gRPC service (Triton's 8001), on the HTTP host; 0 turns gRPC off.",
    )
    grpc_server: Literal["native", "grpcio"] = Field(
        "native",
        description="Which server answers gRPC: native (HTTP/2 framed in C by libnghttp2, the services "
        "called in the event loop; several times cheaper per call) or grpcio (grpcio's asyncio server). "
        "Both serve the same services with the same answers.",
    )
    drain_seconds: float = Field(
        10.0, ge=0, le=3600, description="On SIGTERM: longest to finish queued and running requests."
    )

    feedback_dir: Path | None = Field(
        None,
        description="Where POST /v2/models/{m}/feedback stores labelled images for retraining. The "
        "feedback API is on only when this and feedback_token are both set; otherwise it answers 404.",
    )
    feedback_token: str | None = Field(
        None,
        min_length=16,
        description="Bearer token clients must present to send feedback (feedback becomes training data, "
        "so it is never open); unset keeps the feedback API off even when feedback_dir is set.",
    )
    feedback_max_items: int = Field(
        10_000, ge=1, le=10_000_000, description="Most feedback items stored per model; beyond it 507."
    )
    feedback_max_bytes: int = Field(
        1024**3,
        ge=1024,
        le=1024**4,
        description="Most bytes of feedback images stored per model; beyond it 507.",
    )
    explain_max_rows: int = Field(
        4096,
        ge=1,
        le=1_000_000,
        description="Most perturbed rows one explanation may run (POST .../explain); beyond it 413.",
    )
    explain_job_rows: int = Field(
        8,
        ge=1,
        le=4096,
        description="Rows of an explanation per job, and most rows in one batch of explanation rows (which "
        "compute only while no prediction waits): a prediction arriving while such a batch computes waits "
        "for it, so fewer keeps predictions faster, more explains faster (docs/explain.md).",
    )
    rollout_decider: Literal["local", "controller"] = Field(
        "local",
        description="Who decides rollouts (docs/rollout.md): 'local' folds this process's evidence into "
        "the record and decides (one replica); 'controller' only follows the record that "
        "'python -m service.controller' writes from every replica's metrics.",
    )
    rollout_interval_s: float = Field(
        1.0, ge=0.05, le=3600, description="Seconds between rollout decisions and record re-reads."
    )
    rollout_shadow_max_pending: int = Field(
        64,
        ge=1,
        le=100_000,
        description="Most shadow computations on a candidate at once; beyond it a comparison is skipped "
        "(counted), never an answer delayed.",
    )
    log_level: str = Field("info", pattern="^(critical|error|warning|info|debug)$", description="Log level.")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="'json': one JSON object per log line, with request_id and, when tracing is on, "
        "trace_id and span_id (docs/tracing.md); 'text': plain lines.",
    )

    @field_validator("models", "providers", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("model_repository", mode="before")
    @classmethod
    def _repository(cls, value: Any) -> Any:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, str):
            parse_location(value)  # ValueError names an unsupported scheme or a bad bucket
        return value

    @field_validator("version_policy")
    @classmethod
    def _policy(cls, value: str) -> str:
        return str(VersionPolicy.parse(value))

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.max_request_rows > self.max_queue_rows:
            raise ValueError(
                f"max_request_rows ({self.max_request_rows}) must not exceed max_queue_rows "
                f"({self.max_queue_rows}): such a request could never be admitted"
            )
        if self.max_batch_size > self.max_queue_rows:
            raise ValueError(
                f"max_batch_size ({self.max_batch_size}) must not exceed "
                f"max_queue_rows ({self.max_queue_rows})"
            )
        if self.feedback_token is not None and self.feedback_dir is None:
            raise ValueError("feedback_token is set but feedback_dir is not: set SERVE_FEEDBACK_DIR too")
        return self

    @property
    def compute_threads(self) -> int:
        """The process's budget of compute threads (0 = auto, resolved against the CPUs it may use)."""
        if self.intra_op_threads:
            return self.intra_op_threads
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, cpus - 1)

    @property
    def feedback_enabled(self) -> bool:
        """Whether the feedback API is on: a directory to store into and a token to guard it."""
        return self.feedback_dir is not None and self.feedback_token is not None

    @property
    def policy(self) -> VersionPolicy:
        return VersionPolicy.parse(self.version_policy)

    def describe(self) -> dict[str, Any]:
        """Settings as logged at start-up, with the tokens masked."""
        data = self.model_dump(mode="json")
        for secret in ("admin_token", "feedback_token"):
            if data.get(secret):
                data[secret] = "***"
        return data
