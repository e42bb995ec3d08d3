"""Offline checks of the deployment manifests (used by tests/test_deploy_manifests.py).

No cluster and no Docker engine are needed:

* ``render(dir)`` is a small kustomize: a kustomization's ``resources`` (files and
  directories with their own kustomization.yaml) and ``patches`` that delete a
  resource (``$patch: delete``), the only features deploy/k8s uses; the tests compare
  it with ``kubectl kustomize`` where that binary exists;
* ``k8s_problems(docs)`` validates every resource strictly: built-in kinds with
  kubernetes-validate's schemas, custom ones against the vendored CRDs in
  ``deploy/k8s/crds`` (unknown fields rejected there too);
* ``drift_problems(...)`` cross-checks the compose file and the Kubernetes manifests
  against ``pipeline/config.py``, ``deploy/tfserving`` and the lock: variable names,
  ports, model name and paths, images. Each returns a list of problems (empty = fine).

    python deploy/manifests.py deploy/k8s/overlays/external-redis   # print the rendering
"""

from __future__ import annotations

import copy
import re
import sys
import tomllib
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CRDS = DEPLOY / "k8s" / "crds"
Doc = dict[str, Any]


# --- YAML and kustomize --------------------------------------------------------------
def load_docs(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(Path(path).read_text(encoding="utf-8")) if d]


def _ident(doc: Doc) -> tuple[str, str, str]:
    return doc.get("apiVersion", ""), doc["kind"], doc["metadata"]["name"]


def kustomization(directory: Path) -> Doc:
    path = Path(directory) / "kustomization.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no kustomization.yaml")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def render(directory: Path) -> list[Doc]:
    """The resources a kustomization produces (resources + ``$patch: delete`` patches)."""
    directory = Path(directory)
    k = kustomization(directory)
    unsupported = set(k) - {"apiVersion", "kind", "resources", "patches"}
    if unsupported:
        raise ValueError(f"{directory}/kustomization.yaml: fields {sorted(unsupported)} are beyond this renderer; "
                         "extend deploy/manifests.py.render or use kubectl kustomize")
    docs: list[Doc] = []
    for entry in k.get("resources", []):
        target = (directory / entry).resolve()
        docs += render(target) if target.is_dir() else load_docs(target)
    for patch in k.get("patches", []):
        for p in load_docs(directory / patch["path"]):
            if p.get("$patch") != "delete":
                raise ValueError(f"{patch['path']}: only `$patch: delete` patches are supported here")
            ident = _ident(p)
            matches = [d for d in docs if _ident(d) == ident]
            if not matches:
                raise ValueError(f"{patch['path']}: no resource {ident} to delete")
            docs = [d for d in docs if _ident(d) != ident]
    return docs


def unlisted_files(directory: Path) -> list[str]:
    """YAML files beside a kustomization that it neither lists nor uses as a patch (forgotten ones)."""
    k = kustomization(directory)
    used = set(k.get("resources", [])) | {p["path"] for p in k.get("patches", [])} | {"kustomization.yaml"}
    return sorted(p.name for p in Path(directory).glob("*.yaml") if p.name not in used)


# --- schema validation -----------------------------------------------------------------
def _strict(schema: Any) -> Any:
    """A CRD's structural schema with unknown fields rejected (what the API server prunes)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and not schema.get("x-kubernetes-preserve-unknown-fields") \
                and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def crd_schemas(crd_dir: Path = CRDS) -> dict[tuple[str, str], Doc]:
    """(apiVersion, kind) -> strict JSON schema, from every vendored CRD."""
    out: dict[tuple[str, str], Doc] = {}
    for path in sorted(crd_dir.glob("*.y*ml")):
        for crd in load_docs(path):
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for v in crd["spec"]["versions"]:
                schema = _strict(copy.deepcopy(v["schema"]["openAPIV3Schema"]))
                schema.setdefault("properties", {}).update({"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                                           "metadata": {"type": "object"}})
                out[(f"{group}/{v['name']}", kind)] = schema
    return out


def k8s_problems(docs: Iterable[Doc], kubernetes_version: str = "1.33.0") -> list[str]:
    """Strict schema problems of each resource (built-in kinds and vendored CRDs)."""
    import jsonschema
    import kubernetes_validate.utils as kv

    crds = crd_schemas()
    problems = []
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        crd = crds.get((doc.get("apiVersion"), doc.get("kind")))
        try:
            if crd is not None:
                jsonschema.Draft7Validator(crd).validate(doc)
            else:
                kv.validate(doc, kubernetes_version, strict=True)
        except jsonschema.ValidationError as exc:
            problems.append(f"{name}: {'.'.join(str(p) for p in exc.absolute_path)}: {exc.message}")
        except kv.SchemaNotFoundError:
            problems.append(f"{name}: no schema for {doc.get('apiVersion')} (vendor its CRD into {CRDS})")
    return problems


# --- drift against the code --------------------------------------------------------------
def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line:
            name, version = line.strip().split("==", 1)
            pins[name.lower().replace("_", "-")] = version
    return pins


def expected_images() -> dict[str, str]:
    """Image repository -> the one tag every manifest must use (from pyproject and the lock)."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    pins = _pins()
    return {"recsys": version, "tensorflow/serving": pins["tensorflow-cpu"], "redis": "7.4-alpine"}


def _containers(doc: Doc) -> list[Doc]:
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod = spec.get("template", {}).get("spec", {}) if doc["kind"] != "FlinkDeployment" else spec["podTemplate"]["spec"]
    return list(pod.get("initContainers", [])) + list(pod.get("containers", []))


def _env_of(container: Doc, configmaps: dict[str, Doc]) -> dict[str, str]:
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        env.update(configmaps[src["configMapRef"]["name"]].get("data", {}))
    for e in container.get("env", []):
        env[e["name"]] = e.get("value", "$(secret)")
    return env


def _tfserving_flags(args: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)


def drift_problems(compose: Doc, k8s: list[Doc]) -> list[str]:
    """Everything in the manifests that disagrees with the code, the lock or deploy/tfserving."""
    from pipeline.config import env_var_names, load_config
    from pipeline.home import Home

    problems: list[str] = []
    known = env_var_names()
    images = expected_images()
    services = compose["services"]
    configmaps = {d["metadata"]["name"]: d for d in k8s if d["kind"] == "ConfigMap"}
    k8s_services = {d["metadata"]["name"]: d for d in k8s if d["kind"] == "Service"}
    tfs_dir = DEPLOY / "tfserving"

    def check_env(where: str, env: dict[str, Any]) -> dict[str, str]:
        for name in env:
            if name.startswith("RECSYS_") and name not in known:
                problems.append(f"{where}: {name} is not a setting of pipeline/config.py")
        return {k: str(v) for k, v in env.items() if k.startswith("RECSYS_") and k in known and "$(" not in str(v)}

    def check_image(where: str, image: str) -> None:
        repo, _, tag = image.rpartition(":")
        if repo not in images:
            problems.append(f"{where}: image {image} is not one of {sorted(images)}")
        elif tag != images[repo]:
            problems.append(f"{where}: image {image} should be {repo}:{images[repo]}")

    def config_for(where: str, env: dict[str, str]):  # noqa: ANN202
        try:
            return load_config(home=env.get("RECSYS_HOME", "/data"), environ=env, config_file=None)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            return None

    # The model server's files: name, base path, flag files.
    models_config = (tfs_dir / "models.config").read_text()
    model_name = re.search(r'name:\s*"([^"]+)"', models_config).group(1)
    base_path = re.search(r'base_path:\s*"([^"]+)"', models_config).group(1)

    # --- compose -------------------------------------------------------------------------
    for name, svc in services.items():
        if "image" in svc:
            check_image(f"compose {name}", svc["image"])
        env = check_env(f"compose {name}", svc.get("environment") or {})
        if svc.get("image", "").startswith("recsys:") and svc.get("command") == ["serve"]:
            cfg = config_for(f"compose {name}", env)
            if cfg is None:
                continue
            ports = {p.rsplit(":", 1)[-1] for p in svc.get("ports", [])}
            for key in ("grpc_port", "http_port"):
                if str(getattr(cfg.serving, key)) not in ports:
                    problems.append(f"compose {name}: serving.{key} {getattr(cfg.serving, key)} is not published "
                                    f"(ports {sorted(ports)})")
            if f":{cfg.serving.http_port}/healthz" not in " ".join(svc.get("healthcheck", {}).get("test", [])):
                problems.append(f"compose {name}: the health check does not ask :{cfg.serving.http_port}/healthz")
            if cfg.serving.model_name != model_name:
                problems.append(f"compose {name}: serving.model_name {cfg.serving.model_name} != models.config {model_name}")
            host, _, port = cfg.serving.model_server.partition(":")
            tfs = services.get(host)
            if tfs is None:
                problems.append(f"compose {name}: serving.model_server {cfg.serving.model_server} names no service")
            else:
                flags = _tfserving_flags(tfs.get("command", []))
                if flags.get("port") != port:
                    problems.append(f"compose {host}: --port={flags.get('port')} but the gateway calls port {port}")
                models_mount = [v for v in tfs.get("volumes", []) if v.split(":")[0] == "models"]
                gw_models = [v for v in svc.get("volumes", []) if v.split(":")[0] == "models"]
                if not models_mount or f"{models_mount[0].split(':')[1]}/{model_name}" != base_path:
                    problems.append(f"compose {host}: the models volume is not mounted where models.config's "
                                    f"base_path {base_path} expects it")
                if not gw_models or gw_models[0].split(":")[1] != str(Home(cfg.home).models):
                    problems.append(f"compose {name}: the models volume is not at the home's models/ "
                                    f"({Home(cfg.home).models}), where `recsys export` writes")
                for f in ("model_config_file", "batching_parameters_file", "monitoring_config_file"):
                    if not (tfs_dir / Path(flags.get(f, "/missing")).name).is_file():
                        problems.append(f"compose {host}: --{f}={flags.get(f)} is not a file of deploy/tfserving")
            redis_host = urlsplit(cfg.redis.url)  # redis://[:password@]host:port/db
            if redis_host.scheme not in ("redis", "rediss") or redis_host.hostname not in services:
                shown = redis_host._replace(netloc=redis_host.hostname or "").geturl()  # no password in messages
                problems.append(f"compose {name}: redis.url {shown} names no service")
            spark = re.match(r"spark://([^:/]+):(\d+)", cfg.spark.master)
            if not spark or spark.group(1) not in services or \
                    spark.group(2) not in services[spark.group(1)].get("command", []):
                problems.append(f"compose {name}: spark.master {cfg.spark.master} does not match a master's --port")
    rest = [c for c in services.get("flink-jobmanager", {}).get("command", []) if c.startswith("rest.port=")]
    submit = services.get("stream", {}).get("command", [])
    if not rest or f"flink-jobmanager:{rest[0].split('=')[1]}" not in submit:
        problems.append("compose stream: -m does not name flink-jobmanager's rest.port")

    # Paths into the image's copy of the repository must exist in the repository.
    def strings(node: Any) -> Iterable[str]:
        if isinstance(node, dict):
            for v in node.values():
                yield from strings(v)
        elif isinstance(node, list):
            for v in node:
                yield from strings(v)
        elif isinstance(node, str):
            yield node

    for where, tree in (("compose", compose), *((f"k8s {d['kind']}/{d['metadata']['name']}", d) for d in k8s)):
        for text in strings(tree):
            for path in re.findall(r"/opt/recsys/([\w./-]+)", text):
                if not (ROOT / path).exists():
                    problems.append(f"{where}: /opt/recsys/{path} is no file of the repository (moved?)")
        for svc in (tree.get("services", {}) or {}).values() if where == "compose" else ():
            for item in svc.get("entrypoint", [])[:1]:
                if "/" in item and not (ROOT / item).exists():
                    problems.append(f"compose: entrypoint {item} is no file of the repository")

    # --- Kubernetes ------------------------------------------------------------------------
    for d in k8s:
        where = f"k8s {d['kind']}/{d['metadata']['name']}"
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "recsys-env":
            check_env(where, d.get("data", {}))
        if d["kind"] == "FlinkDeployment":
            check_image(where, d["spec"]["image"])
            flink = _pins()["apache-flink"]
            if d["spec"]["flinkVersion"] != "v" + "_".join(flink.split(".")[:2]):
                problems.append(f"{where}: flinkVersion {d['spec']['flinkVersion']} but the lock pins apache-flink {flink}")
            if f"flink-python-{flink}.jar" not in d["spec"]["job"]["jarURI"]:
                problems.append(f"{where}: jarURI is not the wheel's flink-python-{flink}.jar")
        if d["kind"] not in ("Deployment", "StatefulSet", "CronJob", "FlinkDeployment"):
            continue
        for c in _containers(d):
            if "image" in c:
                check_image(f"{where} {c['name']}", c["image"])
            env = check_env(f"{where} {c['name']}", _env_of(c, configmaps))
            for arg in c.get("args", []):
                if arg.startswith("spark.kubernetes.container.image="):
                    check_image(f"{where} {c['name']} (executors)", arg.split("=", 1)[1])
            if c.get("args") == ["serve"]:
                cfg = config_for(where, env)
                if cfg is None:
                    continue
                ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
                if ports.get("grpc") != cfg.serving.grpc_port or ports.get("http") != cfg.serving.http_port:
                    problems.append(f"{where}: containerPorts {ports} != serving ports "
                                    f"grpc {cfg.serving.grpc_port}, http {cfg.serving.http_port}")
                if c.get("livenessProbe", {}).get("grpc", {}).get("port") != cfg.serving.grpc_port:
                    problems.append(f"{where}: the gRPC health probe is not on serving.grpc_port")
                if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
                    problems.append(f"{where}: the readiness probe does not ask /healthz")
                host, _, port = cfg.serving.model_server.partition(":")
                svc = k8s_services.get(host)
                if svc is None or int(port) not in [p["port"] for p in svc["spec"]["ports"]]:
                    problems.append(f"{where}: serving.model_server {cfg.serving.model_server} is no Service port")
                if cfg.serving.model_name != model_name:
                    problems.append(f"{where}: serving.model_name {cfg.serving.model_name} != models.config {model_name}")
                mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
                if str(cfg.home) not in mounts:
                    problems.append(f"{where}: RECSYS_HOME {cfg.home} is not a mounted volume")
            if c.get("image", "").startswith("tensorflow/serving"):
                flags = _tfserving_flags(c.get("args", []))
                compose_flags = _tfserving_flags(services.get("tfserving", {}).get("command", []))
                if flags != compose_flags:
                    problems.append(f"{where}: TF Serving flags differ from compose's: {flags} vs {compose_flags}")
                models = [m for m in c.get("volumeMounts", []) if m.get("subPath") == "models"]
                if not models or f"{models[0]['mountPath']}/{model_name}" != base_path:
                    problems.append(f"{where}: the home's models/ is not mounted where base_path {base_path} expects")
                cm = configmaps.get("recsys-tfserving-config", {}).get("data", {})
                for f in ("model_config_file", "batching_parameters_file", "monitoring_config_file"):
                    fname = Path(flags.get(f, "/missing")).name
                    source = tfs_dir / fname
                    if not source.is_file() or cm.get(fname) != source.read_text():
                        problems.append(f"{where}: ConfigMap recsys-tfserving-config[{fname}] differs from "
                                        f"deploy/tfserving/{fname}")
    return problems


if __name__ == "__main__":
    yaml.safe_dump_all(render(Path(sys.argv[1] if len(sys.argv) > 1 else DEPLOY / "k8s" / "base")), sys.stdout,
                       sort_keys=False)
