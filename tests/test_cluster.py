"""cluster/: launcher YAMLs checked by Ray itself, the rest checked here, and the on-prem YAML run for real.

- Every launcher YAML goes through the installed Ray's `prepare_config` + `validate_config`.
- What those skip: machine types vs the GPUs and CPUs a node type declares, a GPU-free head, setup that
  installs this project with CUDA torch, Ray versions that agree, no credentials in any file.
- KubeRay manifests have no offline validator: they are checked against the fields and rules the KubeRay
  operator enforces (ray-operator/apis/ray/v1, controllers/ray/utils/validation.go).
- Every job command in the manifests and the docs (`python jobs/<job>.py ...`) is parsed by that job's own
  `parse_args`, and its per-worker resource request must fit a worker type of each cluster.
- Ray's token authentication is on everywhere: the launcher YAMLs give every node your token and start
  Ray with RAY_AUTH_MODE=token, the KubeRay clusters set `authOptions`, and the README tells clients how
  to get the token.
- cluster/onprem.yaml goes through `ray up` -> `ray job submit` -> `ray down` against an sshd on 127.0.0.1,
  token authentication on.
- README.md's local-head commands run exactly as written, token authentication on.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd
import pytest
import ray
import yaml
from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
LAUNCHER_YAMLS = ("aws-gpu.yaml", "gcp-gpu.yaml", "onprem.yaml")
CLOUD_YAMLS = ("aws-gpu.yaml", "gcp-gpu.yaml")
DOCS = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
# Where cluster/Dockerfile puts the checkout; the RayJob entrypoints run jobs from there.
IMAGE_PROJECT_DIR = "/home/ray/titok-ray"


@dataclass(frozen=True)
class Machine:
    """What a cloud machine type has (AWS / GCP documentation); gpu_name is NVML's device name."""

    cpus: int
    memory_gib: int
    gpus: int = 0
    gpu_name: str | None = None


MACHINES = {
    "m5.2xlarge": Machine(8, 32),
    "p4d.24xlarge": Machine(96, 1152, 8, "NVIDIA A100-SXM4-40GB"),
    "g5.4xlarge": Machine(16, 64, 1, "NVIDIA A10G"),
    "n2-standard-8": Machine(8, 32),
    "a2-highgpu-8g": Machine(96, 680, 8, "NVIDIA A100-SXM4-40GB"),
    "g2-standard-16": Machine(16, 64, 1, "NVIDIA L4"),
}


def machine(name: str) -> Machine:
    assert name in MACHINES, f"machine type {name} is not in MACHINES: add it from the cloud's documentation"
    return MACHINES[name]


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def prepared(name: str) -> dict[str, Any]:
    """The YAML as `ray up` sees it: Ray's defaults merged in, then Ray's own schema and consistency checks."""
    config = prepare_config(load(CLUSTER / name))
    validate_config(config)
    return config


def machine_type(node_config: dict[str, Any]) -> str:
    return node_config.get("InstanceType") or node_config["machineType"]


def worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}


def ray_start_flags(command: str) -> dict[str, str]:
    """`--flag=value` / `--flag value` of the `ray start` in a shell command line (last one wins, as in click)."""
    tokens = shlex.split(command.split("ray start", 1)[1])
    flags: dict[str, str] = {}
    for i, tok in enumerate(tokens):
        if tok.startswith("--"):
            name, _, value = tok[2:].partition("=")
            if not value and i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                value = tokens[i + 1]
            flags[name] = value
    return flags


def ray_version_of_image(image: str) -> str:
    """rayproject/ray:2.60.0-py311-gpu -> 2.60.0"""
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)(-.*)?", image)
    assert match, f"{image}: expected a rayproject/ray:<version>-... image"
    return match.group(1)


# ---------------------------------------------------------------------------------------------------
# Launcher YAMLs: Ray's own validation, then what it does not look at.


@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_ray_accepts_the_launcher_yaml(name: str) -> None:
    config = prepared(name)
    assert config["head_node_type"] in config["available_node_types"]
    if config["provider"]["type"] != "local":
        assert worker_types(config), f"{name}: no worker node types"
        for node_type, spec in worker_types(config).items():
            assert 0 <= spec["min_workers"] <= spec["max_workers"], f"{name}: {node_type} min/max workers"
            assert spec["min_workers"] == 0, f"{name}: {node_type} keeps GPU nodes up while idle"


def test_ray_validation_catches_a_broken_yaml() -> None:
    """The validation used above is not vacuous: a typo'd key and an unknown head type are refused."""
    config = load(CLUSTER / "aws-gpu.yaml")
    with pytest.raises(jsonschema.ValidationError, match="max_wokers"):
        validate_config(prepare_config({**config, "max_wokers": 3}))
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config({**config, "head_node_type": "nope"}))


@pytest.mark.parametrize("name", CLOUD_YAMLS)
def test_node_type_resources_match_the_machine_type(name: str) -> None:
    """What the autoscaler plans with (`resources`) is what the machine has: CPUs, GPU count and GPU kind."""
    config = prepared(name)
    for node_type, spec in worker_types(config).items():
        m = machine(machine_type(spec["node_config"]))
        res = spec["resources"]
        assert res.get("CPU") == m.cpus, f"{name}: {node_type} declares {res.get('CPU')} CPUs, the machine has {m.cpus}"
        assert res.get("GPU", 0) == m.gpus, f"{name}: {node_type} declares {res.get('GPU')} GPUs, machine {m.gpus}"
        accel = {k for k in res if k.startswith("accelerator_type:")}
        if m.gpus:
            # the label Ray gives the node at runtime, from the GPU's NVML name
            expected = "accelerator_type:" + NvidiaGPUAcceleratorManager._gpu_name_to_accelerator_type(m.gpu_name)
            assert accel == {expected}, f"{name}: {node_type} declares {accel}, Ray will report {expected}"
        else:
            assert not accel
        gce_accels = spec["node_config"].get("guestAccelerators", [])
        if gce_accels:
            assert sum(a["acceleratorCount"] for a in gce_accels) == res.get("GPU", 0)


@pytest.mark.parametrize("name", CLOUD_YAMLS)
def test_head_has_no_gpu_and_takes_no_tasks(name: str) -> None:
    config = prepared(name)
    head = config["available_node_types"][config["head_node_type"]]
    assert machine(machine_type(head["node_config"])).gpus == 0, f"{name}: the head is a GPU machine"
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0


def test_onprem_head_takes_no_gpu_work() -> None:
    config = prepared("onprem.yaml")
    (start,) = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert ray_start_flags(start).get("num-gpus") == "0"


@pytest.mark.parametrize("name", CLOUD_YAMLS)
def test_gpu_workers_autoscale_with_a_training_and_a_cheaper_inference_type(name: str) -> None:
    config = prepared(name)
    gpus = {t: s["resources"].get("GPU", 0) for t, s in worker_types(config).items()}
    assert 8 in gpus.values(), f"{name}: no 8-GPU training node type: {gpus}"
    assert any(0 < g < 8 for g in gpus.values()), f"{name}: no smaller GPU type for precompute / tokenize: {gpus}"
    assert sum(s["max_workers"] for s in worker_types(config).values()) >= config["max_workers"] > 0


@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_setup_syncs_this_checkout_and_installs_the_project(name: str) -> None:
    config = prepared(name)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^name = "titok-ray"$', pyproject, re.M)
    mounts = {remote: (REPO / local).resolve() for remote, local in config["file_mounts"].items()}
    (remote_dir,) = [r for r, local in mounts.items() if local == REPO]
    assert ".gitignore" in config["rsync_filter"], f"{name}: the sync would copy .venv and runs/"
    for node in ("head", "worker"):
        setup = config[f"{node}_setup_commands"]
        installs = [i for i, c in enumerate(setup) if re.search(rf"pip install .*-e {re.escape(remote_dir)}(\s|$)", c)]
        assert installs, f"{name}: no {node} setup command runs `pip install -e {remote_dir}`"
        torch = [i for i, c in enumerate(setup) if re.search(r"pip install .*torch .*--index-url \S+/whl/cu\d+", c)]
        assert torch and torch[0] < installs[0], f"{name}: CUDA torch must be installed before the project"


@pytest.mark.parametrize("name,sdk", [("aws-gpu.yaml", "boto3"), ("gcp-gpu.yaml", "google-api-python-client")])
def test_head_setup_installs_the_cloud_sdk_the_autoscaler_needs(name: str, sdk: str) -> None:
    """Setting head_setup_commands replaces Ray's default one, which installed this SDK."""
    assert any(sdk in c for c in prepared(name)["head_setup_commands"])


@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_dashboard_stays_on_the_heads_loopback(name: str) -> None:
    """The job API runs code: it is reached through `ray dashboard <yaml>` (an SSH tunnel), not the network."""
    (start,) = [c for c in prepared(name)["head_start_ray_commands"] if "ray start" in c]
    assert ray_start_flags(start).get("dashboard-host") == "127.0.0.1"


TOKEN_FILE = "~/.ray/auth_token"  # where `ray get-auth-token --generate` writes the token, and Ray reads it


def runs_with_token_auth(command: str) -> bool:
    """The shell command runs its `ray start` with RAY_AUTH_MODE=token in the environment."""
    before = command.split("ray start", 1)[0]
    return bool(re.search(r"(^|[;&\s])(export\s+)?RAY_AUTH_MODE=token([;&\s]|$)", before))


@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_launcher_yaml_runs_ray_with_your_token(name: str) -> None:
    """Your ~/.ray/auth_token becomes every node's, and every node's Ray requires it: the README's
    `export RAY_AUTH_MODE=token` on your machine is then all a client needs."""
    config = prepared(name)
    assert config["file_mounts"].get(TOKEN_FILE) == TOKEN_FILE, f"{name}: the token is not synced to the nodes"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        (start,) = [c for c in config[key] if "ray start" in c]
        assert runs_with_token_auth(start), f"{name}: {key} starts Ray without RAY_AUTH_MODE=token"
    assert not runs_with_token_auth("ray start --head") and runs_with_token_auth("export RAY_AUTH_MODE=token; ray start")


@pytest.mark.parametrize("name", CLOUD_YAMLS)
def test_shm_is_sized_by_ray_for_the_object_store(name: str) -> None:
    """A fixed --shm-size turns off Ray's per-node sizing of /dev/shm to its object store."""
    docker = prepared(name)["docker"]
    options = docker.get("run_options", []) + docker.get("worker_run_options", [])
    assert not any("--shm-size" in o for o in options) and not docker.get("disable_shm_size_detection")


def test_storage_access_comes_from_the_node_identity() -> None:
    aws, gcp = prepared("aws-gpu.yaml"), prepared("gcp-gpu.yaml")
    for node_type, spec in worker_types(aws).items():
        assert spec["node_config"].get("IamInstanceProfile"), f"aws {node_type}: no instance profile for S3"
    project = gcp["provider"]["project_id"]
    for node_type, spec in worker_types(gcp).items():
        (account,) = spec["node_config"]["serviceAccounts"]
        assert account["email"].endswith(f"@{project}.iam.gserviceaccount.com"), f"gcp {node_type}: {account['email']}"
    assert "aws_credentials" not in aws["provider"]


# ---------------------------------------------------------------------------------------------------
# One image, one Ray version.


def dockerfile() -> str:
    return (CLUSTER / "Dockerfile").read_text()


def test_every_image_runs_the_installed_ray() -> None:
    """Client, launcher images, Dockerfile and KubeRay's rayVersion all name the Ray installed here."""
    for name in CLOUD_YAMLS:
        assert ray_version_of_image(prepared(name)["docker"]["image"]) == ray.__version__, name
    (base,) = re.findall(r"^FROM\s+(\S+)", dockerfile(), re.M)
    assert ray_version_of_image(base) == ray.__version__
    for path, spec in ray_cluster_specs():
        assert spec["rayVersion"] == ray.__version__, path.name


def test_dockerfile_installs_cuda_torch_then_this_project() -> None:
    text = dockerfile()
    torch = text.index("torch torchvision --index-url https://download.pytorch.org/whl/cu")
    project = re.search(r"pip install .*-e \.", text)
    assert project and torch < project.start()
    assert re.search(rf"^WORKDIR {IMAGE_PROJECT_DIR}$", text, re.M)
    copied = set(re.findall(r"^COPY .*? (\S+) \./(\S+)$", text, re.M))
    for package in ("titok_core", "pipelines", "jobs"):
        assert (package, package) in copied, f"cluster/Dockerfile does not copy {package}/"
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text()
    assert "**/.venv" in ignore and "**/.git" in ignore


# ---------------------------------------------------------------------------------------------------
# KubeRay manifests.


def kuberay_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in sorted(KUBERAY.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def ray_cluster_specs() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path, doc in kuberay_docs():
        if doc.get("kind") == "RayCluster":
            out.append((path, doc["spec"]))
        elif doc.get("kind") == "RayJob" and "rayClusterSpec" in doc["spec"]:
            out.append((path, doc["spec"]["rayClusterSpec"]))
    return out


def test_kuberay_has_an_autoscaling_raycluster_with_both_gpu_groups() -> None:
    (spec,) = [s for p, s in ray_cluster_specs() if p.name == "raycluster.yaml"]
    assert spec.get("enableInTreeAutoscaling") is True
    gpus = sorted(int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
                  for g in spec["workerGroupSpecs"])
    assert gpus == [1, 8] and all(g["minReplicas"] == 0 for g in spec["workerGroupSpecs"])


DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


@pytest.mark.parametrize("path,doc", kuberay_docs(), ids=lambda x: x.name if isinstance(x, Path) else "")
def test_kuberay_manifest_has_what_the_operator_requires(path: Path, doc: dict[str, Any]) -> None:
    if doc["kind"] == "ServiceAccount":
        assert doc["apiVersion"] == "v1" and doc["metadata"]["name"]
        return
    assert doc["apiVersion"] == "ray.io/v1", f"{path.name}: KubeRay serves ray.io/v1"
    assert doc["kind"] in ("RayCluster", "RayJob")
    name = doc["metadata"]["name"]
    # the operator appends suffixes to build service / cluster names
    assert DNS_1035.fullmatch(name) and len(name) <= (53 if doc["kind"] == "RayCluster" else 47), name
    if doc["kind"] == "RayJob":
        spec = doc["spec"]
        assert spec["entrypoint"].strip(), f"{path.name}: a RayJob needs an entrypoint"
        assert ("rayClusterSpec" in spec) != bool(spec.get("clusterSelector")), "rayClusterSpec xor clusterSelector"
        if spec.get("ttlSecondsAfterFinished", 0) > 0:
            assert spec.get("shutdownAfterJobFinishes"), "ttlSecondsAfterFinished needs shutdownAfterJobFinishes"
        assert spec.get("backoffLimit", 0) >= 0
        if "runtimeEnvYAML" in spec:
            assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
        cluster = spec.get("rayClusterSpec")
    else:
        cluster = doc["spec"]
    if cluster is not None:
        check_ray_cluster_spec(path.name, cluster)


def check_ray_cluster_spec(where: str, spec: dict[str, Any]) -> None:
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
    names = [n for n, _ in groups[1:]]
    assert len(set(names)) == len(names), f"{where}: worker group names repeat: {names}"
    accounts = {d["metadata"]["name"] for _, d in kuberay_docs() if d["kind"] == "ServiceAccount"}
    for name, group in groups:
        params = group["rayStartParams"]
        # the CRD types rayStartParams as map[string]string: a YAML number is refused by the API server
        assert all(isinstance(v, str) for v in params.values()), f"{where} {name}: rayStartParams must be strings"
        assert "labels" not in params
        pod = group["template"]["spec"]
        assert pod["containers"], f"{where} {name}: no containers"
        ray_container = pod["containers"][0]  # KubeRay runs `ray start` in the first container
        assert ray_container["image"] and ray_container["name"]
        assert pod.get("serviceAccountName") in accounts, f"{where} {name}: pods need the workload-identity account"
        limits = ray_container["resources"]["limits"]
        gpus = int(limits.get("nvidia.com/gpu", 0))
        if "num-gpus" in params:
            assert int(params["num-gpus"]) == gpus, f"{where} {name}: num-gpus {params['num-gpus']} vs limit {gpus}"
        shm = [v for v in pod.get("volumes", []) if v.get("emptyDir", {}).get("medium") == "Memory"]
        mounted = {m["name"] for m in ray_container.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"}
        assert shm and shm[0]["name"] in mounted, f"{where} {name}: no memory volume at /dev/shm (64 MiB by default)"
        store = int(params["object-store-memory"])
        assert store <= quantity(shm[0]["emptyDir"]["sizeLimit"]), f"{where} {name}: object store larger than /dev/shm"
        assert store < quantity(limits["memory"]), f"{where} {name}: object store larger than the pod's memory"
        if name == "head":
            assert gpus == 0 and params.get("num-cpus") == "0", f"{where}: the head takes GPU or CPU work"
            continue
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], f"{where} {name}"
        selector = pod.get("nodeSelector", {}).get("node.kubernetes.io/instance-type")
        if selector:
            m = machine(selector)
            assert gpus == m.gpus, f"{where} {name}: {gpus} GPUs requested on a {selector} with {m.gpus}"
            assert quantity(limits["cpu"]) <= m.cpus and quantity(limits["memory"]) <= m.memory_gib * 2**30
        assert ray_container["resources"]["requests"] == limits, f"{where} {name}: requests != limits"


def quantity(value: str | int) -> float:
    """A Kubernetes quantity ("56Gi", "14", "500m") as a number."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "m": 1e-3}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match, value
    return float(match.group(1)) * units.get(match.group(2), 1)


def test_all_kuberay_pods_run_the_same_image() -> None:
    images = {c["image"] for _, spec in ray_cluster_specs()
              for g in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
              for c in g["template"]["spec"]["containers"]}
    assert len(images) == 1, images


def test_kuberay_clusters_turn_token_auth_on_and_the_readme_reads_their_token() -> None:
    """Every RayCluster (and RayJob cluster) has KubeRay's token authentication (operator >= 1.5.1, Ray >= 2.52);
    the README's port-forward client reads the token from the Secret the operator names after the RayCluster."""
    for path, spec in ray_cluster_specs():
        assert spec.get("authOptions", {}).get("mode") == "token", f"{path.name}: no authOptions.mode: token"
        assert tuple(int(x) for x in spec["rayVersion"].split(".")[:2]) >= (2, 52), path.name
    (name,) = [d["metadata"]["name"] for p, d in kuberay_docs() if d["kind"] == "RayCluster"]
    readme = (REPO / "README.md").read_text()
    secrets = set(re.findall(r"RAY_AUTH_TOKEN=\$\(kubectl get secret (\S+) -o jsonpath='\{\.data\.auth_token\}'", readme))
    assert secrets == {name}, f"README reads the token from {secrets}, the RayCluster is {name!r}"
    # no worker or head pod sets the token itself: the operator's Secret is the only copy
    for path, spec in ray_cluster_specs():
        for group in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]:
            env = {e["name"] for c in group["template"]["spec"]["containers"] for e in c.get("env", [])}
            assert not env & {"RAY_AUTH_TOKEN", "RAY_AUTH_MODE"}, path.name


# ---------------------------------------------------------------------------------------------------
# Job commands: every one in the manifests and the docs parses with the job's own parser and fits the cluster.


@dataclass(frozen=True)
class JobCommand:
    source: str  # file:line, or the RayJob manifest
    script: str  # file name in jobs/
    argv: list[str]
    rayjob: str | None = None  # the RayJob manifest that runs it on its own cluster
    submitted: bool = False  # documented as `ray job submit ... -- python jobs/...`

    def __str__(self) -> str:
        return f"{self.source}:{self.script}"


SHELL_OPERATORS = {"&&", "||", "|", ";", ">", ">>", "2>", "&"}


def entrypoint_argv(command: str) -> list[str]:
    """[script path, args...] of the job in a shell command: `python jobs/x.py ...`, `python -m jobs.x ...`."""
    tokens = shlex.split(command, comments=True)
    for i, tok in enumerate(tokens):
        if Path(tok).name.startswith("python") and i + 1 < len(tokens):
            rest = tokens[i + 1:]
            if rest[0] == "-m" and len(rest) > 1 and rest[1].startswith("jobs."):
                script, args = "jobs/" + rest[1].split(".", 1)[1] + ".py", rest[2:]
            elif re.search(r"(^|/)jobs/[^/]+\.py$", rest[0]):
                script, args = rest[0], rest[1:]
            else:
                continue
            ops = [j for j, a in enumerate(args) if a in SHELL_OPERATORS]
            return [script, *(args[: ops[0]] if ops else args)]
    return []


def doc_commands(path: Path) -> list[JobCommand]:
    """Job commands in the shell code blocks of a Markdown file (continuation lines joined)."""
    out: list[JobCommand] = []
    in_block, pending, start = False, "", 0
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_block = not in_block and line.strip() in ("```bash", "```sh", "```shell", "```console")
            continue
        if not in_block:
            continue
        pending, start = (pending + " " + line, start) if pending else (line, n)
        if pending.rstrip().endswith("\\"):
            pending = pending.rstrip()[:-1]
            continue
        argv = entrypoint_argv(pending.lstrip("$ "))
        if argv:
            out.append(JobCommand(f"{path.relative_to(REPO)}:{start}", Path(argv[0]).name, argv[1:],
                                  submitted="ray job submit" in pending))
        pending = ""
    return out


def manifest_commands() -> list[JobCommand]:
    out = []
    for path, doc in kuberay_docs():
        if doc["kind"] == "RayJob":
            script, *args = entrypoint_argv(doc["spec"]["entrypoint"])
            assert script.startswith(IMAGE_PROJECT_DIR + "/jobs/"), f"{path.name}: {script} is not in the image's jobs/"
            out.append(JobCommand(path.name, Path(script).name, args, rayjob=path.name))
    return out


ALL_COMMANDS = manifest_commands() + [c for doc in DOCS if doc.exists() for c in doc_commands(doc)]


def parse_job(cmd: JobCommand) -> Any:
    """The job's own argument parsing on the command's exact argv (argparse errors become a test failure)."""
    if not (REPO / "jobs" / cmd.script).exists():
        pytest.fail(f"{cmd.source}: jobs/{cmd.script} does not exist")
    module = importlib.import_module(f"jobs.{cmd.script.removesuffix('.py')}")
    assert hasattr(module, "parse_args"), f"jobs/{cmd.script} has no parse_args(argv) to check commands with"
    try:
        return module.parse_args(cmd.argv)
    except SystemExit as e:
        pytest.fail(f"{cmd.source}: jobs/{cmd.script} refused {shlex.join(cmd.argv)} (exit {e.code}; see stderr)")


def worker_request(args: Any) -> tuple[int, dict[str, float]] | None:
    """(number of workers, resources of one) a parsed job asks Ray for; None for jobs that run outside Ray."""
    if hasattr(args, "workers") and hasattr(args, "num_gpus"):  # precompute / tokenize: model actors
        return args.workers, {"GPU": args.num_gpus, "CPU": args.cpus_per_worker}
    if hasattr(args, "num_workers"):  # training: Ray Train workers
        gpu = bool(getattr(args, "use_gpu", False))
        # the job's own default when the flag is left out (jobs/train_tokenizer.py main)
        cpus = getattr(args, "cpus_per_worker", None) or (4.0 if gpu else 0.5)
        return args.num_workers, {"GPU": float(gpu), "CPU": float(cpus)}
    return None


def test_every_cluster_job_has_checked_commands() -> None:
    """Each job that runs on a cluster has a RayJob manifest and a documented `ray job submit` command."""
    cluster_jobs = {"precompute_proxy.py", "tokenize_dataset.py", "train_tokenizer.py"}
    assert {c.script for c in ALL_COMMANDS if c.rayjob} == cluster_jobs
    assert {c.script for c in ALL_COMMANDS if c.submitted} >= cluster_jobs, "a job has no documented ray job submit"


@pytest.mark.parametrize("cmd", ALL_COMMANDS, ids=str)
def test_job_command_parses_with_the_jobs_own_flags(cmd: JobCommand) -> None:
    args = parse_job(cmd)
    if isinstance(args, argparse.Namespace) and hasattr(args, "views"):
        from pipelines.preprocess import view_specs
        view_specs(args.views)  # a bad view set would only fail on the cluster, after start-up
    preset = getattr(args, "preset", None)
    if preset is not None:
        from titok_core import PRESETS
        assert preset in PRESETS


@pytest.mark.parametrize("cmd", [c for c in ALL_COMMANDS if c.rayjob], ids=str)
def test_rayjob_cluster_fits_its_job(cmd: JobCommand) -> None:
    """The RayJob's own cluster holds every worker the entrypoint asks for."""
    request = worker_request(parse_job(cmd))
    assert request, f"{cmd}: the job asks Ray for no workers"
    n, bundle = request
    (spec,) = [s for p, s in ray_cluster_specs() if p.name == cmd.rayjob]
    slots = 0
    for group in spec["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        gpus, cpus = float(limits.get("nvidia.com/gpu", 0)), quantity(limits["cpu"])
        per_pod = min(gpus // bundle["GPU"] if bundle["GPU"] else n, cpus // bundle["CPU"] if bundle["CPU"] else n)
        slots += int(per_pod) * group["maxReplicas"]
    assert slots >= n, f"{cmd}: {n} workers of {bundle}, room for {slots}"


@pytest.mark.parametrize("name", CLOUD_YAMLS)
@pytest.mark.parametrize("cmd", [c for c in ALL_COMMANDS if not c.rayjob], ids=str)
def test_launcher_cluster_has_a_node_type_for_the_job(name: str, cmd: JobCommand) -> None:
    """Every worker bundle a documented job requests fits one autoscaling node type, and all of them fit the cluster."""
    request = worker_request(parse_job(cmd))
    if request is None:
        return  # runs outside Ray (make_shards)
    n, bundle = request
    fits = {t: s for t, s in worker_types(prepared(name)).items()
            if all(s["resources"].get(k, 0) >= v for k, v in bundle.items())}
    assert fits, f"{name}: no node type fits one worker of {cmd} ({bundle})"
    slots = sum(int(min(s["resources"].get(k, 0) // v for k, v in bundle.items() if v)) * s["max_workers"]
                for s in fits.values())
    assert slots >= n, f"{name}: {cmd} asks for {n} workers of {bundle}; at most {slots} fit"


# ---------------------------------------------------------------------------------------------------
# No credentials anywhere under cluster/ or in the docs.

CREDENTIAL_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key": re.compile(r"(?i)aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+]{20,}"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GCP service-account key": re.compile(r"\"private_key(_id)?\"\s*:"),
    "password / token / secret": re.compile(
        r"(?i)(password|passwd|token|secret|api[_-]?key)\b\s*[:=]\s*['\"]?[A-Za-z0-9/+_.-]{12,}"),
    "Kubernetes Secret": re.compile(r"(?m)^kind:\s*Secret\b"),
    "credentials in a launcher YAML": re.compile(r"(?m)^\s*aws_credentials\s*:"),
}


def find_credentials(text: str) -> list[str]:
    return [what for what, pattern in CREDENTIAL_PATTERNS.items() if pattern.search(text)]


def test_credential_scan_is_not_vacuous() -> None:
    planted = {
        "AWS access key id": "key: AKIAIOSFODNN7EXAMPLE",
        "AWS secret key": "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "private key": "-----BEGIN OPENSSH PRIVATE KEY-----",
        "GCP service-account key": '{"type": "service_account", "private_key_id": "abc"}',
        "password / token / secret": "RAY_AUTH_TOKEN: 3f1c9a2b7d8e4f60",
        "Kubernetes Secret": "kind: Secret",
        "credentials in a launcher YAML": "provider:\n  aws_credentials:\n",
    }
    for what, text in planted.items():
        assert what in find_credentials(text), what


def test_no_credentials_in_cluster_files_or_docs() -> None:
    files = [p for p in CLUSTER.rglob("*") if p.is_file()] + [d for d in DOCS if d.exists()]
    found = {str(p.relative_to(REPO)): hits for p in files if (hits := find_credentials(p.read_text()))}
    assert not found, f"credentials in files: {found}"


# ---------------------------------------------------------------------------------------------------
# cluster/onprem.yaml for real: ray up -> ray job submit -> ray down, against an sshd on 127.0.0.1.

TOOLS = ("/usr/sbin/sshd", "ssh", "ssh-keygen", "rsync", "nc", "unshare")
APT_LINE = "apt-get install -y openssh-server rsync netcat-openbsd"
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and text in cmdline:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


@dataclass(frozen=True)
class Node:
    """A machine the launcher reaches over SSH: here an sshd on 127.0.0.1, alone in its PID namespace."""

    port: int
    key: Path
    home: Path  # the node's $HOME (sshd SetEnv): the synced checkout and Ray's bootstrap files land here
    venv: Path  # the node's Python environment (first on PATH through ~/.bashrc)


def start_node(root: Path) -> tuple[Node, subprocess.Popen]:
    """sshd on a free loopback port as PID 1 of a new PID namespace: `ray stop` there sees only this node's Ray.

    The node's Python is a fresh venv that sees this test run's packages through a .pth file but not
    this checkout's editable install, so the YAML's `pip install -e ~/titok-ray` really installs the
    synced copy, offline (PIP_NO_INDEX) and without touching the test run's environment.
    """
    ssh, home, venv = root / "ssh", root / "home", root / "node-venv"
    ssh.mkdir()
    home.mkdir()
    for key in ("key", "hostkey"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / key)], check=True)
    shutil.copy(ssh / "key.pub", ssh / "authorized_keys")
    port = free_port()
    (ssh / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {ssh / 'hostkey'}
PidFile {ssh / 'sshd.pid'}
AuthorizedKeysFile {ssh / 'authorized_keys'}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
SetEnv HOME={home}
""")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "_test_run_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (venv / "bin" / "ray").write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom ray.scripts.scripts import main\n"
                                      "sys.exit(main())\n")
    (venv / "bin" / "ray").chmod(0o755)
    (home / ".bashrc").write_text(
        f"export PATH={venv / 'bin'}:$PATH\n"
        # no telemetry, loopback only (token authentication as the YAML sets it); pip offline and with the
        # build backend installed here
        "export RAY_USAGE_STATS_ENABLED=0 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0\n"
        "export PIP_NO_INDEX=1 PIP_NO_BUILD_ISOLATION=0 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc",
                             "/usr/sbin/sshd", "-D", "-e", "-f", str(ssh / "sshd_config")],
                            stdout=open(root / "sshd.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 20
    while not port_open(port):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail("sshd did not start: " + (root / "sshd.log").read_text()[-2000:])
        time.sleep(0.1)
    return Node(port, ssh / "key", home, venv), proc


def onprem_config_for(node: Node, cluster_name: str, ports: dict[str, int], temp_dir: str) -> dict[str, Any]:
    """cluster/onprem.yaml with only what this machine forces changed: the addresses, the SSH login, and
    ports / temp dir of its own so it cannot collide with another Ray on the machine."""
    config = load(CLUSTER / "onprem.yaml")
    config["cluster_name"] = cluster_name
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config.update(min_workers=0, max_workers=0)
    # Ray's YAML has no SSH port: a proxy command reaches the test port
    config["auth"] = {"ssh_user": "root", "ssh_private_key": str(node.key), "ssh_proxy_command": f"nc %h {node.port}"}
    extra = " ".join(f"--{flag}={port}" for flag, port in ports.items()) + f" --temp-dir={temp_dir} --num-cpus=2"
    config["head_start_ray_commands"] = [c + " " + extra if "ray start" in c else c
                                         for c in config["head_start_ray_commands"]]
    return config


@pytest.mark.slow
def test_onprem_yaml_ray_up_then_a_job_then_ray_down(tmp_path: Path, sample_shards, tiny_teacher) -> None:
    """`ray up` as README.md says (your token made first), a job with and without RAY_AUTH_MODE=token, `ray down`."""
    if os.geteuid() != 0:  # `make test` installs the tools when it runs as root (CI does)
        pytest.skip("needs root: sshd with root login and a PID namespace for the node's Ray")
    missing = [t for t in TOOLS if not shutil.which(t)]
    assert not missing, f"needs {', '.join(missing)}: {APT_LINE} (make test installs them as root)"
    if subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True).returncode != 0:
        # without its own PID namespace the node's `ray stop` would kill every Ray on the machine
        pytest.fail("needs PID namespaces (unshare --pid --mount-proc), e.g. a container without CAP_SYS_ADMIN")
    shards, n_images = sample_shards
    node, sshd = start_node(tmp_path)
    # `ray up` hashes every file under a file mount's source: run it from a clean copy of the checkout
    # (what the YAML's rsync filter sends anyway), not from one holding a multi-GB .venv.
    src = tmp_path / "src"
    subprocess.run(["rsync", "-a", "--filter", "dir-merge,- .gitignore", "--exclude", ".git", f"{REPO}/", f"{src}/"],
                   check=True)
    ports = {flag: free_port() for flag in (
        "port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port", "ray-client-server-port", "object-manager-port", "node-manager-port")}
    name, temp_dir = f"titok-test-{uuid.uuid4().hex[:8]}", f"/tmp/rt-{uuid.uuid4().hex[:6]}"  # short: socket paths
    config_path = tmp_path / "onprem-test.yaml"
    config_path.write_text(yaml.safe_dump(onprem_config_for(node, name, ports, temp_dir)))
    # Your machine: a home of its own, whose ~/.ray/auth_token the YAML copies to the node.
    client_home = tmp_path / "client-home"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, "HOME": str(client_home),
           "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "AUTOSCALER_NODE_START_WAIT_S": "60"}  # an unreachable node fails in a minute, not Ray's 15

    def ray_cli(*args: str, timeout: int, **extra_env: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(VENV_BIN / "ray"), *args], cwd=src, env={**env, **extra_env}, capture_output=True,
                              text=True, timeout=timeout)

    token = ray_cli("get-auth-token", "--generate", timeout=60)  # README "1. Before you start"
    assert token.returncode == 0 and (client_home / ".ray" / "auth_token").is_file(), token.stderr

    up = down = None
    try:
        t0 = time.time()
        up = ray_cli("up", "-y", "--no-config-cache", str(config_path), timeout=300)
        assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:]
        t_up = time.time() - t0
        # the setup installed the synced checkout into the node's Python, and the sync skipped .venv
        # (the node's environment: sshd passes no PYTHONPATH of the test run)
        where = subprocess.run([str(node.venv / "bin" / "python"), "-c", "import pipelines; print(pipelines.__file__)"],
                               cwd=tmp_path, capture_output=True, text=True, check=True,
                               env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}).stdout.strip()
        assert where == str(node.home / "titok-ray" / "pipelines" / "__init__.py")
        assert (node.home / "titok-ray" / "jobs" / "precompute_proxy.py").exists()
        assert not (node.home / "titok-ray" / ".venv").exists()

        # the node got your token, and its Ray requires it
        assert (node.home / ".ray" / "auth_token").read_text() == (client_home / ".ray" / "auth_token").read_text()
        submit = ["job", "submit", "--address", f"http://127.0.0.1:{ports['dashboard-port']}", "--working-dir", ".",
                  "--", "python", "jobs/precompute_proxy.py", "--input", shards, "--teacher", tiny_teacher]
        refused = ray_cli(*submit, "--output", str(tmp_path / "refused"), timeout=120)
        assert refused.returncode != 0 and "Missing authentication token" in refused.stderr, refused.stderr[-2000:]

        # a real job through the head's job API, as README.md "Running on a cluster" submits it (section 3's export)
        out = tmp_path / "proxy"
        t0 = time.time()
        job = ray_cli(*submit, "--output", str(out), timeout=300, RAY_AUTH_MODE="token")
        assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-4000:]
        t_job = time.time() - t0
        assert "succeeded" in job.stdout + job.stderr
        assert len(pd.read_parquet(out)) == n_images

        t0 = time.time()
        down = ray_cli("down", "-y", str(config_path), timeout=180)
        assert down.returncode == 0, down.stdout[-4000:] + down.stderr[-4000:]
        t_down = time.time() - t0
        # `ray down` exits 0 even when its `ray stop` never ran: check that the head is really gone
        deadline = time.time() + 15
        while (port_open(ports["port"]) or port_open(ports["dashboard-port"])) and time.time() < deadline:
            time.sleep(0.5)
        assert not port_open(ports["port"]) and not port_open(ports["dashboard-port"]), "the head still listens"
        assert not processes_mentioning(temp_dir), processes_mentioning(temp_dir)
        print(f"ray up {t_up:.1f} s, ray job submit {t_job:.1f} s, ray down {t_down:.1f} s")
    finally:
        if up is not None and (down is None or down.returncode != 0):
            try:
                ray_cli("down", "-y", str(config_path), timeout=120)
            except subprocess.TimeoutExpired:
                pass
        # SIGKILL of unshare kills sshd, the namespace's PID 1, and with it every process the test started there
        sshd.send_signal(signal.SIGKILL)
        sshd.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)
        for suffix in ("lock", "state"):  # the local provider's bookkeeping, in Ray's default temp dir
            Path(f"/tmp/ray/cluster-{name}.{suffix}").unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------
# README.md's local-head commands, as written, on a machine where token authentication is on.

LOCAL_HEAD_MARK = "<!-- test: local-head"


def marked_commands(path: Path, mark: str) -> list[str]:
    """The commands of the bash block right after the line starting with `mark`, each exactly as written
    (a command continued with backslashes keeps its lines)."""
    lines = path.read_text().splitlines()
    (start,) = [i for i, line in enumerate(lines) if line.startswith(mark)]
    assert lines[start + 1].strip() == "```bash", f"{path.name}: no bash block right after {mark}"
    commands, pending = [], []
    for line in lines[start + 2:]:
        if line.strip() == "```":
            break
        pending.append(line)
        if not line.rstrip().endswith("\\"):
            commands.append("\n".join(pending))
            pending = []
    return commands


@pytest.mark.slow
def test_readme_local_head_commands_run_as_written_with_token_auth(tmp_path: Path, imagenet_sample_dir: Path,
                                                                    tiny_teacher: str) -> None:
    """README.md "Running on a cluster", section 0: its commands run one after the other in one shell,
    unchanged, on a fresh machine: a new home (the token goes to ~/.ray), pictures in ~/titok/images, and
    no network, with the teacher already in the Hugging Face cache under its Hub name (a tiny random one
    stands in for the download). Between `ray start --head` and the job, a shell without
    `export RAY_AUTH_MODE=token` submits the same job: it is refused with the message the README quotes.

    The README uses Ray's default ports and `ray stop` stops every Ray it sees, so the machine is a
    network, PID and mount namespace of its own (with a private /tmp/ray): nothing outside is touched,
    and everything it started ends with it.
    """
    from hf_cache import fill

    from pipelines.storage import HubName
    from titok_core import HUB_MODELS

    if os.geteuid() != 0:  # CI runs as root
        pytest.skip("needs root: network, PID and mount namespaces for a cluster on Ray's default ports")
    missing = [t for t in ("unshare", "ip", "mount") if not shutil.which(t)]
    assert not missing, f"needs {', '.join(missing)} (util-linux, iproute2)"
    commands = marked_commands(REPO / "README.md", LOCAL_HEAD_MARK)
    (start,) = [i for i, c in enumerate(commands) if c.startswith("ray start --head")]
    (submit,) = [i for i, c in enumerate(commands) if c.startswith("ray job submit")]
    assert start < submit, "the README submits before it starts the head"

    home = tmp_path / "home"
    pictures = sorted(imagenet_sample_dir.glob("*.JPEG"))[:6]
    for i, picture in enumerate(pictures):  # an ImageFolder: two classes
        (home / "titok" / "images" / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(picture, home / "titok" / "images" / f"class{i % 2}" / picture.name)
    teacher = HubName.parse(HUB_MODELS["maskgit-vqgan"])  # the precompute job's default --teacher
    fill(home / ".cache" / "huggingface" / "hub", teacher.repo_id, {teacher.filename: Path(tiny_teacher)})
    logs = tmp_path / "logs"
    logs.mkdir()
    ray_tmp = Path(f"/tmp/rt-{uuid.uuid4().hex[:6]}")  # short: Ray's socket paths live below it
    ray_tmp.mkdir()

    refused = f"if (unset RAY_AUTH_MODE; {commands[submit]}) > {logs}/refused.log 2>&1; then echo 0; else echo $?; fi"
    script = [
        "set -euo pipefail",
        "ip link set lo up",  # the namespace's loopback: Ray binds 127.0.0.1
        f"mkdir -p /tmp/ray && mount --bind {ray_tmp} /tmp/ray",  # Ray's default temp dir, private to this machine
        f"cd {REPO}",
        *commands[:start + 1],
        f"{refused} > {logs}/refused.rc",
        *commands[start + 1:],
    ]
    (tmp_path / "commands.sh").write_text("\n".join(script) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "HF_")) and k != "TRANSFORMERS_OFFLINE"}
    env.update(HOME=str(home), PATH=f"{VENV_BIN}:{os.environ['PATH']}", PYTHONPATH=str(REPO),  # this checkout
               RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1")
    try:
        t0 = time.time()
        run = subprocess.run(["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc",
                              "bash", str(tmp_path / "commands.sh")],
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        elapsed = time.time() - t0
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-6000:]
        sessions = [p.name for p in ray_tmp.glob("session_2*")]
        assert sessions, "no Ray session was started"
        assert not [p for s in sessions for p in processes_mentioning(s)], "a process of the cluster outlived it"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)

    assert (home / ".ray" / "auth_token").is_file()
    # the shell without the export was refused, with the line the README quotes next to the commands
    assert int((logs / "refused.rc").read_text()) != 0
    refused_log = (logs / "refused.log").read_text()
    quoted = re.findall(r"Authentication required: [^\n]*Missing authentication token", refused_log)
    assert quoted, refused_log[-2000:]
    assert quoted[0] in (REPO / "README.md").read_text(), f"README.md does not quote {quoted[0]!r}"
    # the job ran: one row per picture, with the teacher the Hugging Face cache held under its Hub name
    assert len(pd.read_parquet(home / "titok" / "proxy")) == len(pictures)
    summary = json.loads((home / "titok" / "proxy" / "_summary.json").read_text())
    # recorded under the name the user gave (so another machine fetches it again), with the weights of the
    # tiny teacher the cache held
    recorded = summary["model"]["teacher"]
    assert recorded["source"] == HUB_MODELS["maskgit-vqgan"]
    from pipelines.runtime import load_model_uri, model_identity
    expected = model_identity(tiny_teacher, load_model_uri(tiny_teacher, option="--teacher", what="teacher").model)
    assert recorded["weights_sha256"] == expected["weights_sha256"]
    print(f"README local-head commands: {elapsed:.1f} s")
