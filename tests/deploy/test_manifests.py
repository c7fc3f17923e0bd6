"""The KubeRay manifests, checked without a cluster:

- against KubeRay's CRD schemas (``../shared/kuberay``: the ``openAPIV3Schema`` of RayJob and RayCluster,
  with ``jsonschema``), strictly: a field the schema does not know fails, as ``kubectl apply
  --validate=strict`` would (the API server would silently drop it);
- every pod template against Kubernetes' own PodTemplateSpec schema, strict (``kubernetes-validate``
  ships the Kubernetes OpenAPI schemas), for an old and the newest Kubernetes it knows; the PVC too;
- against what they run: the entrypoint's recipe exists in this repository (the image's /opt/stabledrl)
  and validates, its GPU and custom-resource needs fit the worker groups, its paths are on the shared
  volume, the token and the wandb key come from Secrets, /dev/shm is memory;
- the RayCluster has the RayJob's cluster layout.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

from system.config import Config, load_config

REPO = Path(__file__).resolve().parents[2]
KUBERAY = REPO / "deploy" / "kuberay"
CRDS = REPO.parent / "shared" / "kuberay"
IMAGE_ROOT = "/opt/stabledrl/"  # where the images put this repository (deploy/Dockerfile.*)
SHARED = "/mnt/shared"
K8S_VERSIONS = ("1.29", kubernetes_validate.utils.major_minor(kubernetes_validate.latest_version()))


def manifest(name: str) -> dict[str, Any]:
    return yaml.safe_load((KUBERAY / name).read_text())


def crd_schema(kind: str) -> dict[str, Any]:
    path = CRDS / f"ray.io_{kind.lower()}s.yaml"
    if not path.is_file():
        pytest.skip(f"KubeRay CRD schemas not found at {CRDS} (../shared is absent in a user's clone)")
    return _read_crd(path)


@functools.cache
def _read_crd(path: Path) -> dict[str, Any]:
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1-2 MB of YAML
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths of the fields ``schema`` does not declare (strict field validation)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found = []
    if isinstance(value, dict):
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        for key, sub in value.items():
            if props is not None and key in props:
                found += unknown_fields(sub, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += unknown_fields(sub, extra, f"{path}.{key}")
            elif props is not None and extra is None:
                found.append(f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return found


def pod_templates(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The pod templates of a RayCluster spec, by group (head, and each worker group's name)."""
    out = {"head": spec["headGroupSpec"]["template"]}
    out.update({g["groupName"]: g["template"] for g in spec["workerGroupSpecs"]})
    return out


def cluster_spec(name: str) -> dict[str, Any]:
    doc = manifest(name)
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


MANIFESTS = {"rayjob.yaml": "RayJob", "raycluster.yaml": "RayCluster"}


# ------------------------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_matches_the_kuberay_crd_strictly(name: str) -> None:
    doc = manifest(name)
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", MANIFESTS[name])
    schema = crd_schema(MANIFESTS[name])
    jsonschema.Draft7Validator(schema).validate(doc)
    assert unknown_fields(doc, schema) == []


def test_the_strict_check_catches_a_misspelt_field() -> None:
    doc = manifest("rayjob.yaml")
    doc["spec"]["shutdownAfterJobFinish"] = True
    doc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    assert unknown_fields(doc, crd_schema("RayJob")) == [
        ".spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].volumeMount", ".spec.shutdownAfterJobFinish"]
    wrong_type = manifest("rayjob.yaml")
    wrong_type["spec"]["ttlSecondsAfterFinished"] = "600"
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'integer'"):
        jsonschema.Draft7Validator(crd_schema("RayJob")).validate(wrong_type)


def pod_template_validator(version: str) -> jsonschema.Validator:
    """Kubernetes' own strict PodTemplateSpec schema of ``version``, from kubernetes-validate's copy."""
    full = next(v for v in kubernetes_validate.utils.all_versions() if v.startswith(version + "."))
    folder = f"kubernetes-json-schema/v{full}-local-strict"
    schema = schema_contents(f"{folder}/podtemplatespec-v1.json", full)
    definitions = schema_contents(f"{folder}/_definitions.json", full)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", MANIFESTS)
def test_pod_templates_match_kubernetes_schema(name: str, version: str) -> None:
    validator = pod_template_validator(version)
    for group, template in pod_templates(cluster_spec(name)).items():
        errors = [f"{group}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in validator.iter_errors(template)]
        assert errors == []
    broken = json.loads(json.dumps(pod_templates(cluster_spec(name))["head"]))
    broken["spec"]["containers"][0]["volumeMount"] = []  # strict: an unknown field fails here too
    assert any(validator.iter_errors(broken))


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_pvc_matches_kubernetes_schema(version: str) -> None:
    pvc = manifest("pvc.yaml")
    kubernetes_validate.validate(pvc, version, strict=True)
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]  # pods on several nodes mount it


# ------------------------------------------------------------------------------------- what runs


def entrypoint_recipe(command: str) -> tuple[Path, Config, dict[str, str]]:
    words = shlex.split(command)
    assert words[:2] == ["stabledrl", "train"], words
    options = dict(zip(words[2::2], words[3::2]))
    path = options["--config"]
    assert path.startswith(IMAGE_ROOT), f"{path}: the image has the recipes under {IMAGE_ROOT}"
    local = REPO / path.removeprefix(IMAGE_ROOT)
    assert local.is_file(), f"the RayJob runs {path}, but {local} does not exist"
    return local, load_config(local), options


def ray_start_resources(group: dict[str, Any]) -> dict[str, float]:
    """The custom resources of ``rayStartParams.resources`` (KubeRay passes the quoted JSON to the shell)."""
    text = group["rayStartParams"].get("resources")
    return {} if text is None else json.loads(text.strip('"').replace('\\"', '"'))


def test_rayjob_runs_a_recipe_that_validates_and_fits_the_cluster() -> None:
    doc = manifest("rayjob.yaml")
    spec = doc["spec"]
    assert spec["submissionMode"] == "HTTPMode" and spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    _, cfg, options = entrypoint_recipe(spec["entrypoint"])
    assert options["--run-dir"].startswith(SHARED + "/")
    c = cfg.cluster
    assert c.mode == "ray" and c.learner_backend == "nccl" and cfg.model.device == "cuda"
    assert cfg.logging.wandb_mode == "online"
    for path in (cfg.model.path, cfg.output_dir, cfg.rollout.weight_dir, cfg.data.train_path, cfg.data.test_path):
        assert path is None or path.startswith(SHARED + "/"), f"{path} is not on the shared volume"
    assert cfg.rollout.weight_transport == "filesystem"
    groups = {g["groupName"]: g for g in spec["rayClusterSpec"]["workerGroupSpecs"]}
    needs = {"learner": (c.num_learner_ranks, c.learner_gpus, c.learner_resources),
             "rollout": (cfg.rollout.num_actors, c.rollout_gpus, c.rollout_resources)}
    for role, (n, gpus, custom) in needs.items():
        # the role's custom resources name the worker group that serves them, with room for all n workers
        (group,) = [g for g in groups.values() if set(custom) <= set(ray_start_resources(g))]
        have = ray_start_resources(group)
        assert all(have[key] * group["replicas"] >= n * per for key, per in custom.items()), role
        node_gpus = float(group["rayStartParams"]["num-gpus"])
        assert node_gpus * group["replicas"] >= n * gpus, role
        (container,) = group["template"]["spec"]["containers"]
        assert float(container["resources"]["limits"]["nvidia.com/gpu"]) == node_gpus, role
    head = spec["rayClusterSpec"]["headGroupSpec"]
    head_cpus = float(head["rayStartParams"]["num-cpus"])
    assert c.reward_resources == {} and head_cpus >= c.num_reward_workers * c.reward_cpus  # reward workers: head


def test_ray_version_and_image_match_the_lock() -> None:
    lock = (REPO / "deploy" / "requirements-gpu.txt").read_text()
    ray_version = re.search(r"^ray==(\S+)$", lock, re.M)[1]
    for name in MANIFESTS:
        spec = cluster_spec(name)
        assert spec["rayVersion"] == ray_version
        images = {c["image"] for t in pod_templates(spec).values() for c in t["spec"]["containers"]}
        assert len(images) == 1 and re.search(r"/stabledrl:\d+\.\d+\.\d+-cu130$", images.pop())


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize("name", MANIFESTS)
def test_secrets_volumes_and_probes(name: str) -> None:
    spec = cluster_spec(name)
    token = spec["authOptions"]
    assert token["mode"] == "token"
    claim = manifest("pvc.yaml")["metadata"]["name"]
    for group, template in pod_templates(spec).items():
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        for container in template["spec"]["containers"]:
            env = _env(container)
            assert env["RAY_AUTH_MODE"] == "token"
            assert env["RAY_AUTH_TOKEN"] == {"secretKeyRef": {"name": token["secretName"], "key": "auth_token"}}
            mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
            assert mounts[SHARED]["persistentVolumeClaim"]["claimName"] == claim, group
            assert mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory", group
            for probe in ("readinessProbe", "livenessProbe"):
                command = container[probe]["exec"]["command"]
                assert (REPO / command[1].removeprefix(IMAGE_ROOT)).is_file() and command[2:], (group, probe)
        if group == "head":
            env = _env(template["spec"]["containers"][0])
            assert env["WANDB_API_KEY"] == {"secretKeyRef": {"name": "stabledrl-wandb", "key": "api_key"}}
            assert env["WANDB_DIR"].startswith(SHARED + "/")


def test_raycluster_has_the_rayjobs_layout() -> None:
    assert manifest("raycluster.yaml")["spec"] == manifest("rayjob.yaml")["spec"]["rayClusterSpec"]


# ------------------------------------------------------------------------------------------- probe


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        ok = self.path == "/ok" and self.headers.get("Authorization") == "Bearer t0k"
        body = b"success" if ok else b"not ready"
        self.send_response(200 if ok else 503)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_probe_script_passes_only_when_every_endpoint_says_success() -> None:
    server = HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    probe = [sys.executable, str(REPO / "deploy" / "healthz.py")]
    env = {"RAY_AUTH_TOKEN": "t0k", "PATH": "/usr/bin:/bin"}
    try:
        assert subprocess.run([*probe, f"{base}/ok"], env=env, timeout=30).returncode == 0
        assert subprocess.run([*probe, f"{base}/ok", f"{base}/down"], env=env, timeout=30).returncode == 1
        assert subprocess.run([*probe, f"{base}/ok"], env={"PATH": "/usr/bin:/bin"}, timeout=30).returncode == 1
        assert subprocess.run(probe, env=env, timeout=30, capture_output=True).returncode == 2
    finally:
        server.shutdown()
