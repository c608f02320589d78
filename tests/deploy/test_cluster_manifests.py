"""The files in cluster/: KubeRay manifests checked against the operator's CRD schemas, the
`ray up` config against Ray's launcher schema, and the facts that tie them to the repository
(image, Ray version, entry point, config, Secrets)."""

from __future__ import annotations

import copy
import functools
import gzip
import importlib.util
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from helpers import REPO, SHARED

from distsel.core.config import parse_config

ROOT = REPO
CLUSTER = ROOT / "cluster"
KUBERAY = SHARED / "kuberay"
MANIFESTS = {"rayjob.yaml": "rayjobs", "raycluster.yaml": "rayclusters"}

needs_crds = pytest.mark.skipif(
    not KUBERAY.is_dir(), reason=f"KubeRay CRDs not found: {KUBERAY} is absent"
)


# ---------------------------------------------------------------------------------------------
# Kubernetes structural schemas as JSON Schema


def _cel_rules(validator, rules, instance, schema) -> Iterator[jsonschema.ValidationError]:
    """CEL rules (x-kubernetes-validations) cannot be evaluated here: using such a field fails."""
    listed = "; ".join(rule["rule"] for rule in rules)
    yield jsonschema.ValidationError(f"field has CEL rules this test cannot evaluate: {listed}")


K8sValidator = jsonschema.validators.extend(
    jsonschema.Draft7Validator, {"x-kubernetes-validations": _cel_rules}
)
FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("int32")
def _int32(value: Any) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@FORMATS.checks("int64")
def _int64(value: Any) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


def to_jsonschema(node: Any) -> Any:
    """An openAPIV3Schema node as Draft 7 JSON Schema, with the API server's semantics:

    - unknown fields are errors (kubectl's default server-side field validation is Strict),
      except under `x-kubernetes-preserve-unknown-fields: true`;
    - `x-kubernetes-int-or-string: true` allows an integer or a string;
    - `nullable: true` allows null;
    - other `x-kubernetes-*` keys, `default` and `description` are dropped; CEL rules are kept
      for `_cel_rules`.
    """
    if isinstance(node, list):
        return [to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "anyOf", "allOf", "oneOf"):
            out[key] = to_jsonschema(value)
        elif key == "x-kubernetes-validations":
            out[key] = value
        elif key.startswith("x-") or key in ("default", "description", "nullable", "example"):
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd(plural: str) -> tuple[dict[str, Any], jsonschema.protocols.Validator]:
    """The CRD `ray.io_<plural>.yaml.gz` and a validator for its v1 openAPIV3Schema."""
    with gzip.open(KUBERAY / f"ray.io_{plural}.yaml.gz", "rt", encoding="utf-8") as handle:
        definition = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert definition["kind"] == "CustomResourceDefinition"
    (v1,) = [v for v in definition["spec"]["versions"] if v["name"] == "v1"]
    schema = to_jsonschema(v1["schema"]["openAPIV3Schema"])
    K8sValidator.check_schema(schema)
    return definition, K8sValidator(schema, format_checker=FORMATS)


def schema_errors(obj: dict[str, Any], plural: str) -> list[str]:
    """Everything the API server's schema check would reject in `obj`, as 'path: message'."""
    definition, validator = crd(plural)
    problems = [
        "/".join(str(part) for part in error.absolute_path) + ": " + error.message
        for error in validator.iter_errors(obj)
    ]
    group, kind = definition["spec"]["group"], definition["spec"]["names"]["kind"]
    if obj.get("apiVersion") != f"{group}/v1":
        problems.append(f"apiVersion: {obj.get('apiVersion')!r} is not '{group}/v1'")
    if obj.get("kind") != kind:
        problems.append(f"kind: {obj.get('kind')!r} is not {kind!r}")
    name = (obj.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name):
        problems.append(f"metadata.name: {name!r} is not a DNS-1123 label")
    return problems


# ---------------------------------------------------------------------------------------------
# The files


def load(name: str) -> Any:
    return yaml.safe_load((CLUSTER / name).read_text(encoding="utf-8"))


def cluster_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["rayClusterSpec"] if manifest["kind"] == "RayJob" else manifest["spec"]


def groups(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    spec = cluster_spec(manifest)
    return [spec["headGroupSpec"], *spec["workerGroupSpecs"]]


def containers(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    pods = [group["template"]["spec"] for group in groups(manifest)]
    return [c for pod in pods for c in pod.get("containers", []) + pod.get("initContainers", [])]


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text(encoding="utf-8")


@pytest.fixture(params=sorted(MANIFESTS))
def manifest_name(request: pytest.FixtureRequest) -> str:
    return request.param


# ---------------------------------------------------------------------------------------------
# Schema validation


@needs_crds
def test_manifest_validates_against_the_crd(manifest_name: str) -> None:
    manifest = load(manifest_name)
    assert schema_errors(manifest, MANIFESTS[manifest_name]) == []


def _set(path: list[Any], value: Any) -> Any:
    def mutate(obj: dict[str, Any]) -> None:
        *parents, leaf = path
        for part in parents:
            obj = obj[part]
        obj[leaf] = value

    return mutate


def _rename(path: list[Any], new: str) -> Any:
    def mutate(obj: dict[str, Any]) -> None:
        *parents, leaf = path
        for part in parents:
            obj = obj[part]
        obj[new] = obj.pop(leaf)

    return mutate


def _delete(path: list[Any]) -> Any:
    def mutate(obj: dict[str, Any]) -> None:
        *parents, leaf = path
        for part in parents:
            obj = obj[part]
        del obj[leaf]

    return mutate


WORKER = ["workerGroupSpecs", 0]
HEAD_CONTAINER = ["headGroupSpec", "template", "spec", "containers", 0]
# Breakages of the cluster spec (RayCluster.spec, RayJob.spec.rayClusterSpec), and where in it the
# error must be reported.
BROKEN = {
    "minReplicas is a string": (_set([*WORKER, "minReplicas"], "two"), WORKER),
    "typo'd field name": (_rename([*WORKER, "maxReplicas"], "maxReplica"), WORKER),
    "rayStartParams value not a string": (
        _set(["headGroupSpec", "rayStartParams", "num-cpus"], 0),
        ["headGroupSpec", "rayStartParams", "num-cpus"],
    ),
    "quantity that is not a quantity": (
        _set([*HEAD_CONTAINER, "resources", "limits", "cpu"], "lots"),
        [*HEAD_CONTAINER, "resources", "limits", "cpu"],
    ),
    "required groupName missing": (_delete([*WORKER, "groupName"]), WORKER),
    "authOptions.mode outside its enum": (
        _set(["authOptions", "mode"], "tokens"),
        ["authOptions", "mode"],
    ),
    "int32 out of range": (_set([*WORKER, "maxReplicas"], 2**31), [*WORKER, "maxReplicas"]),
    "env var without a name": (_delete([*HEAD_CONTAINER, "env", 0, "name"]), HEAD_CONTAINER),
}


@needs_crds
@pytest.mark.parametrize("breakage", sorted(BROKEN))
def test_a_broken_copy_fails_validation(manifest_name: str, breakage: str) -> None:
    """The validator is not vacuous: each breakage, in both manifests, is reported where it is."""
    mutate, where = BROKEN[breakage]
    manifest = load(manifest_name)
    mutate(cluster_spec(manifest))
    spec_path = ["spec", "rayClusterSpec"] if manifest["kind"] == "RayJob" else ["spec"]
    prefix = "/".join(str(part) for part in [*spec_path, *where])
    problems = schema_errors(manifest, MANIFESTS[manifest_name])
    assert problems, f"{breakage}: accepted by the schema"
    assert any(problem.startswith(prefix) for problem in problems), (prefix, problems)


@needs_crds
@pytest.mark.parametrize(
    "field, value",
    [("apiVersion", "ray.io/v1alpha2"), ("kind", "RayClusters"), ("metadata", {"name": "Distsel"})],
)
def test_a_wrong_header_fails_validation(manifest_name: str, field: str, value: Any) -> None:
    manifest = load(manifest_name)
    manifest[field] = value
    problems = schema_errors(manifest, MANIFESTS[manifest_name])
    assert any(problem.startswith(field) for problem in problems), problems


@needs_crds
def test_rayjob_level_fields_are_checked() -> None:
    manifest = load("rayjob.yaml")
    manifest["spec"]["shutdownAfterJobFinishes"] = "yes"
    manifest["spec"]["ttlSecondsAfterFinished"] = "600"
    problems = schema_errors(manifest, "rayjobs")
    assert any(p.startswith("spec/shutdownAfterJobFinishes:") for p in problems), problems
    assert any(p.startswith("spec/ttlSecondsAfterFinished:") for p in problems), problems


# ---------------------------------------------------------------------------------------------
# What the manifests say


def test_groups_autoscale_and_only_the_gpu_group_requests_gpus(manifest_name: str) -> None:
    manifest = load(manifest_name)
    spec = cluster_spec(manifest)
    assert spec["enableInTreeAutoscaling"] is True
    workers = {group["groupName"]: group for group in spec["workerGroupSpecs"]}
    assert set(workers) == {"cpu", "gpu"}
    for group in workers.values():
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
        assert group["minReplicas"] < group["maxReplicas"]
    for name, group in [("head", spec["headGroupSpec"]), *workers.items()]:
        for container in group["template"]["spec"]["containers"]:
            resources = container["resources"]
            assert resources["requests"]["cpu"] and resources["limits"]["memory"], name
            gpus = resources["limits"].get("nvidia.com/gpu")
            if name == "gpu":
                assert str(gpus) == "1"
            else:
                assert gpus is None and "nvidia.com/gpu" not in resources["requests"], name


def test_dashboard_is_only_exposed_with_token_auth(manifest_name: str) -> None:
    spec = cluster_spec(load(manifest_name))
    params = spec["headGroupSpec"]["rayStartParams"]
    assert params["dashboard-host"] == "0.0.0.0"  # KubeRay's operator must reach it
    assert spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    assert not spec["headGroupSpec"].get("enableIngress", False)


def test_raycluster_has_the_rayjob_groups() -> None:
    """The long-lived cluster equals the RayJob's, less the RayJob's config ConfigMap."""
    job_spec = copy.deepcopy(cluster_spec(load("rayjob.yaml")))
    head = job_spec["headGroupSpec"]["template"]["spec"]
    head["volumes"] = [v for v in head["volumes"] if "configMap" not in v]
    config_volumes = {
        v["name"]
        for v in cluster_spec(load("rayjob.yaml"))["headGroupSpec"]["template"]["spec"]["volumes"]
        if "configMap" in v
    }
    for container in head["containers"]:
        container["volumeMounts"] = [
            m for m in container["volumeMounts"] if m["name"] not in config_volumes
        ]
    assert cluster_spec(load("raycluster.yaml")) == job_spec


def _secret_looking(name: str) -> bool:
    return bool(re.search(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", name.upper()))


def secret_references(manifest: dict[str, Any]) -> set[tuple[str, str]]:
    spec = cluster_spec(manifest)
    refs = {(spec["authOptions"]["secretName"], "auth_token")}
    for container in containers(manifest):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs.add((ref["name"], ref["key"]))
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                refs.add((source["secretRef"]["name"], "*"))
    return refs


def test_no_literal_secret_values(manifest_name: str) -> None:
    manifest = load(manifest_name)
    s3_keys = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for container in containers(manifest):
        env = {item["name"]: item for item in container.get("env", [])}
        assert s3_keys <= set(env), container["name"]
        for name, item in env.items():
            if _secret_looking(name) or name.startswith("AWS_"):
                assert "value" not in item, f"{name} has a literal value"
                assert "secretKeyRef" in item["valueFrom"], name
    spec = cluster_spec(manifest)
    autoscaler = spec.get("autoscalerOptions", {})
    assert not any("value" in e and _secret_looking(e["name"]) for e in autoscaler.get("env", []))
    text = (CLUSTER / manifest_name).read_text(encoding="utf-8")
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text)


def test_referenced_secrets_are_in_the_template_with_placeholders() -> None:
    secrets = {
        doc["metadata"]["name"]: doc
        for doc in yaml.safe_load_all((CLUSTER / "secret-example.yaml").read_text("utf-8"))
    }
    for secret in secrets.values():
        assert (secret["apiVersion"], secret["kind"], secret["type"]) == ("v1", "Secret", "Opaque")
        assert set(secret) <= {"apiVersion", "kind", "metadata", "type", "stringData"}
    refs = set().union(*(secret_references(load(name)) for name in MANIFESTS))
    assert {name for name, _ in refs} == set(secrets)
    for name, key in refs:
        assert key == "*" or key in secrets[name]["stringData"], (name, key)
    placeholders = {
        ("distsel-s3", "AWS_ACCESS_KEY_ID"),
        ("distsel-s3", "AWS_SECRET_ACCESS_KEY"),
        ("distsel-ray-token", "auth_token"),
    }
    assert placeholders <= refs
    for name, key in placeholders:
        assert secrets[name]["stringData"][key].startswith("REPLACE-"), (name, key)


def images() -> dict[str, set[str]]:
    found = {}
    for name in MANIFESTS:
        manifest = load(name)
        found[name] = {c["image"] for c in containers(manifest)}
        autoscaler_image = cluster_spec(manifest).get("autoscalerOptions", {}).get("image")
        if autoscaler_image:
            found[name].add(autoscaler_image)
    launcher = load("ray-up.yaml")
    docker = launcher["docker"]
    found["ray-up.yaml"] = {
        docker[k] for k in ("image", "head_image", "worker_image") if k in docker
    }
    for node_type in launcher["available_node_types"].values():
        if "worker_image" in node_type.get("docker", {}):
            found["ray-up.yaml"].add(node_type["docker"]["worker_image"])
    return found


def test_the_image_is_the_same_everywhere() -> None:
    found = images()
    assert all(found.values()), found
    assert len(set().union(*found.values())) == 1, found
    (image,) = set().union(*found.values())
    assert re.fullmatch(r"[a-z0-9.-]+(:\d+)?(/[a-z0-9._-]+)+:[\w.-]+", image), image


def test_ray_version_is_the_dockerfiles() -> None:
    match = re.search(r"^FROM\s+rayproject/ray:(\d+\.\d+\.\d+)\S*", dockerfile(), re.MULTILINE)
    assert match, "Dockerfile: no FROM rayproject/ray:<version> line"
    for name in MANIFESTS:
        assert cluster_spec(load(name))["rayVersion"] == match.group(1), name


def test_rayjob_entrypoint_runs_the_pipeline_on_the_example_config() -> None:
    manifest = load("rayjob.yaml")
    argv = shlex.split(manifest["spec"]["entrypoint"])
    assert argv[0] == "python" and argv.count("--config") == 1
    workdir = re.search(r"^WORKDIR\s+(\S+)", dockerfile(), re.MULTILINE).group(1).rstrip("/")
    copied = set(re.findall(r"^COPY\s.*\s\./(\w+)\s*$", dockerfile(), re.MULTILINE))

    def in_repo(path: str) -> Path:
        relative = path.removeprefix(workdir + "/") if path.startswith("/") else path
        assert not relative.startswith("/"), f"{path} is outside the image's {workdir}"
        return ROOT / relative

    script = in_repo(argv[1])
    assert script == ROOT / "jobs" / "pipeline.py" and script.is_file()
    assert "jobs" in copied, "the Dockerfile does not copy jobs/ into the image"

    config_path = argv[argv.index("--config") + 1]
    config_file = in_repo(config_path)
    assert config_file.is_file(), config_file
    config = parse_config(yaml.safe_load(config_file.read_text(encoding="utf-8")))
    assert config.select.method == "random" and config.select.budget.docs
    assert config.input.group_field == "domain"
    assert config.input.paths == ["s3://my-bucket/corpus/"]
    assert config.output.path == "s3://my-bucket/distsel-out/"

    # cluster/ is not in the image: the head (where the job driver runs) must mount it.
    top = config_file.relative_to(ROOT).parts[0]
    if top not in copied:
        head = cluster_spec(manifest)["headGroupSpec"]["template"]["spec"]
        volumes = {v["name"]: v for v in head["volumes"]}
        mounts = {
            m["mountPath"].rstrip("/"): m["name"] for m in head["containers"][0]["volumeMounts"]
        }
        directory = config_path.rsplit("/", 1)[0]
        assert directory in mounts, f"nothing provides {config_path} on the head"
        assert "configMap" in volumes[mounts[directory]]
        header = (CLUSTER / "rayjob.yaml").read_text(encoding="utf-8")
        configmap = volumes[mounts[directory]]["configMap"]["name"]
        expected = f"--from-file={config_file.name}=cluster/{config_file.name}"
        assert f"kubectl create configmap {configmap} {expected}" in header


# ---------------------------------------------------------------------------------------------
# `ray up`


def ray_schema() -> dict[str, Any]:
    spec = importlib.util.find_spec("ray")
    path = Path(spec.origin).parent / "autoscaler" / "ray-schema.json" if spec else None
    if path is None or not path.is_file():
        pytest.skip("Ray's package does not ship autoscaler/ray-schema.json")
    return json.loads(path.read_text(encoding="utf-8"))


def test_ray_up_config_validates_against_rays_schema() -> None:
    schema = ray_schema()
    launcher = load("ray-up.yaml")
    jsonschema.Draft7Validator.check_schema(schema)
    assert [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(launcher)] == []

    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(launcher)))  # what `ray up` itself checks

    broken = copy.deepcopy(launcher)
    broken["max_worker"] = broken.pop("max_workers")
    broken["available_node_types"]["cpu"]["min_workers"] = "one"
    messages = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(broken)]
    assert any("max_worker" in m for m in messages) and any("'one'" in m for m in messages)


def test_ray_up_binds_the_dashboard_to_localhost_with_token_auth() -> None:
    launcher = load("ray-up.yaml")
    head = " ".join(launcher["head_start_ray_commands"])
    assert "ray start --head" in head and "--dashboard-host=127.0.0.1" in head
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in launcher[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token ray start" in c for c in starts), key
    assert launcher["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    assert launcher["head_node_type"] in launcher["available_node_types"]
    text = (CLUSTER / "ray-up.yaml").read_text(encoding="utf-8")
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text)
    assert not re.search(r"(?i)aws_secret_access_key|aws_access_key_id", text)
