"""otrain-train across workers: two real processes on loopback, MultiWorkerMirroredStrategy via TF_CONFIG."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT
from helpers import free_ports, history_epochs, wait_for_epochs

pytestmark = pytest.mark.slow

#: Runs otrain-train's main from this checkout, whatever console scripts are installed.
TRAIN = "import sys; from otrain.cli.train import main; main(sys.argv[1:])"
#: Two processes import TensorFlow, wait for each other, then train on a loaded machine.
TIMEOUT = 900


def tf_config(ports: list[int], index: int) -> str:
    workers = [f"127.0.0.1:{port}" for port in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def train_args(workspace: Path, models: Path, name: str, *extra: str) -> list[str]:
    return [
        *("--cube", str(workspace / "datacube" / "cube.npz"), "--model-path", str(models), "--model-name", name),
        *("--normalisation", "robust", "--patience", "0"),
        *extra,
    ]


def environment(tracking_uri: str, config: str | None = None) -> dict[str, str]:
    env = {**os.environ, "OTRAIN_PROGRESS": "0", "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(ROOT)}
    env.pop("TF_CONFIG", None)
    if config is not None:
        env["TF_CONFIG"] = config
    return env


@pytest.fixture
def cluster() -> Iterator[list[subprocess.Popen[str]]]:
    """The worker processes a test starts; killed at the end whatever happened."""
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate()


def start_workers(
    processes: list[subprocess.Popen[str]], args: list[str], tracking_uri: str, workers: int = 2
) -> list[subprocess.Popen[str]]:
    ports = free_ports(workers)
    started = [
        subprocess.Popen(
            [sys.executable, "-c", TRAIN, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(tracking_uri, tf_config(ports, index)),
        )
        for index in range(workers)
    ]
    processes.extend(started)
    return started


def finish(processes: list[subprocess.Popen[str]]) -> list[tuple[int, str, str]]:
    results = []
    for process in processes:
        out, err = process.communicate(timeout=TIMEOUT)
        results.append((process.returncode, out, err))
    return results


def runs_in(tracking_uri: str) -> list[object]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    return client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{not json", "TF_CONFIG: not valid JSON"),
        (
            json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 2}}),
            "TF_CONFIG: this task (worker 2) is not in the cluster (2 worker)",
        ),
        (
            json.dumps({"cluster": {"worker": ["127.0.0.1:1"], "ps": ["127.0.0.1:2"]}, "task": {"type": "worker"}}),
            "TF_CONFIG: cluster jobs ps are not supported",
        ),
        (
            json.dumps({"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}),
            "TF_CONFIG: cluster.worker.0: String should match pattern",
        ),
    ],
)
def test_a_bad_tf_config_is_one_line_and_exit_2_before_anything_is_written(
    workspace: Path, tmp_path: Path, value: str, message: str
) -> None:
    models = tmp_path / "models"
    result = subprocess.run(
        [sys.executable, "-c", TRAIN, *train_args(workspace, models, "m", "--epochs", "1")],
        capture_output=True,
        text=True,
        env=environment(f"sqlite:///{tmp_path / 'mlflow.db'}", value),
        timeout=TIMEOUT,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"otrain-train: error: {message}"), lines
    assert not models.exists()
    assert not (tmp_path / "mlflow.db").exists()


def test_two_workers_train_one_model_written_by_the_chief_alone(
    workspace: Path, trained: Path, tmp_path: Path, cluster: list[subprocess.Popen[str]]
) -> None:
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    models = tmp_path / "models"
    # The options of the one-worker `trained` fixture (6 epochs); its global batch, made even for two replicas.
    one_worker = json.loads((trained / "tiny.keras.card.json").read_text())
    batch = one_worker["batch_size_used"] // 2 * 2
    args = train_args(workspace, models, "two", "--epochs", "6", "--batch-size", str(batch))
    (chief, chief_out, chief_err), (worker, worker_out, worker_err) = finish(start_workers(cluster, args, tracking_uri))
    assert chief == 0, chief_err
    assert worker == 0, worker_err
    assert "training on 2 workers with MultiWorkerMirroredStrategy (2 replicas)" in chief_err
    assert "Traceback" not in chief_err + worker_err
    assert "worker 1: trained 6 epochs with the 2 workers" in worker_out
    assert "MLflow run" in chief_out
    assert "MLflow run" not in worker_out

    # One training folder, written by the chief; the worker left no file of its own in it.
    assert [path.name for path in (models / "CNN_training").iterdir()] == ["two"]
    folder = models / "CNN_training" / "two"
    expected = {
        "two.keras",
        "two.keras.card.json",
        "two.onnx",
        "history.csv",
        "metrics.json",
        "mlflow_run.json",
        "two_loss_vs_epochs.png",
        "two_accuracy_vs_epochs.png",
        "validation_set/datacube/cube_validation.npz",
        "test_set/datacube/cube_test.npz",
    }
    assert {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()} == expected
    assert history_epochs(folder) == [1, 2, 3, 4, 5, 6]

    card = json.loads((folder / "two.keras.card.json").read_text())
    assert card["workers"] == 2
    assert card["onnx"]["parity"]["max_share_of_allowance"] <= 1.0  # the chief wrote the twin, checked
    assert card["batch_size_used"] == batch
    runs = runs_in(tracking_uri)
    assert len(runs) == 1
    assert runs[0].info.run_id == card["mlflow_run_id"]
    assert runs[0].info.status == "FINISHED"
    assert runs[0].data.params["n_workers"] == "2"

    # The same test set, and a model of the same quality as one worker's on it. An untrained
    # network scores a ROC AUC near 0.5 here and one trained for a single epoch below 0.9 (its
    # validation accuracy is about 0.55); six epochs on one worker reach about 0.98. The two runs
    # differ only in the order of floating-point sums, so 0.05 is room for that, not for a broken run.
    two, one = json.loads((folder / "metrics.json").read_text()), one_worker["test_metrics"]
    assert two["n"] == one["n"]
    assert two["roc_auc"] > 0.9, two
    assert abs(two["roc_auc"] - one["roc_auc"]) < 0.05, (two, one)
    assert abs(two["accuracy"] - one["accuracy"]) < 0.1, (two, one)


def test_two_workers_killed_mid_training_resume_from_the_chiefs_checkpoint(
    workspace: Path, tmp_path: Path, cluster: list[subprocess.Popen[str]]
) -> None:
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    models = tmp_path / "models"
    folder = models / "CNN_training" / "m"
    pointer = folder / ".checkpoint" / "latest.json"
    first = start_workers(cluster, train_args(workspace, models, "m", "--epochs", "1000"), tracking_uri)
    wait_for_epochs(folder, 2, *first, seconds=TIMEOUT)
    for process in first:  # both machines lost at once
        process.send_signal(signal.SIGKILL)
    for process in first:
        process.communicate()
    interrupted = json.loads(pointer.read_text())
    done = interrupted["epochs_done"]
    run_id = json.loads((folder / ".checkpoint" / "mlflow_run.json").read_text())["run_id"]

    args = train_args(workspace, models, "m", "--epochs", str(done + 2), "--resume")
    (chief, chief_out, chief_err), (worker, worker_out, worker_err) = finish(start_workers(cluster, args, tracking_uri))
    assert chief == 0, chief_err
    assert worker == 0, worker_err
    assert f"resuming {folder / '.checkpoint'}: epoch {done} of {done + 2} had finished" in chief_out
    assert f"worker 1: resuming from the chief's checkpoint, epoch {done}" in worker_out
    assert f"worker 1: trained {done + 2} epochs" in worker_out
    assert history_epochs(folder) == list(range(1, done + 3))
    with open(folder / "history.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [float(row["loss"]) for row in rows[:done]] == [row["loss"] for row in interrupted["history"]]
    assert not (folder / ".checkpoint").exists()
    runs = runs_in(tracking_uri)
    assert [run.info.run_id for run in runs] == [run_id]
    assert runs[0].info.status == "FINISHED"


def test_tf_config_with_a_chief_task_names_the_chief(monkeypatch: pytest.MonkeyPatch) -> None:
    from otrain.options import cluster_from_environment

    cluster = {"chief": ["127.0.0.1:2222"], "worker": ["127.0.0.1:2223", "127.0.0.1:2224"]}
    for task, is_chief in ((("chief", 0), True), (("worker", 0), False), (("worker", 1), False)):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": task[0], "index": task[1]}}))
        parsed = cluster_from_environment()
        assert (parsed.workers, parsed.has_chief, parsed.is_chief) == (3, True, is_chief)
    monkeypatch.setenv(
        "TF_CONFIG",
        json.dumps(
            {"cluster": {"worker": ["127.0.0.1:2223", "127.0.0.1:2224"]}, "task": {"type": "worker", "index": 0}}
        ),
    )
    assert cluster_from_environment().is_chief
    monkeypatch.delenv("TF_CONFIG")
    assert cluster_from_environment().workers == 1
