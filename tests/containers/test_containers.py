"""Static checks of docker/ and .github/: hadolint, the compose and GitHub workflow schemas,
the pins the images install, and the Makefile targets the workflows call.

The images themselves are built and run in test_docker.py.
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
from conftest import BIN, ROOT, constraint_pins

DOCKERFILES = [
    ROOT / "docker" / name for name in ("Dockerfile", "Dockerfile.gpu", "Dockerfile.spark", "Dockerfile.postgres")
]
COMPOSE = ROOT / "docker" / "compose.yaml"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def run(*command: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, check=False)


def schema_check(schema: str, path: Path) -> subprocess.CompletedProcess[str]:
    return run(BIN / "check-jsonschema", "--builtin-schema", f"vendor.{schema}", path)


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def workflow(name: str) -> dict:
    document = load_yaml(ROOT / ".github" / "workflows" / name)
    # YAML 1.1 reads the key `on` as True.
    document["on"] = document.pop(True, document.get("on"))
    return document


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    result = run(BIN / "hadolint", "--failure-threshold", "info", dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get install git\nUSER root\n")
    result = run(BIN / "hadolint", bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the latest tag


def test_compose_file_follows_the_compose_specification() -> None:
    result = schema_check("compose-spec", COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_catches_a_mistake(tmp_path: Path) -> None:
    broken = load_yaml(COMPOSE)
    broken["services"]["mlflow"]["helthcheck"] = broken["services"]["mlflow"].pop("healthcheck")  # a typo
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    assert schema_check("compose-spec", tmp_path / "compose.yaml").returncode


def test_compose_stack_shape() -> None:
    compose = load_yaml(COMPOSE)
    services = compose["services"]
    assert {"postgres", "mlflow", "trainer", "trainer-cpu"} <= set(services)
    mlflow = services["mlflow"]
    command = " ".join(mlflow["command"])
    assert "postgresql+psycopg2://" in command
    assert "--serve-artifacts" in command
    assert "mlflow-artifacts:/mlartifacts" in mlflow["volumes"]
    assert mlflow["healthcheck"]["test"]
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    trainer = services["trainer"]
    assert trainer["command"] == ["dvc", "repro"]
    assert trainer["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert trainer["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert trainer["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert trainer["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert services["trainer-cpu"]["profiles"] == ["cpu"]
    assert "deploy" not in services["trainer-cpu"]
    night = services["night"]  # a night of alert packets: the pipeline's stage, on the CPU image
    assert night["profiles"] == ["alerts"]
    assert night["command"] == ["dvc", "repro", "infer_alerts"]
    assert "infer_alerts" in load_yaml(ROOT / "dvc.yaml")["stages"]
    assert night["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert night["image"] == "${OTRAIN_IMAGE:-otrain:cpu}"
    # Nothing from Docker Hub: PostgreSQL is built from Debian's package, on a base of the user's choice.
    postgres = services["postgres"]
    assert postgres["build"]["dockerfile"] == "docker/Dockerfile.postgres"
    assert postgres["build"]["args"]["BASE_IMAGE"].startswith("${OTRAIN_BASE_IMAGE:-")
    serve = services["serve"]
    assert serve["profiles"] == ["serve"]
    assert serve["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert serve["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert "/ping" in " ".join(serve["healthcheck"]["test"])
    for service in (mlflow, serve):
        assert all(port.startswith("127.0.0.1:${OTRAIN_") for port in service["ports"]), "published on loopback only"


def test_compose_file_is_read_by_compose_v1(tmp_path: Path) -> None:
    """Debian bookworm's docker-compose 1.29 (Compose v1) rejects keys that v2 accepts."""
    compose_v1 = shutil.which("docker-compose")
    if compose_v1 is None:
        pytest.skip("docker-compose (v1) is not installed (docker/compose.sh installs it for make docker-test)")
    folder = tmp_path / "docker"
    shutil.copytree(ROOT / "docker", folder, ignore=shutil.ignore_patterns("otrain.env"))
    (folder / "otrain.env").write_text("POSTGRES_PASSWORD=x\n")
    result = run(compose_v1, "-f", folder / "compose.yaml", "--profile", "serve", "config", "--services", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {"postgres", "mlflow", "serve"} <= set(result.stdout.split())


def test_compose_file_holds_no_secret() -> None:
    text = COMPOSE.read_text()
    assert not re.search(r"(PASSWORD|SECRET|TOKEN)\w*\s*[:=]\s*\S", text), "a secret is set in compose.yaml"
    compose = load_yaml(COMPOSE)
    for name in ("postgres", "mlflow"):
        assert compose["services"][name]["env_file"] == "otrain.env"
    example = (ROOT / "docker" / "otrain.env.example").read_text()
    assert "POSTGRES_PASSWORD=" in example
    ignored = run("git", "check-ignore", "docker/otrain.env")
    assert ignored.returncode == 0, "docker/otrain.env (the real secrets) must be ignored by git"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda path: path.name)
def test_workflow_follows_the_github_schema(path: Path) -> None:
    result = schema_check("github-workflows", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_schema_check_catches_a_mistake(tmp_path: Path) -> None:
    broken = load_yaml(ROOT / ".github" / "workflows" / "ci.yml")
    broken["jobs"]["lint"]["runs-on"] = {"label": 3}
    (tmp_path / "ci.yml").write_text(yaml.safe_dump(broken))
    assert schema_check("github-workflows", tmp_path / "ci.yml").returncode


def test_ci_workflow_runs_lint_tests_on_two_pythons_and_the_image() -> None:
    ci = workflow("ci.yml")
    assert {"push", "pull_request"} <= set(ci["on"])
    assert ci["permissions"] == {"contents": "read"}
    assert ci["jobs"]["test"]["strategy"]["matrix"]["python"] == ["3.11", "3.12"]
    for name in ("lint", "test", "docker"):
        steps = ci["jobs"][name]["steps"]
        setup = next(step for step in steps if step.get("uses", "").startswith("actions/setup-python"))
        assert setup["with"]["cache"] == "pip"
    commands = "\n".join(step.get("run", "") for job in ci["jobs"].values() for step in job["steps"])
    for target in ("make lint", "make test", "make docker-test", "make docker-image-gpu"):
        assert target in commands
    # The browser tests get the runner's Chrome and its driver; their screenshot is kept.
    test_steps = ci["jobs"]["test"]["steps"]
    assert any("OTRAIN_CHROMEDRIVER=" in step.get("run", "") for step in test_steps)
    upload = next(step for step in test_steps if step.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["with"]["path"] == "test-artifacts/"
    # The GPU image must import TensorFlow and list the GPUs it sees, not just print help (which
    # never imports TensorFlow).
    gpu_steps = [step.get("run", "") for step in ci["jobs"]["gpu-image"]["steps"]]
    assert any(
        re.fullmatch(r"docker run --rm otrain:gpu python -m otrain\.nets\.model", run.strip()) for run in gpu_steps
    )


def test_retrain_workflow_shape() -> None:
    retrain = workflow("retrain.yml")
    assert "params" in retrain["on"]["workflow_dispatch"]["inputs"]
    assert retrain["on"]["schedule"][0]["cron"]
    assert retrain["concurrency"]["group"] == "retrain"
    assert retrain["concurrency"]["cancel-in-progress"] is False
    assert retrain["permissions"] == {"contents": "read"}
    job = retrain["jobs"]["retrain"]
    assert "self-hosted" in job["runs-on"]
    assert "gpu" in job["runs-on"]
    script = "\n".join(step.get("run", "") for step in job["steps"])
    assert "--gpus all" in script
    assert "make docker-image-gpu" in script
    assert "make retrain" in script
    assert "GITHUB_STEP_SUMMARY" in script
    # Inputs reach the script through the environment, never pasted into it nor given on make's
    # command line (script injection).
    assert "${{" not in script
    assert "PARAMS=" not in script
    assert "-e PARAMS" in script
    checkout = next(step for step in job["steps"] if step.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"] == {"fetch-depth": 0, "persist-credentials": False}, "dvc exp run needs full history"
    assert any(step.get("uses", "").startswith("actions/upload-artifact") for step in job["steps"])


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda path: path.name)
def test_workflows_call_only_existing_make_targets(path: Path) -> None:
    document = load_yaml(path)
    scripts = [step.get("run", "") for job in document["jobs"].values() for step in job["steps"]]
    targets = {match for script in scripts for match in re.findall(r"\bmake ([a-z][\w-]*)", script)}
    assert targets, f"{path.name} calls no Makefile target"
    for target in targets:
        result = run("make", "--dry-run", target, "SETUP=")
        assert result.returncode == 0, f"{path.name}: make {target}: {result.stderr}"


def test_image_requirements_follow_pyproject() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    cpu = run(sys.executable, "docker/requirements.py", "cpu").stdout.splitlines()
    gpu = run(sys.executable, "docker/requirements.py", "gpu").stdout.splitlines()
    assert cpu == project["dependencies"] + project["optional-dependencies"]["server"]
    assert not [line for line in gpu if line.startswith(("tensorflow-cpu", "tensorflow>", "tensorflow "))]
    assert "tensorflow[and-cuda]>=2.21,<2.22" in gpu
    assert set(cpu) - set(gpu) == {line for line in cpu if line.startswith("tensorflow")}
    assert run(sys.executable, "docker/requirements.py", "tpu").returncode == 2


def test_gpu_and_cpu_images_pin_the_same_tensorflow() -> None:
    pins = constraint_pins()
    assert pins["tensorflow"] == pins["tensorflow_cpu"]
    cuda = (ROOT / "requirements" / "constraints-gpu.txt").read_text()
    assert re.search(r"^nvidia-cudnn-cu12==[\d.]+$", cuda, re.MULTILINE)
    assert "--constraint requirements/constraints-gpu.txt" in (ROOT / "docker" / "Dockerfile.gpu").read_text()


def test_docker_context_is_an_allowlist() -> None:
    rules = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*", "everything is excluded first; the package files are let back in"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert allowed == {
        "pyproject.toml",
        "README.md",
        "otrain",
        "requirements",
        "docker/requirements.py",
        "docker/entrypoint.sh",
        "docker/postgres-entrypoint.sh",
    }
    for dockerfile in DOCKERFILES:
        copied = re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile.read_text(), re.MULTILINE)
        for sources in copied:
            for source in sources.split():
                assert source.rstrip("/") in allowed, f"{dockerfile.name} copies {source}, which .dockerignore drops"


@pytest.mark.parametrize("script", ["engine.sh", "base-image.sh", "compose.sh"])
def test_system_packages_are_installed_only_when_allowed(tmp_path: Path, script: str) -> None:
    """Without an engine (or debootstrap, or Compose) and without OTRAIN_INSTALL_SYSTEM_PACKAGES=1, the scripts
    install nothing: status 3 (the container tests then skip) and the command that runs them."""
    tools = tmp_path / "bin"  # what the scripts need, and no docker, dockerd, debootstrap or apt-get
    tools.mkdir()
    for tool in ("bash", "timeout", "id", "mkdir", "cat"):
        (tools / tool).symlink_to(shutil.which(tool))
    env = {"PATH": str(tools), "OTRAIN_DOCKER_ROOT": str(tmp_path / "engine"), "HOME": str(tmp_path)}
    command = [str(ROOT / "docker" / script), *{"engine.sh": ["start"], "compose.sh": ["version"]}.get(script, [])]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=300)
    assert result.returncode == 3, result.stderr
    assert result.stdout == ""
    if os.geteuid() == 0:
        assert "OTRAIN_INSTALL_SYSTEM_PACKAGES=1 make docker-test" in result.stderr
    assert not (tmp_path / "engine").exists()
