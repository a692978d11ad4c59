"""The compose stack for real: docker/compose.yaml brought up, used, served from and torn down.

The stack runs under a project name of its own, from a copy of docker/ that holds a test
otrain.env (a throwaway password), on free loopback ports, so that it never meets a user's
stack. PostgreSQL's image is built from Debian's package (docker/Dockerfile.postgres, no Docker
Hub); the MLflow server and the model server run in the CPU image that test_docker.py's fixture
builds. A tiny pipeline runs from this venv against the server (simulate, convert, train,
promote), the ``serve`` profile then serves the champion with ``otrain-serve`` (``mlflow models serve``), and its
P(real) for one cutout must be otrain-infer's. ``down --volumes`` removes everything, also when
a test fails. The engine, Compose and debootstrap follow test_docker.py's skip rules.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from conftest import BIN, ROOT
from helpers import free_port, wait_until_answers
from test_docker import ENGINE_UNAVAILABLE, RUN_THEM, docker, docker_env, image  # noqa: F401 - fixtures

pytestmark = pytest.mark.docker
#: How long a service may take to become healthy on a busy machine.
STARTUP = 300
CUTOUT_SIZE = 32


@dataclass
class Stack:
    """A running compose project: how to call Compose on it, and its published URLs."""

    command: list[str]
    env: dict[str, str]
    folder: Path
    project: str
    tracking_uri: str
    serve_url: str

    def compose(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.command, "-p", self.project, "-f", str(self.folder / "docker" / "compose.yaml"), *args],
            cwd=self.folder,
            capture_output=True,
            text=True,
            env=self.env,
            check=False,
            timeout=timeout,
        )
        assert result.returncode == 0, f"compose {' '.join(args)}: " + result.stdout[-3000:] + result.stderr[-3000:]
        return result

    def health(self, service: str) -> str:
        container = self.compose("ps", "-q", service).stdout.strip()
        assert container, f"no {service} container"
        return docker(self.env, "inspect", "--format", "{{.State.Health.Status}}", container).stdout.strip()

    def wait_healthy(self, service: str) -> None:
        deadline = time.monotonic() + STARTUP
        while (status := self.health(service)) != "healthy":
            if status == "unhealthy" or time.monotonic() > deadline:
                logs = self.compose("logs", "--no-color", "--tail", "60", service).stdout
                pytest.fail(f"{service} is {status} after {STARTUP} s at most:\n{logs[-4000:]}")
            time.sleep(5)

    def volumes(self) -> list[str]:
        listed = docker(
            self.env, "volume", "ls", "--quiet", "--filter", f"label=com.docker.compose.project={self.project}"
        )
        return listed.stdout.split()

    def down(self) -> None:
        self.compose("--profile", "serve", "down", "--volumes", "--remove-orphans")


def compose_command(env: dict[str, str]) -> list[str]:
    found = subprocess.run(
        [str(ROOT / "docker" / "compose.sh"), "--which"], capture_output=True, text=True, env=env, timeout=600
    )
    if found.returncode == ENGINE_UNAVAILABLE:
        pytest.skip(f"no Docker Compose: {found.stderr.strip()} (to run them: {RUN_THEM})")
    assert found.returncode == 0, found.stderr
    return found.stdout.split()


@pytest.fixture(scope="module")
def stack(docker_env: dict[str, str], image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:  # noqa: F811
    """postgres and mlflow up and healthy; taken down with their volumes at the end."""
    command = compose_command(docker_env)
    folder = tmp_path_factory.mktemp("compose")
    shutil.copytree(ROOT / "docker", folder / "docker", ignore=shutil.ignore_patterns("otrain.env"))
    shutil.copy(ROOT / ".dockerignore", folder)
    (folder / "docker" / "otrain.env").write_text(
        f"POSTGRES_USER=mlflow\nPOSTGRES_PASSWORD={secrets.token_hex(16)}\nPOSTGRES_DB=mlflow\n"
    )
    base = subprocess.run(
        [str(ROOT / "docker" / "base-image.sh")], capture_output=True, text=True, env=docker_env, timeout=1800
    )
    assert base.returncode == 0, base.stderr
    mlflow_port, serve_port = free_port(), free_port()
    env = {
        **docker_env,
        "OTRAIN_BASE_IMAGE": base.stdout.strip(),
        "OTRAIN_IMAGE": image,
        "OTRAIN_MLFLOW_PORT": str(mlflow_port),
        "OTRAIN_SERVE_PORT": str(serve_port),
    }
    project = f"otrain-test-{secrets.token_hex(4)}"
    running = Stack(command, env, folder, project, f"http://127.0.0.1:{mlflow_port}", f"http://127.0.0.1:{serve_port}")
    try:
        started = time.monotonic()
        running.compose("build", "postgres", timeout=1800)
        built = time.monotonic()
        running.compose("up", "-d", "postgres", "mlflow")
        running.wait_healthy("postgres")
        running.wait_healthy("mlflow")
        healthy = time.monotonic()
        print(
            f"\ncompose: postgres image built in {built - started:.0f} s, stack healthy {healthy - built:.0f} s later"
        )
        yield running
    finally:
        running.down()


def post_json(url: str, payload: object) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def otrain(folder: Path, tracking_uri: str, *command: str) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "OTRAIN_PROGRESS": "0"}
    result = subprocess.run(
        [str(BIN / command[0]), *command[1:]], cwd=folder, capture_output=True, text=True, env=env, timeout=1200
    )
    assert result.returncode == 0, f"{command[0]}: " + result.stdout[-2000:] + result.stderr[-2000:]


def test_postgres_is_built_from_debian_and_keeps_its_data_in_the_volume(stack: Stack) -> None:
    container = stack.compose("ps", "-q", "postgres").stdout.strip()
    version = docker(stack.env, "exec", container, "postgres", "--version").stdout
    assert "(Debian 15." in version
    assert docker(stack.env, "exec", container, "id", "-un").stdout.strip() == "postgres"
    cluster = docker(stack.env, "exec", container, "cat", "/var/lib/postgresql/data/pgdata/PG_VERSION").stdout
    assert cluster.strip() == "15"
    assert f"{stack.project}_postgres-data" in stack.volumes()


def test_champion_served_by_the_stack_scores_as_otrain_infer(stack: Stack, tmp_path: Path) -> None:
    from otrain.data.cutouts import read_cutout
    from otrain.io.cutouts import list_cutouts

    uri = stack.tracking_uri
    otrain(
        tmp_path,
        uri,
        "otrain-simulate",
        "--out=survey",
        "--n-true=60",
        "--n-false=60",
        "--n-night=4",
        f"--cutout-size={CUTOUT_SIZE}",
        "--workers=1",
    )
    otrain(tmp_path, uri, "otrain-convert", "--path=.", "--cube=survey", "--cutouts=survey", "--workers=1")
    model_dir = tmp_path / "models" / "CNN_training" / "tiny"
    otrain(
        tmp_path,
        uri,
        "otrain-train",
        "--cube=datacube/survey.npz",
        "--model-path=models",
        "--model-name=tiny",
        "--epochs=2",
        "--normalisation=robust",
    )
    otrain(tmp_path, uri, "otrain-promote", f"--model-dir={model_dir}")
    night = tmp_path / "survey" / "night"
    otrain(tmp_path, uri, "otrain-infer", f"--cutouts={night}", f"--model={model_dir / 'tiny.keras'}", "--no-tracking")

    stack.compose("--profile", "serve", "up", "-d", "serve")
    wait_until_answers(stack.serve_url + "/ping", STARTUP)
    stack.wait_healthy("serve")

    scored = Table.read(night / "infer_results.dat", format="ascii.commented_header")
    expected = {Path(str(row["filename"])).name: float(row["label1"]) for row in scored}
    cutouts = list_cutouts(night)
    assert len(cutouts) == len(expected) == 4
    served = []
    for path in cutouts:
        pixels = read_cutout(path, cutout_size=CUTOUT_SIZE).pixels
        answer = post_json(stack.serve_url + "/invocations", {"inputs": pixels[np.newaxis].tolist()})
        probabilities = np.asarray(answer["predictions"], dtype=np.float64)
        assert probabilities.shape == (1, 2)
        served.append(probabilities[0, 1])
    np.testing.assert_allclose(served, [expected[path.name] for path in cutouts], rtol=0, atol=1e-5)
    assert np.ptp(served) > 0, "the cutouts get different scores: the comparison means something"


def test_down_removes_containers_and_volumes(stack: Stack) -> None:
    assert len(stack.volumes()) == 2
    stack.down()
    assert stack.compose("--profile", "serve", "ps", "-q").stdout.strip() == ""
    assert stack.volumes() == []
