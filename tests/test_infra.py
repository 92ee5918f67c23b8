"""Offline checks of the deployment files: ray_cluster.yaml through Ray's OWN cluster-config validation, the
Dockerfile / KubeRay manifests / runtime_env against the pins of pyproject.toml and the real CLI of
jobs/scan_bucket.py, Ray's own runtime_env validation and working_dir packaging, the SSM token fetcher against
moto, and a scan for committed secrets. (No Docker engine or Kubernetes API here: images are not built and
manifests are not applied.)"""

from __future__ import annotations

import copy
import os
import re
import shlex
import stat
import subprocess
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.subproc import run_python

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "ray_cluster.yaml"
DOCKERFILE = ROOT / "infra" / "Dockerfile"
RAYJOB = ROOT / "infra" / "kuberay" / "rayjob-scan.yaml"
RAYCRON = ROOT / "infra" / "kuberay" / "raycronjob-nightly-scan.yaml"
RUNTIME_ENV = ROOT / "infra" / "runtime_env.yaml"
SCAN_JOB = ROOT / "jobs" / "scan_bucket.py"
INFRA_FILES = [
    CLUSTER_YAML,
    DOCKERFILE,
    RAYJOB,
    RAYCRON,
    RUNTIME_ENV,
    ROOT / "infra" / "fetch_ray_token.py",
    ROOT / "docs" / "deploy.md",
]


# ---------------------------------------------------------------------------------------------- helpers
def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pin(name: str) -> str:
    """The exact `==` version pinned for `name` in pyproject.toml's dependencies (extras allowed)."""
    for dep in _pyproject()["project"]["dependencies"]:
        m = re.fullmatch(rf"{re.escape(name)}(\[[^\]]*\])?==([\w.]+)", dep.replace(" ", ""))
        if m:
            return m.group(2)
    raise AssertionError(f"{name} is not pinned with == in pyproject.toml")


def _cluster() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _rayjob_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d]


def _rayjob() -> dict[str, Any]:
    (job,) = [d for d in _rayjob_docs() if d["kind"] == "RayJob"]
    return job


def _pod_templates(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{group name: pod spec} for the head, every worker group and the submitter of a RayJob spec."""
    cluster = spec["rayClusterSpec"]
    pods = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    for g in cluster["workerGroupSpecs"]:
        pods[g["groupName"]] = g["template"]["spec"]
    pods["submitter"] = spec["submitterPodTemplate"]["spec"]
    return pods


def _dockerfile_args() -> dict[str, str]:
    args: dict[str, str] = {}
    for line in DOCKERFILE.read_text().splitlines():
        m = re.match(r"\s*ARG\s+(\w+)=(\S+)", line)
        if m:
            assert args.setdefault(m.group(1), m.group(2)) == m.group(2), (
                f"ARG {m.group(1)} defined twice, differently"
            )
    return args


def _entrypoint_flags(entrypoint: str) -> tuple[str, list[str]]:
    """(script path, ['--flag', ...]) of a `python <script> --flag value ...` entrypoint."""
    argv = shlex.split(entrypoint)
    assert argv[0] == "python", argv
    return argv[1], [a.split("=", 1)[0] for a in argv[2:] if a.startswith("--")]


def _scan_help() -> str:
    out = run_python(str(SCAN_JOB), "--help")
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


# ------------------------------------------------------------------------------------ ray_cluster.yaml
def test_cluster_yaml_passes_rays_own_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(_cluster())  # fills defaults exactly as `ray up` does before validating
    validate_config(prepared)  # Ray's bundled ray-schema.json + its cross-field checks
    assert prepared["head_node_type"] == "head"
    assert prepared["available_node_types"]["head"]["max_workers"] == 0

    # ... and the validation is real: a misspelt field and an impossible min_workers are both rejected.
    import jsonschema

    bad = copy.deepcopy(_cluster())
    bad["available_node_types"]["gpu_worker"]["min_worker"] = 1
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        validate_config(prepare_config(bad))
    bad = copy.deepcopy(_cluster())
    bad["available_node_types"]["gpu_worker"]["min_workers"] = bad["max_workers"] + 1
    with pytest.raises(ValueError, match="max_workers"):
        validate_config(prepare_config(bad))


def test_cluster_yaml_node_types_and_pins() -> None:
    c = _cluster()
    ray_pin = _pin("ray")
    assert c["provider"]["type"] == "aws"
    image = c["docker"]["image"]
    assert image.startswith(f"rayproject/ray:{ray_pin}-py311-") and image.endswith("-gpu"), image
    assert ">=3.11" in _pyproject()["project"]["requires-python"]

    types = c["available_node_types"]
    head = types[c["head_node_type"]]
    assert head["resources"]["CPU"] == 0, "nothing may be scheduled on the head"
    assert "GPU" not in head["resources"]
    gpu = [t for name, t in types.items() if t["resources"].get("GPU", 0) >= 1]
    cpu = [t for name, t in types.items() if name != c["head_node_type"] and not t["resources"].get("GPU")]
    assert len(gpu) == 1 and len(cpu) == 1
    assert re.fullmatch(r"g[56]\.\w+", gpu[0]["node_config"]["InstanceType"])
    for t in (*gpu, *cpu):
        assert 0 <= t["min_workers"] < t["max_workers"] <= c["max_workers"]
    # Every node reaches S3 through an instance profile; no key material anywhere in the config.
    for name, t in types.items():
        assert t["node_config"]["IamInstanceProfile"]["Name"].startswith("genscan-ray-"), name
    text = CLUSTER_YAML.read_text()
    assert "aws_access_key_id" not in text.lower() and "aws_secret_access_key" not in text.lower()
    # Setup installs THIS project (exact pins of pyproject) from the synced checkout, then the auth token.
    assert c["file_mounts"] == {"~/genscan": "."}
    assert ".venv" in c["rsync_exclude"] and ".git" in c["rsync_exclude"]
    assert c["setup_commands"][0].split() == ["pip", "install", "--no-cache-dir", "-e", "~/genscan"]
    token_cmd = shlex.split(c["setup_commands"][1])
    assert token_cmd[:2] == ["python", "~/genscan/infra/fetch_ray_token.py"]
    assert (ROOT / "infra" / "fetch_ray_token.py").is_file()


def test_cluster_yaml_token_auth_and_private_dashboard() -> None:
    c = _cluster()
    assert "--env RAY_AUTH_MODE=token" in c["docker"]["run_options"]
    starts = [s for s in (*c["head_start_ray_commands"], *c["worker_start_ray_commands"]) if "ray start" in s]
    assert len(starts) == 2
    for cmd in starts:
        assert "RAY_AUTH_MODE=token ray start" in cmd
    (head_start,) = [s for s in c["head_start_ray_commands"] if "ray start" in s]
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in CLUSTER_YAML.read_text()
    # No security-group rule opens the dashboard port.
    for rule in c["provider"].get("security_group", {}).get("IpPermissions", []):
        assert not rule.get("FromPort", 0) <= 8265 <= rule.get("ToPort", -1)


# -------------------------------------------------------------------------------------------- Dockerfile
def test_dockerfile_pins_match_pyproject() -> None:
    args = _dockerfile_args()
    assert args["RAY_VERSION"] == _pin("ray")
    assert args["TORCH_VERSION"] == _pin("torch")
    assert args["TORCHVISION_VERSION"] == _pin("torchvision")
    text = DOCKERFILE.read_text()
    (from_line,) = [ln for ln in text.splitlines() if ln.startswith("FROM ")]
    image = (
        from_line.split()[1]
        .replace("${RAY_VERSION}", args["RAY_VERSION"])
        .replace("${PYTHON_TAG}", args["PYTHON_TAG"])
    )
    assert image == f"rayproject/ray:{_pin('ray')}-py311-gpu"
    assert 'pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"' in text
    # every COPY source exists and is let through the Dockerfile-specific .dockerignore
    ignore = (ROOT / "infra" / "Dockerfile.dockerignore").read_text().split()
    for line in text.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[2:-1]:
                assert (ROOT / src).exists(), src
                assert f"!{src}" in ignore or f"!{src}/**" in ignore, (
                    f"{src} is excluded from the build context"
                )


# ------------------------------------------------------------------------------------ KubeRay manifests
def test_rayjob_manifest_structure_and_pins() -> None:
    docs = _rayjob_docs()
    assert {d["kind"] for d in docs} == {"ServiceAccount", "RayJob"}, "no Secret (or anything else) committed"
    job = _rayjob()
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == _pin("ray")
    version = _pyproject()["project"]["version"]
    pods = _pod_templates(spec)
    for name, pod in pods.items():
        for ctr in pod["containers"]:
            assert ctr["image"].rsplit(":", 1)[1] == version, (name, ctr["image"])
        assert pod.get("serviceAccountName") == "genscan-ray", name

    head = cluster["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    assert head["rayStartParams"]["num-cpus"] == "0"
    for d in docs:  # nothing exposes the dashboard outside the cluster
        assert d["kind"] not in ("Ingress", "Service")
    gpu_groups = [
        g
        for g in cluster["workerGroupSpecs"]
        if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
    ]
    assert len(gpu_groups) == 1
    res = gpu_groups[0]["template"]["spec"]["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == 1
    assert 0 <= gpu_groups[0]["minReplicas"] < gpu_groups[0]["maxReplicas"]
    # the scan asks for as many GPU actors as it may get GPUs at most
    _, flags = _entrypoint_flags(spec["entrypoint"])
    argv = shlex.split(spec["entrypoint"])
    assert float(argv[argv.index("--actor-num-gpus") + 1]) == 1.0
    assert int(argv[argv.index("--num-actors") + 1]) <= gpu_groups[0]["maxReplicas"]


def test_rayjob_token_auth_from_secret_everywhere() -> None:
    spec = _rayjob()["spec"]
    containers = [c for pod in _pod_templates(spec).values() for c in pod["containers"]]
    envs = [{e["name"]: e for e in c["env"]} for c in containers]
    envs.append({e["name"]: e for e in spec["rayClusterSpec"]["autoscalerOptions"]["env"]})
    assert len(envs) == 5  # head, gpu, decode, submitter, autoscaler sidecar
    for env in envs:
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        tok = env["RAY_AUTH_TOKEN"]
        assert "value" not in tok, "the token must come from the Secret, never inline"
        assert tok["valueFrom"]["secretKeyRef"] == {"name": "genscan-ray-token", "key": "auth_token"}


def _scan_cli() -> Any:
    """What jobs/scan_bucket.py runs: its parser and build_config."""
    from pipeline.cli import scan_bucket

    return scan_bucket


def test_rayjob_entrypoint_is_the_real_scan_cli() -> None:
    """The script exists and every flag the manifests pass is one `jobs/scan_bucket.py --help` lists."""
    script, flags = _entrypoint_flags(_rayjob()["spec"]["entrypoint"])
    assert script == "/home/ray/genscan/jobs/scan_bucket.py"  # WORKDIR of infra/Dockerfile + repo path
    assert (
        "WORKDIR /home/ray/genscan" in DOCKERFILE.read_text()
        and "COPY --chown=ray:users jobs ./jobs" in DOCKERFILE.read_text()
    )
    assert SCAN_JOB.is_file()
    helptext = _scan_help()
    offered = set(re.findall(r"--[a-z0-9][a-z0-9-]*", helptext))
    assert flags and set(flags) <= offered, f"flags not accepted by scan_bucket.py: {set(flags) - offered}"
    assert {"--input", "--output", "--detector", "--resume", "--scan-date"} <= set(flags)
    # ... and the values validate as a ScanConfig through the script's own parser (the shell expands $(date)
    # at submission; a fixed date stands in for it here)
    from pipeline.cli import scan_bucket as cli  # what the script runs

    argv = [
        a.replace("$(date -u +%Y-%m-%d)", "2026-11-24")
        for a in shlex.split(_rayjob()["spec"]["entrypoint"])[2:]
    ]
    cfg = cli.build_config(cli.parse_args(argv))
    assert cfg.scan_date == "2026-11-24" and cfg.resume is True
    assert cfg.device == "cuda" and cfg.actor_num_gpus == 1 and cfg.dtype == "float16"
    assert (
        cfg.input.startswith("s3://") and cfg.output.startswith("s3://") and cfg.detector.startswith("s3://")
    )


def test_rayjob_runtime_env_passes_rays_validation() -> None:
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load(_rayjob()["spec"]["runtimeEnvYAML"])
    RuntimeEnv(**env)
    assert "working_dir" not in env and "pip" not in env  # the code and dependencies are in the image


def test_raycronjob_runs_exactly_the_rayjob() -> None:
    """The nightly job is the RayJob's spec, its scan made incremental (`--incremental`, right after
    --resume)."""
    cron = yaml.safe_load(RAYCRON.read_text())
    assert (cron["apiVersion"], cron["kind"]) == ("ray.io/v1", "RayCronJob")
    template = dict(cron["spec"]["jobTemplate"])
    nightly = shlex.split(template.pop("entrypoint"))
    assert "--incremental" in nightly
    nightly.remove("--incremental")
    once = dict(_rayjob()["spec"])
    assert nightly == shlex.split(once.pop("entrypoint")) and template == once
    cli = _scan_cli()
    argv = [
        a.replace("$(date -u +%Y-%m-%d)", "2026-11-24")
        for a in shlex.split(cron["spec"]["jobTemplate"]["entrypoint"])[2:]
    ]
    cfg = cli.build_config(cli.parse_args(argv))
    assert cfg.incremental is True and cfg.resume is True
    fields = cron["spec"]["schedule"].split()
    assert len(fields) == 5 and fields[2:] == ["*", "*", "*"], "once a day"
    assert 0 <= int(fields[0]) < 60 and 0 <= int(fields[1]) < 24


# ---------------------------------------------------------------------------------------- runtime_env
def test_runtime_env_yaml_passes_rays_validation_and_packages_the_repo(tmp_path: Path) -> None:
    from ray._private.runtime_env.packaging import _zip_files
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load(RUNTIME_ENV.read_text())
    RuntimeEnv(**env)  # Ray's own validation of every field
    assert env["working_dir"] == "." and "pip" not in env and "py_modules" not in env
    # Package the working_dir exactly as `ray job submit` does (same function, same excludes, .gitignore on).
    out = tmp_path / "wd.zip"
    _zip_files(str(ROOT), env["excludes"], str(out), include_gitignore=True)
    names = zipfile.ZipFile(out).namelist()
    assert "jobs/scan_bucket.py" in names and "pipeline/__init__.py" in names
    assert not [n for n in names if n.startswith((".venv/", ".git/", "demo/")) or "__pycache__" in n]
    assert out.stat().st_size < 100 * 2**20, "working_dir upload must stay far below Ray's 500 MiB limit"


def _node_env_cluster() -> dict[str, str]:
    """The environment ray_cluster.yaml gives every container (docker run_options `--env K=V`)."""
    opts = [o.split(None, 1)[1] for o in _cluster()["docker"]["run_options"] if o.startswith("--env ")]
    return dict(o.split("=", 1) for o in opts)


def _node_env_pod(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "<from secret>") for e in pod["containers"][0]["env"]}


def test_job_runtime_envs_merge_with_the_drivers_pass_through() -> None:
    """Under `ray job submit` the driver's ray.init(runtime_env=...) (pipeline.engine.cluster: AWS_*/GENSCAN_*
    by name) is merged by Ray with the job's runtime_env; a variable set on both sides makes Ray refuse the
    job. Checked with Ray's own merge, for both deployments, with the node environment each one really
    sets."""
    from ray.runtime_env.runtime_env import _merge_runtime_env

    from pipeline.engine.cluster import runtime_env as driver_runtime_env

    head_pod = _rayjob()["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    cases = [
        (yaml.safe_load(RUNTIME_ENV.read_text()), _node_env_cluster()),
        (yaml.safe_load(_rayjob()["spec"]["runtimeEnvYAML"]), _node_env_pod(head_pod)),
    ]
    for job_env, node_env in cases:
        driver_env = {
            **node_env,
            **job_env.get("env_vars", {}),
        }  # Ray applies the job's env_vars to the driver
        merged = _merge_runtime_env(job_env, driver_runtime_env(driver_env))
        assert merged is not None, (
            f"conflict: {sorted(job_env.get('env_vars', {}))} vs the driver's pass-through"
        )
        # the S3 region reaches the workers, by name from the node's environment
        assert merged["env_vars"]["AWS_DEFAULT_REGION"] == node_env["AWS_DEFAULT_REGION"] == "us-east-1"
        assert "RAY_AUTH_TOKEN" not in merged["env_vars"]
    # and the check bites: the same key on both sides is exactly what Ray rejects
    assert (
        _merge_runtime_env(
            {"env_vars": {"AWS_DEFAULT_REGION": "x"}}, driver_runtime_env({"AWS_DEFAULT_REGION": "x"})
        )
        is None
    )


# ---------------------------------------------------------------------------------- token fetcher (SSM)
def _fetch(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_python(str(ROOT / "infra" / "fetch_ray_token.py"), *args, env={**os.environ, **env})


def test_fetch_ray_token_from_ssm(tmp_path: Path, s3_server: dict[str, str]) -> None:
    """The real script against moto's server (SSM over HTTP on 127.0.0.1, same endpoint as the S3 fixture)."""
    import boto3

    secret = "tok-" + os.urandom(12).hex()
    ssm = boto3.client("ssm", endpoint_url=s3_server["AWS_ENDPOINT_URL"], region_name="us-east-1")
    ssm.put_parameter(Name="/genscan/ray-auth-token", Value=secret + "\n", Type="SecureString")
    out = tmp_path / "home" / ".ray" / "auth_token"
    res = _fetch(
        ["--parameter", "/genscan/ray-auth-token", "--region", "us-east-1", "--out", str(out)], s3_server
    )
    assert res.returncode == 0, res.stderr
    assert out.read_text() == secret  # stripped, exact
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert "ray_token_written" in res.stderr
    assert secret not in res.stdout + res.stderr, "the token must never be logged"
    # missing parameter: exit 2, nothing written
    missing = tmp_path / "other" / "auth_token"
    res = _fetch(["--parameter", "/nope", "--region", "us-east-1", "--out", str(missing)], s3_server)
    assert res.returncode == 2 and not missing.exists()
    assert "ray_token_missing" in res.stderr


# ------------------------------------------------------------------------------------------- secrets
SECRET_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"(?i)aws_secret_access_key\s*[:=]\s*\S+"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"RAY_AUTH_TOKEN\s*[=:]\s*['\"]?[A-Za-z0-9+/=_-]{16,}"),
    re.compile(r"(?m)^\s*kind:\s*Secret\s*$"),
]


def test_no_secrets_committed() -> None:
    for path in INFRA_FILES:
        if not path.exists():
            continue
        text = path.read_text()
        for pat in SECRET_PATTERNS:
            assert not pat.search(text), f"{path.relative_to(ROOT)} matches {pat.pattern}"
    # the patterns do fire on the things they guard against
    assert SECRET_PATTERNS[0].search("key AKIAABCDEFGHIJKLMNOP")
    assert SECRET_PATTERNS[3].search("RAY_AUTH_TOKEN=0123456789abcdef0123")
    assert SECRET_PATTERNS[4].search("kind: Secret\n")
