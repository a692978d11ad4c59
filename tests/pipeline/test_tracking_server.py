"""The pipeline against a real MLflow tracking server backed by a real PostgreSQL.

The test starts PostgreSQL (initdb into a temporary folder, a free loopback port) and
``mlflow server`` (PostgreSQL backend, proxied artifact store, one worker) with the very command
of docker/compose.yaml's ``mlflow`` service (its secrets from an env file's variables, only the
addresses changed for loopback), runs ``dvc repro`` with tiny parameters against it, checks the
run, the registry and the champion model through MlflowClient, and stops both servers. It is
skipped only when PostgreSQL is not installed (``.ci/run`` installs Debian's ``postgresql``).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import BIN, ROOT
from helpers import free_port, serving
from test_pipeline import dvc, make_repo

pytestmark = pytest.mark.slow


def postgres_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def as_postgres_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the 'postgres' account the package creates."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    initdb, pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
    # Not under pytest's temporary folder: the 'postgres' account cannot enter root's 0700 tree.
    folder = Path(tempfile.mkdtemp(prefix="otrain-postgres-"))
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    port = free_port()
    subprocess.run(
        as_postgres_user([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
        check=True,
        capture_output=True,
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder}"
    subprocess.run(
        as_postgres_user([pg_ctl, "-D", str(data), "-o", options, "-w", "-l", str(folder / "log"), "start"]),
        check=True,
        capture_output=True,
    )
    try:
        createdb = postgres_bin("createdb")
        assert createdb is not None
        subprocess.run([createdb, "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow"], check=True)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(as_postgres_user([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]), capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def compose_mlflow_command(postgres_port: int, port: int, artifacts: Path) -> list[str]:
    """The ``mlflow`` service's command from docker/compose.yaml, as compose would run it, with
    only its addresses moved to loopback: the database host, the listening port, the artifact
    volume."""
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    command = list(compose["services"]["mlflow"]["command"])
    script = command[-1].replace("$$", "$")  # compose's escape for a literal $
    for old, new in (
        ("@postgres:5432/", f"@127.0.0.1:{postgres_port}/"),
        ("--host 0.0.0.0 --port 5000", f"--host 127.0.0.1 --port {port}"),
        ("--artifacts-destination /mlartifacts", f"--artifacts-destination {artifacts}"),
    ):
        assert old in script, f"docker/compose.yaml's mlflow command no longer has {old!r}"
        script = script.replace(old, new)
    return [*command[:-1], script]


@pytest.fixture(scope="module")
def tracking_server(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    artifacts = tmp_path_factory.mktemp("artifacts")
    port = free_port()
    database = urllib.parse.urlsplit(postgres)
    command = compose_mlflow_command(database.port or 5432, port, artifacts)
    # What docker/otrain.env gives the container (PostgreSQL trusts loopback here, so any password).
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "POSTGRES_USER": database.username or "postgres",
        "POSTGRES_PASSWORD": "not-used-by-trust-auth",
        "POSTGRES_DB": database.path.lstrip("/"),
        "MLFLOW_SERVER_ALLOWED_HOSTS": f"127.0.0.1:{port},localhost:{port}",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    with serving(command, env, port, "/health", 120, artifacts.parent / "mlflow-server.log", grace=30) as url:
        yield url


def test_pipeline_against_a_team_server(tracking_server: str, tmp_path: Path) -> None:
    import mlflow
    import numpy as np
    from mlflow.tracking import MlflowClient

    import otrain.nets.model  # noqa: F401 - registers otrain's Keras layers before loading
    from otrain.data.cutouts import read_cutout
    from otrain.io.cutouts import list_cutouts

    folder = make_repo(tmp_path / "pipeline")
    dvc(folder, tracking_server, "repro")
    run_file = json.loads((folder / "models" / "CNN_training" / "survey" / "mlflow_run.json").read_text())
    assert run_file["tracking_uri"] == tracking_server
    client = MlflowClient(tracking_server)
    run = client.get_run(run_file["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "2"
    assert {"test_accuracy", "test_mcc", "diagnostics_roc_auc", "val_loss"} <= set(run.data.metrics)
    grad_cam = [item.path for item in client.list_artifacts(run.info.run_id, "grad_cam")]
    assert any(path.endswith("_summary.png") for path in grad_cam)
    plots = {item.path for item in client.list_artifacts(run.info.run_id, "plot_results")}
    assert "plot_results/mag_ROC.png" in plots
    assert "model/MLmodel" in {item.path for item in client.list_artifacts(run.info.run_id, "model")}
    champion = client.get_model_version_by_alias("otrain-cnn", "champion")
    assert champion.run_id == run.info.run_id
    assert "test_mcc" in champion.tags

    mlflow.set_tracking_uri(tracking_server)
    model = mlflow.keras.load_model("models:/otrain-cnn@champion")
    cutout = read_cutout(list_cutouts(folder / "data" / "survey" / "night")[0]).pixels[np.newaxis]
    scores = model.predict(cutout, verbose=0)
    assert scores.shape == (1, 2)
    assert abs(float(scores.sum()) - 1.0) < 1e-5
