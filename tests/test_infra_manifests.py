"""The cluster deployment, checked offline (no Kubernetes here): infra/k8s/ (the KubeRay RayCluster and the
Prefect server), infra/docker/Dockerfile, configs/cluster-example.yaml and the README's "Running on a
cluster". Structure and the fields that matter are asserted in plain Python; the RayCluster is also
validated against KubeRay's CRD schema when that file is at hand (see _crd_path)."""
from __future__ import annotations

import os
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "infra" / "k8s"
DOCKERFILE = REPO / "infra" / "docker" / "Dockerfile"
CLUSTER_CONFIG = REPO / "configs" / "cluster-example.yaml"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PINS = {m[1].lower(): m[2] for d in PYPROJECT["project"]["dependencies"]
        if (m := re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^,;\s]+)", d.strip()))}
MANIFESTS = {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d is not None] for p in sorted(K8S.glob("*.yaml"))}
ALL_DOCS = [d for docs in MANIFESTS.values() for d in docs]
OPERATOR = "1.7.0"      # the KubeRay operator (helm chart) the README installs and the schema checked here
# env names that hold a secret: their values must come from a Secret, never a literal
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.I)
# what a literal credential looks like: an AWS key id, a Hugging Face token, a 40-character AWS secret, a
# long hex token (an image digest, sha256:..., is not one)
SECRET_VALUE = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b|\bhf_[A-Za-z0-9]{20,}|\b[A-Za-z0-9/+]{40}\b"
                          r"|(?<!sha256:)\b[0-9a-f]{32,}\b")


def _one(kind: str, name: str | None = None) -> dict:
    found = [d for d in ALL_DOCS if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in infra/k8s, found {len(found)}"
    return found[0]


RAY = _one("RayCluster")
HEAD = RAY["spec"]["headGroupSpec"]
WORKERS = RAY["spec"]["workerGroupSpecs"]
# (group, pod spec) for every Ray pod: the head and each worker group
RAY_PODS = [("head", HEAD["template"]["spec"])] + [(g["groupName"], g["template"]["spec"]) for g in WORKERS]
SERVER = _one("Deployment", "prefect-server")


def _all_containers():
    """(where, container) for every container of every pod in the manifests."""
    for group, spec in RAY_PODS:
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield f"RayCluster/{group}/{c['name']}", c
    for d in ALL_DOCS:
        if d["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            for c in d["spec"]["template"]["spec"]["containers"]:
                yield f"{d['kind']}/{d['metadata']['name']}/{c['name']}", c


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _quantity(q) -> float:
    """A Kubernetes quantity as a number (CPUs, bytes)."""
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(q))
    assert m, f"not a quantity: {q!r}"
    units = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
             "Ti": 2**40}
    return float(m[1]) * units[m[2]]


def _ray_container(spec: dict) -> dict:
    return spec["containers"][0]        # KubeRay's rule: the Ray container comes first


def _driver(spec: dict) -> dict:
    """The head pod's container that runs the Prefect worker (and so the suite's driver)."""
    found = [c for c in spec["containers"] if c.get("command", [])[:3] == ["prefect", "worker", "start"]]
    assert len(found) == 1, "the head pod needs exactly one container running `prefect worker start`"
    return found[0]


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


# ------------------------------------------------------------------ every file

def test_every_manifest_is_a_namespace_free_kubernetes_object():
    assert {"raycluster.yaml", "prefect-server.yaml"} <= set(MANIFESTS)
    for d in ALL_DOCS:
        assert {"apiVersion", "kind", "metadata"} <= set(d), d
        assert d["metadata"].get("name"), d
        assert "namespace" not in d["metadata"], f"{d['kind']} names a namespace: the README applies with -n"
    assert RAY["apiVersion"] == "ray.io/v1"
    assert {d["kind"] for d in ALL_DOCS} >= {"RayCluster", "Deployment", "Service", "PersistentVolumeClaim"}
    assert not [d for d in ALL_DOCS if d["kind"] == "Secret"], "Secrets are created from the environment (README)"


# ------------------------------------------------------------------ the RayCluster

def test_head_has_no_task_resources():
    params = HEAD["rayStartParams"]
    assert params["num-cpus"] == "0"
    assert params.get("num-gpus", "0") == "0"
    for c in HEAD["template"]["spec"]["containers"]:
        for part in ("requests", "limits"):
            assert not any("gpu" in k for k in c.get("resources", {}).get(part, {})), f"head {c['name']} has a GPU"


def test_worker_groups_autoscale_on_gpus():
    assert RAY["spec"]["enableInTreeAutoscaling"] is True
    assert WORKERS, "no worker group"
    for g in WORKERS:
        name = g["groupName"]
        lo, hi = g["minReplicas"], g["maxReplicas"]
        assert 0 <= lo <= g.get("replicas", lo) <= hi and hi >= 1, f"{name}: replicas {lo}..{hi}"
        res = _ray_container(g["template"]["spec"])["resources"]
        gpus = res["limits"].get("nvidia.com/gpu")
        assert gpus is not None and int(gpus) >= 1, f"{name}: no nvidia.com/gpu limit"
        assert res.get("requests", {}).get("nvidia.com/gpu", gpus) == gpus, f"{name}: GPU request != limit"
        tolerations = g["template"]["spec"].get("tolerations", [])
        assert any(t.get("key") == "nvidia.com/gpu" and t.get("effect") == "NoSchedule"
                   and t.get("operator", "Equal") in ("Exists", "Equal") for t in tolerations), \
            f"{name}: no toleration for the nvidia.com/gpu:NoSchedule taint"


def test_every_ray_pod_container_has_a_memory_backed_dev_shm():
    for group, spec in RAY_PODS:
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        memory = _quantity(_ray_container(spec)["resources"]["limits"]["memory"])
        for c in spec["containers"]:
            mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
            assert len(mounts) == 1, f"{group}/{c['name']}: /dev/shm is not mounted"
            empty_dir = volumes[mounts[0]["name"]].get("emptyDir") or {}
            assert empty_dir.get("medium") == "Memory", f"{group}/{c['name']}: /dev/shm is not a Memory emptyDir"
            # Ray caps its object store (30% of memory) at 95% of /dev/shm; the volume counts against memory
            size = _quantity(empty_dir["sizeLimit"])
            assert 0.3 * memory <= 0.95 * size and size < memory, f"{group}: /dev/shm {empty_dir['sizeLimit']}"


def test_ray_token_auth_is_on_for_every_container():
    auth = RAY["spec"]["authOptions"]
    assert auth["mode"] == "token"
    secret = auth.get("secretName")
    assert secret and not auth.get("enableK8sTokenAuth"), "a named Secret, so the driver container can read it"
    assert tuple(map(int, RAY["spec"]["rayVersion"].split("."))) >= (2, 52, 0), "token auth needs Ray >= 2.52"
    for group, spec in RAY_PODS:
        for i, c in enumerate(spec["containers"]):
            env = _env(c)
            if i == 0 and "RAY_AUTH_MODE" not in env:
                continue        # KubeRay sets RAY_AUTH_MODE and RAY_AUTH_TOKEN on the Ray container itself
            # any other container (the Prefect worker) joins Ray only with the same Secret's token
            assert env["RAY_AUTH_MODE"].get("value") == "token", f"{group}/{c['name']}: RAY_AUTH_MODE"
            ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == (secret, "auth_token"), f"{group}/{c['name']}: RAY_AUTH_TOKEN"


def test_no_credential_is_written_inline():
    for where, c in _all_containers():
        for e in c.get("env", []):
            value = str(e.get("value", ""))
            assert not SECRET_VALUE.search(value), f"{where}: {e['name']} looks like a credential"
            if SECRET_NAME.search(e["name"]):
                assert "value" not in e and "secretKeyRef" in e.get("valueFrom", {}), \
                    f"{where}: {e['name']} must come from a Secret (valueFrom.secretKeyRef)"
    for path in [*K8S.glob("*.yaml"), DOCKERFILE, CLUSTER_CONFIG]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            assert not SECRET_VALUE.search(line), f"{path.relative_to(REPO)}:{n} looks like a credential"


def test_code_running_containers_get_s3_credentials_from_the_secret():
    """Workers run the units and the driver reads the ledger and the corpus listing: both need S3."""
    runners = [(g, _ray_container(s)) for g, s in RAY_PODS if g != "head"] + [("head", _driver(HEAD["template"]["spec"]))]
    for group, c in runners:
        env = _env(c)
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            ref = env[key]["valueFrom"]["secretKeyRef"]
            assert ref["key"] == key and ref["name"] == "scopeflow-s3" and not ref.get("optional"), f"{group}: {key}"


def test_ray_pods_report_to_the_in_cluster_prefect_server():
    service = _one("Service", "prefect-server")
    port = service["spec"]["ports"][0]
    url = f"http://{service['metadata']['name']}:{port['port']}/api"
    pod = SERVER["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items(), "the Service selects no pod"
    assert SERVER["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    assert port["targetPort"] in ports or port["targetPort"] in ports.values()
    for group, spec in RAY_PODS:
        for c in spec["containers"]:
            assert _env(c)["PREFECT_API_URL"]["value"] == url, f"{group}/{c['name']}: PREFECT_API_URL"
    server = pod["spec"]["containers"][0]
    assert server["command"][:3] == ["prefect", "server", "start"] and "0.0.0.0" in server["command"]
    assert SERVER["spec"]["replicas"] == 1 and SERVER["spec"]["strategy"]["type"] == "Recreate", "one SQLite writer"


def test_the_driver_runs_inside_the_cluster_never_over_ray_client():
    spec = HEAD["template"]["spec"]
    driver, ray_head = _driver(spec), _ray_container(spec)
    pools = {d["work_pool"]["name"] for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    cmd = driver["command"]
    assert cmd[cmd.index("--pool") + 1] in pools and cmd[cmd.index("--type") + 1] == "process"
    env = _env(driver)
    workdir = [a for i, a in _dockerfile() if i == "WORKDIR"][-1]
    assert env["SCOPEFLOW_PROJECT_DIR"]["value"] == workdir, "prefect.yaml's pull step must find the project"
    assert not env.get("RAY_ADDRESS", {}).get("value", "").startswith("ray://")
    # same pod, and the Ray container's /tmp/ray (session, ray_current_cluster, raylet sockets) shared
    tmp = {c["name"]: {m["name"] for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp/ray"}
           for c in (driver, ray_head)}
    assert tmp[driver["name"]] and tmp[driver["name"]] == tmp[ray_head["name"]], "the driver needs the head's /tmp/ray"
    assert driver["image"] == ray_head["image"], "a driver must have the cluster's Ray and Python"
    for _, c in _all_containers():
        assert "ray://" not in " ".join(c.get("command", []) + c.get("args", []))
        assert not any(str(e.get("value", "")).startswith("ray://") for e in c.get("env", []))


def test_what_kuberay_would_reject():
    """The operator's own validation (ray-operator/controllers/ray/utils/validation.go), for the fields used."""
    name = RAY["metadata"]["name"]
    assert len(name) <= 53 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name
    groups = [HEAD] + WORKERS
    assert len({g["groupName"] for g in WORKERS}) == len(WORKERS), "worker group names must differ"
    for g in groups:
        params = g.get("rayStartParams", {})
        assert all(isinstance(v, str) for v in params.values()), "rayStartParams values are strings"
        assert "labels" not in params
        if any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")):
            assert not g.get("resources"), "resources in both rayStartParams and the group's resources"
    options = RAY["spec"].get("autoscalerOptions", {})
    if options.get("version") == "v2":
        assert all(s.get("restartPolicy", "Never") == "Never" for _, s in RAY_PODS)


# ------------------------------------------------------------------ versions and the image

def test_images_and_versions_equal_pyproject_pins():
    ray, prefect = PINS["ray"], PINS["prefect"]
    assert RAY["spec"]["rayVersion"] == ray
    images = {c["image"] for _, c in _all_containers()}
    assert len(images) == 1, f"one project image everywhere, found {images}"
    image = images.pop()
    version, ray_tag, cuda_tag = image.rsplit(":", 1)[1].split("-")
    assert (version, ray_tag) == (PYPROJECT["project"]["version"], f"ray{ray}"), image
    from_image = _dockerfile()[0][1]
    assert from_image.startswith(f"rayproject/ray:{ray}-py311-cu"), from_image
    cuda = from_image.rsplit("-", 1)[1]
    assert cuda_tag == cuda, "the image tag names the CUDA build it holds"
    assert str(yaml.safe_load((REPO / "prefect.yaml").read_text())["prefect-version"]) == prefect
    labels = SERVER["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/version"] == SERVER["metadata"]["labels"]["app.kubernetes.io/version"] == prefect
    server_image = SERVER["spec"]["template"]["spec"]["containers"][0]["image"]
    if server_image.startswith("prefecthq/prefect:"):
        assert server_image.split(":")[1].startswith(f"{prefect}-python"), server_image


def test_dockerfile_pins_equal_pyproject():
    steps = _dockerfile()
    assert steps[0][0] == "FROM", "FROM must be the first instruction"
    text = " ".join(args for _, args in steps)
    pins = re.findall(r"(?<![\w.])([A-Za-z][A-Za-z0-9_.\-]*)==([0-9][^\s'\";,]*)", text)
    assert ("torch", PINS["torch"]) in pins
    for name, version in pins:
        assert PINS.get(name.lower()) == version, f"Dockerfile pins {name}=={version}, pyproject {PINS.get(name.lower())}"
    asserted = dict(re.findall(r"(\w+)\.__version__ == '([^']+)'", text))
    assert asserted == {"ray": PINS["ray"], "prefect": PINS["prefect"]}
    assert f"startswith('{PINS['torch']}+cu')" in text
    cuda = steps[0][1].rsplit("-", 1)[1]
    torch_step = next(args for i, args in steps if i == "RUN" and "torch==" in args)
    assert f"--index-url https://download.pytorch.org/whl/{cuda}" in torch_step, "torch from the base's CUDA index"
    env = " ".join(args for i, args in steps if i == "ENV")
    assert "RAY_USAGE_STATS_ENABLED=0" in env.split()
    user = [args for i, args in steps if i == "USER"][-1]
    assert re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", user), f"USER {user}: numeric and not root, for runAsNonRoot"
    copied = set()
    for i, args in steps:
        if i == "COPY":
            srcs = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
            for s in srcs:
                assert (REPO / s).exists(), f"COPY {s}: no such file"
            copied.update(srcs)
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages | {"pyproject.toml", "prefect.yaml", "configs"} <= copied


# ------------------------------------------------------------------ the suite config

def test_cluster_config_loads_and_fits_the_worker_pods():
    from flows.config import load_suite_config      # imports torch: only this test pays for it
    from tasks.registry import STAGE_NAMES

    raw = yaml.safe_load(CLUSTER_CONFIG.read_text())
    assert raw["extends"] == "gemma-2-2b.yaml"
    cfg = load_suite_config(CLUSTER_CONFIG)
    assert cfg.orchestration.ray_address == "auto"
    assert cfg.storage.root.startswith("s3://")
    assert all(cfg.orchestration.gpus_per_unit.get(s, 0) >= 1 for s in ("extract", "train", "evaluate"))
    pods = [_ray_container(g["template"]["spec"])["resources"]["limits"] for g in WORKERS]
    for stage in STAGE_NAMES:
        cpus, gpus = cfg.unit_resources(stage)
        assert any(cpus <= _quantity(p["cpu"]) and gpus <= int(p.get("nvidia.com/gpu", 0)) for p in pods), \
            f"{stage} units need {cpus} CPUs and {gpus} GPUs: no worker group fits one, Ray would wait forever"


# ------------------------------------------------------------------ the README

def test_readme_runs_every_manifest_before_layout():
    text = (REPO / "README.md").read_text()
    assert "## Running on a cluster" in text
    section = text.split("## Running on a cluster", 1)[1]
    assert section.split("\n## ", 1)[1].startswith("Layout"), "the section stands right before ## Layout"
    section = section.split("\n## ", 1)[0]
    for name in MANIFESTS:
        assert f"infra/k8s/{name}" in section, f"the README never applies infra/k8s/{name}"
    assert f"--version {OPERATOR}" in section and "configs/cluster-example.yaml" in section
    assert "infra/docker/Dockerfile" in section


# ------------------------------------------------------------------ KubeRay's CRD schema

def _crd_path() -> Path | None:
    """KubeRay's ray.io_rayclusters.yaml (ray-operator/config/crd/bases/ at tag v1.7.0): from
    SCOPEFLOW_KUBERAY_CRD, else the shared/ folder beside the checkout, else vendored under infra/k8s/schema/."""
    candidates = [os.environ.get("SCOPEFLOW_KUBERAY_CRD"), REPO.parent / "shared" / "kuberay" / "ray.io_rayclusters.yaml",
                  K8S / "schema" / "raycluster-crd.yaml"]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def _unknown_fields(doc, schema: dict, path: str = "") -> list[str]:
    """Fields the schema does not declare. The CRD's schema says nothing of extra fields, so jsonschema accepts
    them; the API server rejects them (kubectl's strict field validation) or drops them silently."""
    out = []
    if isinstance(doc, dict) and "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        for key, value in doc.items():
            if key in schema["properties"]:
                out += _unknown_fields(value, schema["properties"][key], f"{path}.{key}")
            elif not isinstance(schema.get("additionalProperties"), dict):
                out.append(f"{path}.{key}")
    elif isinstance(doc, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, value in doc.items():
            out += _unknown_fields(value, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(doc, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(doc):
            out += _unknown_fields(value, schema["items"], f"{path}[{i}]")
    return out


def test_raycluster_validates_against_the_kuberay_crd_schema():
    path = _crd_path()
    if path is None:
        pytest.skip(f"KubeRay's RayCluster CRD is not here: set SCOPEFLOW_KUBERAY_CRD to KubeRay v{OPERATOR}'s "
                    "ray-operator/config/crd/bases/ray.io_rayclusters.yaml (or put it in ../shared/kuberay/)")
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (a dependency of prefect and ray) is missing")
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if crd.get("kind") == "CustomResourceDefinition":
        assert crd["spec"]["names"]["kind"] == "RayCluster", path
        crd = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]
    schema = crd.get("openAPIV3Schema", crd)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(RAY), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:10])
    assert not _unknown_fields(RAY, schema), _unknown_fields(RAY, schema)
