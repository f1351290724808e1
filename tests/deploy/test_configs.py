"""Deployment configuration, checked with the real tools rather than by eye.

docker-compose (v1 validator), hadolint, kubernetes-validate and promtool must be installed: `make test`
installs them (system-deps and the dev extra). Nothing here builds images or starts containers; the checks
are static, plus the Kubernetes seeding script run for real on temporary directories.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
VENV_BIN = Path(sys.executable).parent
# 1.31: the oldest release where everything used here (CronJob podFailurePolicy, timeZone) is GA.
K8S_VERSIONS = ("1.31.0", "1.34.0")

# The metrics of docs/api.md#metrics.
HISTOGRAMS = {
    "inference_request_duration_seconds",
    "inference_queue_duration_seconds",
    "inference_compute_duration_seconds",
    "inference_batch_size",
    "model_load_duration_seconds",
}
METRICS = HISTOGRAMS | {
    "inference_requests_total",
    "inference_rows_total",
    "inference_batches_total",
    "inference_queue_rows",
    "model_info",
    "model_load_total",
    # docs/rollout.md
    "rollout_state",
    "rollout_weight",
    "rollout_decisions_total",
    "rollout_paired_feedback_total",
    "model_repository_up",
    "model_repository_errors_total",
}
# The settings of service/settings.py.
SETTINGS = {
    "SERVE_MODEL_REPOSITORY",
    "SERVE_MODELS",
    "SERVE_VERSION_POLICY",
    "SERVE_PROVIDERS",
    "SERVE_MAX_BATCH_SIZE",
    "SERVE_MAX_QUEUE_DELAY_US",
    "SERVE_MAX_QUEUE_ROWS",
    "SERVE_MAX_BODY_BYTES",
    "SERVE_POLL_INTERVAL_S",
    "SERVE_ADMIN_TOKEN",
    "SERVE_DRAIN_SECONDS",
    "SERVE_FEEDBACK_DIR",
    "SERVE_FEEDBACK_TOKEN",
    "SERVE_GRPC_PORT",
    "SERVE_ROLLOUT_DECIDER",
    "SERVE_LOG_FORMAT",
}
DEFAULT_DRAIN_SECONDS = 10.0
HEALTH_PATHS = {"/v2/health/live", "/v2/health/ready"}


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env, check=False
    )


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed (run `make system-deps`)"
    return path


def venv_tool(name: str) -> Path:
    path = VENV_BIN / name
    assert path.exists(), f"{path} missing (install the dev extra: pip install -e '.[dev]')"
    return path


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------------------------------------- compose

COMPOSE_BASE = ("docker-compose.yml",)
COMPOSE_GPU = ("docker-compose.yml", "docker-compose.gpu.yml")


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    # Variables that would silently change what the files mean are dropped; DATA_DIR stays (it is an input).
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    return run(tool("docker-compose"), *args, env=env)


def compose_config(files: tuple[str, ...]) -> dict[str, Any]:
    # With the train profile on, so that the trainer is listed by compose v2 as well as by v1.
    result = compose(*(a for f in files for a in ("-f", f)), "--profile", "train", "config")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return compose_config(COMPOSE_BASE)


@pytest.fixture(scope="module")
def gpu() -> dict[str, Any]:
    return compose_config(COMPOSE_GPU)


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path -> (source, read-only), from short ("src:dst:ro") or long volume syntax."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            out[target] = (source, mode == ["ro"])
        else:
            out[volume["target"]] = (volume["source"], bool(volume.get("read_only")))
    return out


def ports(service: dict[str, Any]) -> set[tuple[int, int]]:
    return {(int(p["published"]), int(p["target"])) for p in service["ports"]}


def seconds(duration: str | int | float) -> float:
    """A compose duration ("1m30s", "45s", "2m") in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", duration)
    assert parts and duration, f"unparsable duration {duration!r}"
    h, m, s = (float(p or 0) for p in parts.groups())
    return h * 3600 + m * 60 + s


@pytest.mark.parametrize(
    "args",
    [
        ["-f", "docker-compose.yml"],
        ["-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml"],
        ["-f", "docker-compose.yml", "--profile", "train"],
        ["-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml", "--profile", "train"],
    ],
    ids=["base", "gpu", "train", "gpu-train"],
)
def test_compose_files_validate(args: list[str]) -> None:
    result = compose(*args, "config", "-q")
    assert result.returncode == 0, result.stderr


def test_api_service_is_healthchecked_restarted_and_drained(base: dict[str, Any]) -> None:
    api = base["services"]["api"]
    assert api["build"]["dockerfile"] == "deploy/serve.Dockerfile"
    assert any("/v2/health/ready" in part for part in api["healthcheck"]["test"])
    assert api["restart"] == "unless-stopped"
    assert (8000, 8000) in ports(api)
    assert (8001, 8001) in ports(api), "gRPC"
    env = api["environment"]
    assert float(env["SERVE_POLL_INTERVAL_S"]) > 0, "a retrained version must be picked up"
    drain = float(env.get("SERVE_DRAIN_SECONDS") or DEFAULT_DRAIN_SECONDS)
    assert seconds(api["stop_grace_period"]) > drain
    assert env["SERVE_MODEL_REPOSITORY"] == "/models"


def test_trainer_is_a_one_shot_in_the_train_profile(base: dict[str, Any]) -> None:
    assert sorted(compose("config", "--profiles").stdout.split()) == ["tracing", "train"]
    in_profiles = {name for name, svc in base["services"].items() if svc.get("profiles")}
    assert in_profiles == {"trainer", "jaeger"}
    trainer = base["services"]["trainer"]
    assert trainer["profiles"] == ["train"]
    assert trainer["restart"] == "no"
    command = trainer["command"]
    assert command[0] == "retrain"
    assert command[command.index("--repository") + 1] == "/models"
    assert command[command.index("--feedback") + 1] == "/feedback"
    assert command[command.index("--data-dir") + 1] == "/data"
    assert "--force" not in command, "publishing must go through the promotion guard"


def test_tracing_is_an_opt_in_profile_and_off_by_default(base: dict[str, Any]) -> None:
    """docs/tracing.md: Jaeger only with ``--profile tracing``; the api traces only when the host sets
    the endpoint, which ``config`` leaves unset here."""
    result = compose("-f", "docker-compose.yml", "--profile", "tracing", "config")
    assert result.returncode == 0, result.stderr
    jaeger = yaml.safe_load(result.stdout)["services"]["jaeger"]
    assert jaeger["profiles"] == ["tracing"]
    assert (4318, 4318) in ports(jaeger) and (16686, 16686) in ports(jaeger)
    env = base["services"]["api"]["environment"]
    # Passed through from the host (null when unset there), never set in the file: off by default.
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None)
    raw = load_yaml(ROOT / "docker-compose.yml")["services"]["api"]["environment"]
    assert raw["OTEL_EXPORTER_OTLP_ENDPOINT"] is None
    collector = load_yaml(DEPLOY / "otel" / "collector.yaml")
    assert collector["service"]["pipelines"]["traces"]["receivers"] == ["otlp"]
    assert collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")


def test_trainer_writes_the_store_the_api_reads(base: dict[str, Any]) -> None:
    api, trainer = mounts(base["services"]["api"]), mounts(base["services"]["trainer"])
    assert api["/models"][0] == trainer["/models"][0] == "models"
    assert "models" in base["volumes"], "a named volume, seeded from the serving image"
    assert trainer["/models"][1] is False, "the trainer publishes into the store"
    assert trainer["/data"][1] is True


def test_trainer_retrains_from_the_feedback_the_api_writes(base: dict[str, Any]) -> None:
    api_service = base["services"]["api"]
    api, trainer = mounts(api_service), mounts(base["services"]["trainer"])
    feedback_dir = api_service["environment"]["SERVE_FEEDBACK_DIR"]
    assert api[feedback_dir] == ("feedback", False), "the api writes feedback into the named volume"
    assert trainer["/feedback"] == ("feedback", True)
    assert "feedback" in base["volumes"]
    # The token comes from the host or nowhere: feedback stays off (404) unless an operator sets it.
    assert api_service["environment"].get("SERVE_FEEDBACK_TOKEN") is None


def test_gpu_override_reserves_a_device_and_prefers_cuda(gpu: dict[str, Any]) -> None:
    for name in ("api", "trainer"):
        devices = gpu["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), name
    api = gpu["services"]["api"]
    # The GPU wheel with its CUDA and cuDNN wheels; the base stays the default (no CUDA base needed).
    assert api["build"]["args"] == {"ONNXRUNTIME": "gpu"}
    assert gpu["services"]["trainer"]["build"]["args"] == {"TF_CUDA": "true"}
    assert api["environment"]["SERVE_PROVIDERS"].split(",") == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]


@pytest.mark.parametrize("which", ["base", "gpu"])
def test_compose_uses_only_documented_settings(which: str, request: pytest.FixtureRequest) -> None:
    config = request.getfixturevalue(which)
    for service in config["services"].values():
        used = {k for k in service.get("environment", {}) if k.startswith("SERVE_")}
        assert used <= SETTINGS, used - SETTINGS


# ------------------------------------------------------------------------------------------ Dockerfiles


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    # Comment lines go first: a backslash ending a comment does not continue anything.
    lines = [ln for ln in dockerfile.read_text().splitlines() if not ln.lstrip().startswith("#")]
    lines = [ln.strip() for ln in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines() if ln.strip()]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


@pytest.mark.parametrize("name", ["serve.Dockerfile", "train.Dockerfile", "test/prometheus.Dockerfile"])
def test_hadolint(name: str) -> None:
    result = run(venv_tool("hadolint"), "--no-color", DEPLOY / name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_serve_image_contract() -> None:
    steps = instructions(DEPLOY / "serve.Dockerfile")
    assert steps[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    assert sum(1 for op, _ in steps if op == "FROM") >= 2, "multi-stage build expected"
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    ops = dict(final)
    assert json.loads(ops["CMD"]) == ["python", "-m", "service", "--host", "0.0.0.0", "--port", "8000"]
    assert "ENTRYPOINT" not in ops
    assert ops["EXPOSE"].split() == ["8000", "8001"]
    assert ops["STOPSIGNAL"] == "SIGTERM"
    assert "/v2/health/ready" in ops["HEALTHCHECK"]
    assert ops["USER"].split(":")[0] not in ("root", "0")
    assert ("COPY", "--chown=10001:10001 models /models") in final
    assert "SERVE_MODEL_REPOSITORY=/models" in ops["ENV"]
    # pyproject.toml's dependencies and the package without extras: the serving image holds no TensorFlow.
    runs = " ".join(args for op, args in steps if op == "RUN")
    assert (
        "pip install --no-cache-dir -r requirements.txt" in runs
        and "pip install --no-cache-dir --no-deps ." in runs
    )
    assert "tensorflow" not in runs.lower() and "[train]" not in runs
    assert ("ARG", "ONNXRUNTIME=cpu") in steps


def test_train_image_contract() -> None:
    steps = instructions(DEPLOY / "train.Dockerfile")
    assert steps[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    stages = [args for op, args in steps if op == "FROM"]
    assert stages == ["${BASE_IMAGE}"]
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    ops = dict(final)
    assert json.loads(ops["ENTRYPOINT"]) == ["python", "-m", "training"]
    cmd = json.loads(ops["CMD"])
    assert cmd[0] == "train" and cmd[cmd.index("--publish") + 1] == "/models" and "--force" not in cmd
    assert ops["USER"].split(":")[0] == "10001", "same uid as the serving image: they share a volume"
    assert any(op == "RUN" and ".[train]" in args for op, args in steps)


# --------------------------------------------------------------------------------------- .dockerignore


def test_dockerignore_keeps_models_and_sources_only(tmp_path: Path) -> None:
    # Matched by docker-py (the library docker-compose builds with), in docker-compose's own interpreter.
    interpreter = Path(tool("docker-compose")).read_text(errors="replace").splitlines()[0].removeprefix("#!")
    ignored = [
        ".venv/bin/python",
        ".git/HEAD",
        ".pytest_cache/v/cache",
        "service/__pycache__/app.cpython-311.pyc",
        "shared/data/mnist/train-images-idx3-ubyte.gz",
        "data/cifar10.npz",
        "training/fixtures/sample.npz",
        "bench/results/serving.json",
        "test-artifacts/log.txt",
        "models/mnist-cnn/2/model.onnx",  # a user's own versions and models (docs/getting-started.md)
        "models/my-digits/1/model.onnx",
        "models/mnist-cnn/rollout.json",
        "models/mnist-cnn/.staging-x/model.onnx",
        "service/grpc/_h2.cpython-311-x86_64-linux-gnu.so",  # built here; the image builds its own
        "service/http/_leaves.cpython-311-x86_64-linux-gnu.so",
    ]
    needed = [
        "pyproject.toml",
        "setup.py",
        "service/grpc/_h2.c",
        "service/http/_leaves.c",
        "service/core/_finite.c",
        "README.md",
        "service/app.py",
        "service/static/index.html",
        "training/__main__.py",
        "models/mnist-cnn/1/model.onnx",
        "models/mnist-cnn/1/metadata.json",
        "models/mnist-cnn/1/report/confusion.png",
        "models/cifar10-cnn/1/model.onnx",
        "models/README.md",
    ]
    for name in ignored + needed:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    shutil.copy(ROOT / ".dockerignore", tmp_path / ".dockerignore")
    script = (
        "import sys; from docker.utils.build import exclude_paths;"
        "lines = open(sys.argv[1] + '/.dockerignore').read().splitlines();"
        "patterns = [p for p in lines if p.strip() and not p.startswith('#')];"
        "print('\\n'.join(sorted(exclude_paths(sys.argv[1], patterns))))"
    )
    result = run(interpreter.split()[0], "-c", script, tmp_path)
    assert result.returncode == 0, result.stderr
    kept = set(result.stdout.split())
    assert set(needed) <= kept, set(needed) - kept
    assert not set(ignored) & kept, set(ignored) & kept
    # Everything the Dockerfiles copy from the context must survive the ignore file.
    for name in ("serve.Dockerfile", "train.Dockerfile"):
        for op, args in instructions(DEPLOY / name):
            if op == "COPY" and "--from=" not in args:
                for source in [a for a in args.split() if not a.startswith("--")][:-1]:
                    assert source.removeprefix("./") in {p.split("/")[0] for p in kept}, (name, source)


# ------------------------------------------------------------------------------------------ Kubernetes


def k8s_manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s(kind: str, component: str = "api") -> dict[str, Any]:
    """The one manifest of ``kind`` (of Deployments, the one of ``component``)."""
    found = [doc for p in k8s_manifests() for doc in yaml.safe_load_all(p.read_text()) if doc["kind"] == kind]
    if kind == "Deployment":
        found = [d for d in found if d["metadata"]["labels"]["app.kubernetes.io/component"] == component]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_strictly(version: str) -> None:
    manifests = k8s_manifests()
    result = run(venv_tool("kubernetes-validate"), "--strict", "-k", version, *manifests)
    assert result.returncode == 0, result.stdout + result.stderr
    # An unknown kind only warns and exits 0: require an explicit pass for every file.
    for path in manifests:
        assert f"{path.relative_to(ROOT)} passed" in result.stdout.replace(str(ROOT) + "/", ""), path


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(p.name for p in k8s_manifests())


def test_deployment_probes_and_shutdown_budget() -> None:
    spec = k8s("Deployment")["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    (api,) = pod["containers"]
    # Readiness over gRPC health (SERVING exactly when /v2/health/ready is 200), on the configured port.
    grpc_port = int(k8s("ConfigMap")["data"]["SERVE_GRPC_PORT"])
    assert api["readinessProbe"]["grpc"] == {"port": grpc_port}
    assert {"name": "grpc", "containerPort": grpc_port, "protocol": "TCP"} in api["ports"]
    assert api["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert api["startupProbe"]["httpGet"]["path"] in HEALTH_PATHS
    config = k8s("ConfigMap")
    assert {"configMapRef": {"name": config["metadata"]["name"]}} in api["envFrom"]
    drain = float(config["data"].get("SERVE_DRAIN_SECONDS", DEFAULT_DRAIN_SECONDS))
    sleep_cmd = api["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep_cmd[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > drain + float(sleep_cmd[1])
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(api["ports"][0]["containerPort"]) == "8000"


def claims(pod: dict[str, Any]) -> dict[str, str]:
    """Volume name -> PersistentVolumeClaim name."""
    return {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }


def test_pods_run_unprivileged_and_read_models_from_the_shared_claim() -> None:
    pod = k8s("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in pod["containers"] + pod["initContainers"]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, container["name"]
        assert "limits" in container["resources"] and "requests" in container["resources"]
    (api,) = pod["containers"]
    repository = k8s("ConfigMap")["data"]["SERVE_MODEL_REPOSITORY"]
    mount = next(m for m in api["volumeMounts"] if m["mountPath"] == repository)
    assert mount["readOnly"] is True
    models_claim = claims(pod)[mount["name"]]
    models_pvc = next(
        doc
        for p in k8s_manifests()
        for doc in [load_yaml(p)]
        if doc["kind"] == "PersistentVolumeClaim" and doc["metadata"]["name"] == models_claim
    )
    assert models_pvc["spec"]["accessModes"] == ["ReadWriteMany"]

    job = k8s("CronJob")["spec"]["jobTemplate"]["spec"]
    job_pod = job["template"]["spec"]
    (trainer,) = job_pod["containers"]
    publish_to = trainer["args"][trainer["args"].index("--repository") + 1]
    writer = next(m for m in trainer["volumeMounts"] if m["mountPath"] == publish_to)
    assert claims(job_pod)[writer["name"]] == models_claim and not writer.get("readOnly", False)
    assert "--force" not in trainer["args"]
    assert k8s("CronJob")["spec"]["concurrencyPolicy"] == "Forbid"

    # Feedback: every replica writes into one ReadWriteMany claim, which the CronJob retrains from.
    feedback_dir = k8s("ConfigMap")["data"]["SERVE_FEEDBACK_DIR"]
    api_feedback = next(m for m in api["volumeMounts"] if m["mountPath"] == feedback_dir)
    assert not api_feedback.get("readOnly", False)
    feedback_claim = claims(pod)[api_feedback["name"]]
    read_from = trainer["args"][trainer["args"].index("--feedback") + 1]
    reader = next(m for m in trainer["volumeMounts"] if m["mountPath"] == read_from)
    assert claims(job_pod)[reader["name"]] == feedback_claim and reader["readOnly"] is True
    feedback_pvc = next(
        doc
        for p in k8s_manifests()
        for doc in [load_yaml(p)]
        if doc["kind"] == "PersistentVolumeClaim" and doc["metadata"]["name"] == feedback_claim
    )
    assert feedback_pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    token = next(e for e in api["env"] if e["name"] == "SERVE_FEEDBACK_TOKEN")
    assert token["valueFrom"]["secretKeyRef"]["optional"] is True, "no Secret: feedback off, pods start"


def test_hpa_pdb_and_service_target_the_deployment() -> None:
    deployment = k8s("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    hpa = k8s("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert k8s("PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert k8s("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = k8s("Service")["spec"]
    assert service["type"] == "ClusterIP" and service["ports"][0]["port"] == 8000
    assert {"name": "grpc", "port": 8001, "targetPort": "grpc"}.items() <= service["ports"][1].items()
    assert service["selector"].items() <= labels.items()


def test_configmap_uses_only_documented_settings() -> None:
    data = k8s("ConfigMap")["data"]
    assert set(data) <= SETTINGS, set(data) - SETTINGS
    assert all(isinstance(v, str) for v in data.values())


def seed(script: str, image_models: Path, repository: Path) -> None:
    script = script.replace("/repository", str(repository)).replace("/models", str(image_models))
    result = subprocess.run(
        ["/bin/sh", "-ec", script],
        env={"HOSTNAME": "pod-a", "PATH": os.defpath},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_seed_init_container_copies_whole_versions_into_an_empty_repository(tmp_path: Path) -> None:
    (init,) = k8s("Deployment")["spec"]["template"]["spec"]["initContainers"]
    script = init["command"][-1]
    image = tmp_path / "image"
    for version in ("1", "2"):
        (image / "mnist-cnn" / version).mkdir(parents=True)
        (image / "mnist-cnn" / version / "model.onnx").write_text(f"onnx {version}")
        (image / "mnist-cnn" / version / "metadata.json").write_text("{}")
    (image / "broken" / "1").mkdir(parents=True)  # no model.onnx: never copied

    repository = tmp_path / "repository"
    (repository / "lost+found").mkdir(parents=True)
    seed(script, image, repository)
    assert (repository / "mnist-cnn" / "2" / "model.onnx").read_text() == "onnx 2"
    assert sorted(p.name for p in (repository / "mnist-cnn").iterdir()) == ["1", "2"]
    assert not (repository / "broken").exists()

    # A repository in use is left alone, even if it lacks versions the image has.
    shutil.rmtree(repository / "mnist-cnn" / "1")
    seed(script, image, repository)
    assert sorted(p.name for p in (repository / "mnist-cnn").iterdir()) == ["2"]


# ------------------------------------------------------------------------------- Prometheus and Grafana

_NOT_METRICS = re.compile(
    r'"(?:[^"\\]|\\.)*"|\{[^}]*\}|\[[^\]]*\]|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)'
)
_IDENTIFIER = re.compile(r"(?<![\w$.])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (histogram suffixes folded into the histogram's name)."""
    names = set()
    for match in _IDENTIFIER.finditer(_NOT_METRICS.sub(" ", expr)):
        name, is_call = match.groups()
        if is_call or name.lower() in _KEYWORDS:
            continue
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        names.add(base if base in HISTOGRAMS else name)
    return names


def test_metric_name_extraction() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, model) (rate(x_seconds_bucket{status=~"a|b"}[1m]))) / up'
    assert metric_names(expr) == {"x_seconds_bucket", "up"}
    assert metric_names("sum(rate(inference_batch_size_bucket[5m]))") == {"inference_batch_size"}


def dashboard_exprs() -> dict[str, str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "serving.json").read_text())
    exprs = {}
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            exprs[f"panel{panel['id']}_{target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        exprs[f"variable_{variable['name']}"] = re.sub(
            r"label_values\((\w+),.*", r"\1", variable["query"]["query"]
        )
    return exprs


def test_promtool_checks_prometheus_config_and_alert_rules() -> None:
    promtool = tool("promtool")
    result = run(promtool, "check", "config", DEPLOY / "prometheus" / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    result = run(promtool, "test", "rules", DEPLOY / "prometheus" / "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_the_api_every_5s() -> None:
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "api"]
    assert job["static_configs"][0]["targets"] == ["api:8000"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert seconds(job["scrape_interval"]) == 5


def test_dashboard_and_alerts_use_only_contract_metrics() -> None:
    exprs = dashboard_exprs()
    used: set[str] = set()
    for key, expr in exprs.items():
        names = metric_names(expr)
        assert names, f"{key}: no metric in {expr!r}"
        assert names <= METRICS, f"{key}: {names - METRICS}"
        used |= names
    required = {
        "inference_requests_total",
        "inference_request_duration_seconds",
        "inference_batch_size",
        "inference_queue_rows",
        "inference_rows_total",
        "model_info",
    }
    assert required <= used, required - used
    rules = load_yaml(DEPLOY / "prometheus" / "alerts.yml")
    for rule in (r for group in rules["groups"] for r in group["rules"]):
        assert metric_names(rule["expr"]) <= METRICS | {"up"}, rule["alert"]


def test_dashboard_expressions_parse(tmp_path: Path) -> None:
    # promtool's PromQL parser, through recording rules (Grafana variables replaced by a regex).
    rules = [
        {"record": f"dashboard:{key}", "expr": expr.replace("$model", ".*")}
        for key, expr in dashboard_exprs().items()
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(tool("promtool"), "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning_points_at_the_compose_services(base: dict[str, Any]) -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    (source,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    prometheus = base["services"]["prometheus"]
    assert (9090, 9090) in ports(prometheus)
    assert mounts(prometheus)["/etc/prometheus"] == (str(DEPLOY / "prometheus"), True)
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "serving.json").read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"]}
    assert uids == {source["uid"]}

    (provider,) = load_yaml(provisioning / "dashboards" / "dashboards.yml")["providers"]
    grafana = base["services"]["grafana"]
    grafana_mounts = mounts(grafana)
    assert Path(grafana_mounts[provider["options"]["path"]][0]) == DEPLOY / "grafana" / "dashboards"
    assert Path(grafana_mounts["/etc/grafana/provisioning"][0]) == provisioning
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert (3000, 3000) in ports(grafana)


def test_the_rollout_controller_is_one_writer_and_the_api_only_follows() -> None:
    """docs/rollout.md: with several api replicas one process decides, from Prometheus, and writes."""
    assert k8s("ConfigMap")["data"]["SERVE_ROLLOUT_DECIDER"] == "controller"
    controller = k8s("Deployment", "rollout-controller")
    assert controller["spec"]["replicas"] == 1 and controller["spec"]["strategy"]["type"] == "Recreate"
    (container,) = controller["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:3] == ["python", "-m", "service.controller"]
    assert command[command.index("--repository") + 1] == k8s("ConfigMap")["data"]["SERVE_MODEL_REPOSITORY"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "models"]
    assert not mount.get("readOnly", False)
    compose_file = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert compose_file["api"]["environment"]["SERVE_ROLLOUT_DECIDER"] == "controller"
    assert compose_file["rollout-controller"]["command"][:3] == ["python", "-m", "service.controller"]
    assert "models:/models" in compose_file["rollout-controller"]["volumes"]
