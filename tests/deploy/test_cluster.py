"""The cluster manifests (docs/cluster.md): the object-storage deployment and the KServe runtime.

Custom resources are validated against the real CRDs' ``openAPIV3Schema`` (tests/deploy/crds/, copied from
KServe and KEDA), strictly: a field the schema does not know is an error, as ``kubectl --validate=strict``
makes it. Built-in kinds go through kubernetes-validate. The runtime's container is then started as KServe
starts it: its command, args and env, a repository where the storage initializer puts it.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import tritonclient.grpc as triton_grpc
import yaml

from service.settings import Settings
from tests.helpers.data import MODELS
from tests.helpers.server import serve_on_free_ports, stop_process

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OBJECT_STORAGE = DEPLOY / "k8s-object-storage"
KSERVE = DEPLOY / "kserve"
CRDS = Path(__file__).parent / "crds"
K8S_VERSIONS = ("1.31.0", "1.34.0")
VENV_BIN = Path(sys.executable).parent
#: Built-in kinds; everything else must have a CRD here.
BUILTIN_GROUPS = {"v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v2"}
#: The api Deployment's name (the rollout controller is the other Deployment).
API = "digits-serving"


def documents(*directories: Path) -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc)
        for directory in directories
        for path in sorted(directory.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def find(kind: str, directory: Path, name: str | None = None) -> dict[str, Any]:
    found = [
        doc
        for _, doc in documents(directory)
        if doc["kind"] == kind and name in (None, doc["metadata"]["name"])
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''} in {directory}, found {len(found)}"
    return found[0]


def strict(schema: Any) -> Any:
    """The schema with unknown fields refused wherever it lists the fields (and does not keep unknowns)."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """``(apiVersion, kind)`` -> the strict openAPIV3Schema of each served version of each CRD here."""
    schemas = {}
    for path in sorted(CRDS.glob("*.yaml")):
        # libyaml when present: the InferenceService CRD is 2 MB, ten seconds for the pure-Python parser.
        for crd in yaml.load_all(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            if not crd:
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served"):
                    schema = version["schema"]["openAPIV3Schema"]
                    schemas[(f"{group}/{version['name']}", kind)] = strict(schema)
    return schemas


def schema_errors(doc: dict[str, Any], schemas: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    schema = schemas[(doc["apiVersion"], doc["kind"])]
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


CUSTOM = [
    (path, doc) for path, doc in documents(OBJECT_STORAGE, KSERVE) if doc["apiVersion"] not in BUILTIN_GROUPS
]


@pytest.fixture(scope="module")
def schemas() -> dict[tuple[str, str], dict[str, Any]]:
    return crd_schemas()


def test_every_custom_resource_has_its_crd(schemas: dict[tuple[str, str], dict[str, Any]]) -> None:
    kinds = {(doc["apiVersion"], doc["kind"]) for _, doc in CUSTOM}
    assert kinds == {
        ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"),
        ("serving.kserve.io/v1beta1", "InferenceService"),
        ("keda.sh/v1alpha1", "ScaledObject"),
    }
    assert kinds <= set(schemas)


@pytest.mark.parametrize(("path", "doc"), CUSTOM, ids=[f"{p.name}:{d['kind']}" for p, d in CUSTOM])
def test_custom_resources_validate_against_their_crds(
    path: Path, doc: dict[str, Any], schemas: dict[tuple[str, str], dict[str, Any]]
) -> None:
    assert schema_errors(doc, schemas) == [], path


def test_the_crd_validation_refuses_unknown_and_mistyped_fields(
    schemas: dict[tuple[str, str], dict[str, Any]],
) -> None:
    isvc = copy.deepcopy(find("InferenceService", KSERVE))
    isvc["spec"]["predictor"]["model"]["storageUrl"] = isvc["spec"]["predictor"]["model"].pop("storageUri")
    assert any("storageUrl" in e for e in schema_errors(isvc, schemas))
    runtime = copy.deepcopy(find("ClusterServingRuntime", KSERVE))
    runtime["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    assert any("is not of type 'integer'" in e for e in schema_errors(runtime, schemas))
    scaled = copy.deepcopy(find("ScaledObject", OBJECT_STORAGE))
    scaled["spec"]["minReplicas"] = 2
    assert any("minReplicas" in e for e in schema_errors(scaled, schemas))


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_builtin_kinds_validate_strictly(version: str, tmp_path: Path) -> None:
    builtin = [(p, d) for p, d in documents(OBJECT_STORAGE, KSERVE) if d["apiVersion"] in BUILTIN_GROUPS]
    files = []
    for index, (path, doc) in enumerate(builtin):
        file = tmp_path / f"{index}-{path.parent.name}-{path.stem}-{doc['kind']}.yaml"
        file.write_text(yaml.safe_dump(doc))
        files.append(file)
    assert {d["kind"] for _, d in builtin} >= {"Deployment", "CronJob", "ConfigMap", "ServiceAccount"}
    result = subprocess.run(
        [str(VENV_BIN / "kubernetes-validate"), "--strict", "-k", version, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for file in files:
        assert f"{file} passed" in result.stdout, file


def test_shared_manifests_are_copies_of_the_base() -> None:
    for name in ("service.yaml", "pdb.yaml", "pvc-feedback.yaml", "pvc-training-data.yaml"):
        assert (OBJECT_STORAGE / name).read_text() == (DEPLOY / "k8s" / name).read_text(), name


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((OBJECT_STORAGE / "kustomization.yaml").read_text())
    listed = sorted(kustomization["resources"])
    assert listed == sorted(p.name for p in OBJECT_STORAGE.glob("*.yaml") if p.name != "kustomization.yaml")


def test_replicas_read_the_bucket_into_an_emptydir_cache() -> None:
    config = find("ConfigMap", OBJECT_STORAGE)["data"]
    settings = {f"SERVE_{name.upper()}" for name in Settings.model_fields}
    assert {k for k in config if k.startswith("SERVE_")} <= settings
    assert {k for k in config if not k.startswith("SERVE_")} <= {"AWS_DEFAULT_REGION"}
    Settings(**{k.removeprefix("SERVE_").lower(): v for k, v in config.items() if k.startswith("SERVE_")})
    assert config["SERVE_MODEL_REPOSITORY"].startswith("s3://")

    pod = find("Deployment", OBJECT_STORAGE, API)["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"feedback"}  # feedback only: the models come from the bucket
    (api,) = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in api["volumeMounts"]}
    cache = next(v for v in pod["volumes"] if v["name"] == mounts[config["SERVE_MODEL_CACHE_DIR"]])
    limit = cache["emptyDir"]["sizeLimit"]
    assert limit.endswith("Gi") and int(config["SERVE_MODEL_CACHE_BYTES"]) < int(limit[:-2]) * 1024**3
    assert {"secretRef": {"name": "model-store", "optional": True}} in api["envFrom"]

    job = find("CronJob", OBJECT_STORAGE)["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (trainer,) = job["containers"]
    args = trainer["args"]
    assert args[args.index("--repository") + 1] == config["SERVE_MODEL_REPOSITORY"]
    assert {"secretRef": {"name": "model-store", "optional": True}} in trainer["envFrom"]
    assert "models" not in {v["name"] for v in job["volumes"]}


def test_one_rollout_controller_writes_the_record_into_the_bucket() -> None:
    """docs/rollout.md: with several replicas one process decides and writes the record beside the model;
    the replicas only follow it."""
    config = find("ConfigMap", OBJECT_STORAGE)["data"]
    assert config["SERVE_ROLLOUT_DECIDER"] == "controller"
    controller = find("Deployment", OBJECT_STORAGE, "digits-rollout-controller")
    assert controller["spec"]["replicas"] == 1 and controller["spec"]["strategy"]["type"] == "Recreate"
    (container,) = controller["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:3] == ["python", "-m", "service.controller"]
    assert command[command.index("--repository") + 1] == config["SERVE_MODEL_REPOSITORY"]
    assert {"secretRef": {"name": "model-store", "optional": True}} in container["envFrom"]
    claims = [v for v in controller["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert claims == []


def test_scaling_follows_the_queue() -> None:
    scaled = find("ScaledObject", OBJECT_STORAGE)["spec"]
    deployment = find("Deployment", OBJECT_STORAGE, API)
    assert scaled["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    prometheus = next(t for t in scaled["triggers"] if t["type"] == "prometheus")
    assert "inference_queue_rows" in prometheus["metadata"]["query"]
    assert scaled["minReplicaCount"] >= 2


def test_runtime_speaks_v2_onnx_on_kserve_ports() -> None:
    runtime = find("ClusterServingRuntime", KSERVE)["spec"]
    assert set(runtime["protocolVersions"]) == {"v2", "grpc-v2"}
    assert [f["name"] for f in runtime["supportedModelFormats"]] == ["onnx"]
    (container,) = runtime["containers"]
    assert container["name"] == "kserve-container"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SERVE_MODEL_REPOSITORY"] == "/mnt/models"
    assert env["SERVE_MODELS"] == "{{.Name}}"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http1": 8080, "h2c": 8081}
    assert container["args"][container["args"].index("--port") + 1] == "8080"
    assert env["SERVE_GRPC_PORT"] == "8081"
    isvc = find("InferenceService", KSERVE)
    assert (
        isvc["spec"]["predictor"]["model"]["runtime"]
        == find("ClusterServingRuntime", KSERVE)["metadata"]["name"]
    )
    assert isvc["spec"]["predictor"]["model"]["modelFormat"]["name"] == "onnx"


@pytest.mark.slow
def test_the_service_starts_as_the_runtime_starts_it(tmp_path: Path) -> None:
    """KServe's steps, done locally: the storage initializer copies the storageUri into /mnt/models, the
    controller fills ``{{.Name}}`` with the InferenceService's name, and the container runs with the
    runtime's command, args and env. Only the ports (free ones, on loopback) and /mnt/models (a temporary
    directory) differ."""
    (container,) = find("ClusterServingRuntime", KSERVE)["spec"]["containers"]
    name = find("InferenceService", KSERVE)["metadata"]["name"]
    mnt_models = tmp_path / "mnt" / "models"
    shutil.copytree(MODELS, mnt_models)  # a whole repository, more models than the one asked for
    program = [sys.executable if part == "python" else part for part in container["command"]]

    def command(http_port: int, grpc_port: int) -> tuple[list[str], dict[str, str]]:
        def local(value: str) -> str:
            value = value.replace("{{.Name}}", name).replace("/mnt/models", str(mnt_models))
            return {"8080": str(http_port), "8081": str(grpc_port), "0.0.0.0": "127.0.0.1"}.get(value, value)

        env = {k: v for k, v in os.environ.items() if not k.startswith("SERVE_")}
        env.update({e["name"]: local(e["value"]) for e in container["env"]})
        return [*program, *(local(arg) for arg in container["args"])], env

    log = tmp_path / "runtime.log"
    runtime = serve_on_free_ports(command, lambda port: log)
    process, url, grpc_port = runtime.proc, runtime.url, runtime.grpc_port
    try:
        index = httpx.post(f"{url}/v2/repository/index", json={"ready": True}, timeout=10).json()
        assert {row["name"] for row in index} == {name}
        assert httpx.get(f"{url}/v2/models/{name}", timeout=10).json()["platform"] == "onnxruntime_onnx"
        assert httpx.get(f"{url}/v2/models/mnist-mlp", timeout=10).status_code == 404
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert client.is_server_ready() and client.is_model_ready(name)
        client.close()
    finally:
        stop_process(process)
    assert process.returncode == 0, log.read_text()
