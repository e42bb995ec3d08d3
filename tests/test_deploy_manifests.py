"""The deployment files, validated offline: the compose file against the compose
specification (check-jsonschema's vendored schema), every Kubernetes manifest with
kubernetes-validate --strict (custom resources against their vendored CRDs), the
kustomizations rendered (and compared with `kubectl kustomize` where it exists), the
Dockerfile's promises, and a cross-check against pipeline/config.py that fails on a
renamed port or variable (shown by breaking copies of the manifests on purpose)."""

from __future__ import annotations

import copy
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent
KUSTOMIZATIONS = [K8S / "base", K8S / "overlays" / "external-redis"]

_spec = importlib.util.spec_from_file_location("deploy_manifests", DEPLOY / "manifests.py")
manifests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(manifests)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def base() -> list[dict]:
    return manifests.render(K8S / "base")


def test_compose_file_matches_the_compose_specification() -> None:
    proc = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                           str(DEPLOY / "compose.yaml")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_schema_check_can_fail(tmp_path: Path, compose: dict) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["gateway"]["depends_on"]["redis"]["condition"] = "service_ready"   # not a condition
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    proc = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "service_ready" in proc.stdout + proc.stderr


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_every_rendered_manifest_validates_strictly(directory: Path) -> None:
    docs = manifests.render(directory)
    assert manifests.k8s_problems(docs) == []
    assert manifests.unlisted_files(directory) == []


def test_kubernetes_validate_cli_strict_on_every_file() -> None:
    files = sorted(str(p) for p in (K8S / "base").glob("*.yaml") if p.name != "kustomization.yaml")
    proc = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "-k", "1.33.0", *files],
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    # Built-in kinds pass here; the one custom kind is checked against its CRD by k8s_problems.
    warned = set(re.findall(r"Couldn't find schema for kind (\w+)", out))
    assert warned == {"FlinkDeployment"}, out
    assert out.count(" passed for resource ") == 16, out


def test_strict_validation_rejects_unknown_fields(base: list[dict]) -> None:
    broken = copy.deepcopy(base)
    for d in broken:
        if d["kind"] == "FlinkDeployment":
            d["spec"]["taskManager"]["replicaz"] = 2
        if d["kind"] == "CronJob":
            d["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limit"] = {}
    problems = manifests.k8s_problems(broken)
    assert any("FlinkDeployment/recsys-stream" in p and "replicaz" in p for p in problems), problems
    assert any("CronJob/recsys-batch" in p and "'limit'" in p for p in problems), problems


def test_the_overlay_removes_only_the_in_cluster_redis(base: list[dict]) -> None:
    overlay = manifests.render(K8S / "overlays" / "external-redis")
    names = lambda docs: {(d["kind"], d["metadata"]["name"]) for d in docs}  # noqa: E731
    assert names(base) - names(overlay) == {("StatefulSet", "recsys-redis"), ("Service", "recsys-redis")}
    assert names(overlay) <= names(base)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its kustomize) is not installed here")
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_renderer_agrees_with_kubectl_kustomize(directory: Path) -> None:
    proc = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    key = lambda d: (d["apiVersion"], d["kind"], d["metadata"]["name"])  # noqa: E731
    theirs = sorted((d for d in yaml.safe_load_all(proc.stdout) if d), key=key)
    ours = sorted(manifests.render(directory), key=key)
    assert [key(d) for d in ours] == [key(d) for d in theirs]
    assert ours == theirs


def test_manifests_agree_with_the_config_module(compose: dict, base: list[dict]) -> None:
    assert manifests.drift_problems(compose, base) == []


def test_cross_check_fails_on_a_renamed_variable(compose: dict, base: list[dict]) -> None:
    broken = copy.deepcopy(compose)
    env = broken["services"]["gateway"]["environment"]
    env["RECSYS_SERVING_GRPC_PROT"] = env.pop("RECSYS_SERVING_GRPC_PORT")
    assert any("RECSYS_SERVING_GRPC_PROT is not a setting" in p for p in manifests.drift_problems(broken, base))
    k8s = copy.deepcopy(base)
    cm = next(d for d in k8s if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "recsys-env")
    cm["data"]["RECSYS_SERVING_MODELSERVER"] = cm["data"].pop("RECSYS_SERVING_MODEL_SERVER")
    problems = manifests.drift_problems(compose, k8s)
    assert any("RECSYS_SERVING_MODELSERVER is not a setting" in p for p in problems), problems


def test_cross_check_fails_on_a_changed_port(compose: dict, base: list[dict]) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["gateway"]["ports"] = ["50052:50052", "8080:8080"]
    broken["services"]["tfserving"]["command"] = [c.replace("--port=8500", "--port=9000")
                                                  for c in broken["services"]["tfserving"]["command"]]
    problems = manifests.drift_problems(broken, base)
    assert any("serving.grpc_port 50051 is not published" in p for p in problems), problems
    assert any("--port=9000 but the gateway calls port 8500" in p for p in problems), problems
    k8s = copy.deepcopy(base)
    gateway = next(d for d in k8s if d["kind"] == "Deployment" and d["metadata"]["name"] == "recsys-gateway")
    gateway["spec"]["template"]["spec"]["containers"][0]["ports"][1]["containerPort"] = 8081
    assert any("containerPorts" in p for p in manifests.drift_problems(compose, k8s))


def test_cross_check_fails_on_a_moved_model_or_a_stale_image(compose: dict, base: list[dict]) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["tfserving"]["volumes"][0] = "models:/srv/models:ro"
    broken["services"]["tfserving"]["image"] = "tensorflow/serving:2.18.0"
    problems = manifests.drift_problems(broken, base)
    assert any("base_path /models/ranker" in p for p in problems), problems
    assert any("should be tensorflow/serving:" in p for p in problems), problems
    k8s = copy.deepcopy(base)
    cm = next(d for d in k8s if d["metadata"]["name"] == "recsys-tfserving-config")
    cm["data"]["models.config"] = cm["data"]["models.config"].replace("num_versions: 1", "num_versions: 2")
    stream = next(d for d in k8s if d["kind"] == "FlinkDeployment")
    stream["spec"]["image"] = "recsys:0.0.9"
    problems = manifests.drift_problems(compose, k8s)
    assert any("differs from deploy/tfserving/models.config" in p for p in problems), problems
    assert any("recsys:0.0.9 should be recsys:" in p for p in problems), problems


def test_cross_check_fails_on_a_moved_entry_script(compose: dict, base: list[dict]) -> None:
    k8s = copy.deepcopy(base)
    stream = next(d for d in k8s if d["kind"] == "FlinkDeployment")
    stream["spec"]["job"]["args"] = [a.replace("flink_jobs/main.py", "flink_jobs/job.py") for a in stream["spec"]["job"]["args"]]
    broken = copy.deepcopy(compose)
    broken["services"]["stream"]["entrypoint"] = ["deploy/flink-submit.sh"]
    problems = manifests.drift_problems(broken, k8s)
    assert any("/opt/recsys/flink_jobs/job.py is no file" in p for p in problems), problems
    assert any("entrypoint deploy/flink-submit.sh" in p for p in problems), problems


def test_dockerfile_promises() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    assert len(stages) >= 2, "multi-stage"
    final = text.split("FROM ")[-1]
    user = re.findall(r"^USER\s+(\S+)", final, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0"), "the runtime stage runs as a non-root user"
    assert "pip install -r requirements.lock" in text, "installs the pinned lock"
    assert "openjdk-17-jdk-headless" in final and "check_jdk.sh" in final, "a full JDK 17, checked"
    assert re.search(r'^ENTRYPOINT \["tini", "--", "/opt/recsys/deploy/entrypoint.sh"\]', final, re.M)
    assert (DEPLOY / "entrypoint.sh").read_text().rstrip().endswith('exec recsys "$@"')
    # Every COPY source exists and is not excluded by .dockerignore (which allow-lists).
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    copies = [line for line in text.splitlines() if line.startswith("COPY ") and "--from=" not in line]
    assert copies
    for src in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+$", "\n".join(copies), re.M):
        for item in src.split():
            assert (ROOT / item).exists(), f"COPY {item}: no such file"
            assert item in allowed, f"COPY {item}: excluded by .dockerignore"
    compose_build = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["x-recsys"]["build"]
    assert (DEPLOY / compose_build["context"] / compose_build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"


def test_image_entry_point_runs_recsys(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RECSYS_HOME": str(tmp_path)}
    proc = subprocess.run([str(DEPLOY / "entrypoint.sh"), "config", "sample"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (ROOT / "recsys.example.toml").read_text()
    # `executor` without Spark's variables is an ordinary (unknown) recsys command, not a JVM start.
    proc = subprocess.run([str(DEPLOY / "entrypoint.sh"), "executor"], capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 2 and "executor" in proc.stderr
