"""The DVC pipeline for real: dvc repro and dvc exp run in a temporary git repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import BIN, ROOT

from otrain.config import validate_params

TINY = {
    "simulate": {"n_true": 120, "n_false": 120, "n_night": 30, "cutout_size": 32},
    "convert": {"cutout_size": -1},
    "train": {"epochs": 2},
    "grad_cam": {"n_random": 2},
    "optimise_dataset_size": {"epochs": 1},
}


def test_params_yaml_is_valid() -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    validated = validate_params(params)
    assert set(validated) == set(params)
    assert validated["train"]["model_name"] == "survey"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train": {"epoch": 3}}, "train.epoch: Extra inputs are not permitted"),
        ({"train": {"epochs": 0}}, "train.epochs: must be a positive whole number"),
        ({"convert": {"frac_true": 1.5}}, "convert.frac_true: must be a fraction"),
        ({"trian": {}}, "unknown section(s) trian"),
        ({"convert": {"cube": "other"}}, "convert.cube: Extra inputs are not permitted"),
    ],
)
def test_params_yaml_mistakes_are_caught(change: dict, message: str) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in change.items():
        params.setdefault(section, {}).update(values)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_params(params)


def make_repo(folder: Path) -> Path:
    """A git repository holding the pipeline, with tiny parameters."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dvc.yaml", folder / "dvc.yaml")
    shutil.copytree(ROOT / ".dvc", folder / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "pipeline"]):
        subprocess.run(command, cwd=folder, check=True, env=git_env())
    return folder


def git_env() -> dict[str, str]:
    return {
        **os.environ,
        "GIT_AUTHOR_NAME": "otrain tests",
        "GIT_AUTHOR_EMAIL": "tests@otrain.invalid",
        "GIT_COMMITTER_NAME": "otrain tests",
        "GIT_COMMITTER_EMAIL": "tests@otrain.invalid",
    }


def dvc(folder: Path, uri: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**git_env(), "PATH": f"{BIN}:{os.environ['PATH']}", "MLFLOW_TRACKING_URI": uri, "OTRAIN_PROGRESS": "0"}
    result = subprocess.run([str(BIN / "dvc"), *args], cwd=folder, capture_output=True, text=True, env=env)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = make_repo(tmp_path_factory.mktemp("pipeline"))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    dvc(folder, uri, "repro")
    return folder, uri


@pytest.mark.slow
def test_repro_produces_every_output(pipeline: tuple[Path, str]) -> None:
    folder, _ = pipeline
    model = folder / "models" / "CNN_training" / "survey"
    for path in (
        model / "survey.keras",
        model / "metrics.json",
        folder / "reports" / "diagnostics" / "diagnostics.json",
        folder / "reports" / "plots" / "calibration.png",
        folder / "reports" / "grad_cam" / "TP_summary.png",
        folder / "reports" / "infer_results.dat",
        folder / "reports" / "CheckInfer" / "checkinfer_summary.json",
        folder / "reports" / "promotion.json",
        folder / "reports" / "dataset_size" / "size_study_dataset_size.csv",
        folder / "dvc.lock",
    ):
        assert path.is_file(), path


@pytest.mark.slow
def test_one_mlflow_run_holds_every_stage(pipeline: tuple[Path, str]) -> None:
    from mlflow.tracking import MlflowClient

    folder, uri = pipeline
    run_id = json.loads((folder / "models" / "CNN_training" / "survey" / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert {"test_accuracy", "diagnostics_mcc", "plot_results_best_threshold", "infer_scored"} <= set(run.data.metrics)
    assert any(key.startswith("checkinfer_") for key in run.data.metrics)
    lock = yaml.safe_load((folder / "dvc.lock").read_text())
    cube_md5 = next(
        entry["md5"] for entry in lock["stages"]["convert"]["outs"] if entry["path"] == "data/datacube/survey.npz"
    )
    assert run.data.tags["dvc.data_md5"] == cube_md5
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=True)
    assert run.data.tags["git.commit"] == head.stdout.strip()
    folders = {item.path for item in client.list_artifacts(run_id)}
    assert {"model", "training", "diagnostics", "plot_results", "grad_cam", "infer", "checkinfer"} <= folders
    version = client.get_model_version_by_alias("otrain-cnn", "champion")
    assert version.run_id == run_id


@pytest.mark.slow
def test_metrics_plots_and_nothing_to_redo(pipeline: tuple[Path, str]) -> None:
    folder, uri = pipeline
    metrics = json.loads(dvc(folder, uri, "metrics", "show", "--json").stdout)
    flat = json.dumps(metrics)
    assert "diagnostics.json" in flat
    assert "accuracy" in flat
    again = dvc(folder, uri, "repro")
    assert "Data and pipelines are up to date" in again.stdout
    dvc(folder, uri, "plots", "show", "-o", str(folder / "plots_html"))
    page = (folder / "plots_html" / "index.html").read_text()
    assert "https://" not in page  # image plots only: renders without internet access


@pytest.mark.slow
def test_experiment_with_a_changed_parameter(pipeline: tuple[Path, str]) -> None:
    folder, uri = pipeline
    dvc(folder, uri, "exp", "run", "-S", "train.epochs=1", "-S", "optimise_dataset_size.epochs=1")
    shown = dvc(folder, uri, "exp", "show", "--json").stdout
    assert '"epochs": 1' in shown.replace(" ", "").replace('"epochs":1', '"epochs": 1')
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("otrain").experiment_id], "tags.`dvc.exp_name` != ''"
    )
    assert runs, "the experiment's run carries its DVC experiment name"


@pytest.mark.slow
def test_killed_training_then_repro_finishes_cleanly(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    folder = make_repo(tmp_path / "killed")
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["train"]["epochs"] = 30
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    env = {**git_env(), "PATH": f"{BIN}:{os.environ['PATH']}", "MLFLOW_TRACKING_URI": uri, "OTRAIN_PROGRESS": "0"}
    process = subprocess.Popen(
        [str(BIN / "dvc"), "repro", "train"],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 300
    for line in process.stdout:
        if line.startswith("epoch 2/30") or time.monotonic() > deadline:
            break
    os.killpg(process.pid, signal.SIGINT)
    process.communicate(timeout=120)
    assert not (folder / "models" / "CNN_training" / "survey" / "survey.keras").exists()
    params["train"]["epochs"] = 2
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(folder, uri, "repro", "train")
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("otrain").experiment_id])
    assert {run.info.status for run in runs} <= {"FINISHED", "KILLED"}
    assert "FINISHED" in {run.info.status for run in runs}


@pytest.mark.slow
def test_repro_again_gives_the_same_metrics(pipeline: tuple[Path, str]) -> None:
    folder, uri = pipeline
    metrics_file = folder / "models" / "CNN_training" / "survey" / "metrics.json"
    before = json.loads(metrics_file.read_text())
    dvc(folder, uri, "repro", "--force", "--single-item", "train")
    assert json.loads(metrics_file.read_text()) == before


@pytest.mark.slow
def test_make_retrain_pulls_trains_pushes_and_summarises(tmp_path: Path) -> None:
    """The retrain workflow's job, `make retrain`, against a real (local folder) DVC remote, with
    no git identity configured (as in a runner's container)."""
    folder = make_repo(tmp_path / "retrain")
    remote, summary = tmp_path / "remote", tmp_path / "summary.md"
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("GIT_")},
        "HOME": str(home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
        "OTRAIN_PROGRESS": "0",
    }
    command = [
        "make", "--no-print-directory", "-f", str(ROOT / "Makefile"), "-C", str(folder), "retrain",
        f"VENV={BIN.parent}", "SETUP=", f"DVC_REMOTE_URL={remote}", f"SUMMARY={summary}",
    ]  # fmt: skip
    # PARAMS comes through the environment, as in the workflow (on make's command line, make
    # itself would expand $(...) in it).
    env["PARAMS"] = "train.epochs=1 grad_cam.n_random=1"
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    params = yaml.safe_load((folder / "params.yaml").read_text())
    assert params["train"]["epochs"] == 1
    assert params["grad_cam"]["n_random"] == 1
    assert json.loads((folder / "models/CNN_training/survey/metrics.json").read_text())["epochs_run"] == 1
    report = summary.read_text()
    assert "| mcc |" in report
    assert "| champion before | none | n/a |" in report
    assert "is now the champion" in report
    assert "Registered model: otrain-cnn version 1 is now the champion" in result.stdout
    assert not (folder / ".dvc" / "config.local").exists(), "the remote and its credentials are removed after the run"
    assert (remote / "files" / "md5").is_dir(), "the outputs were pushed"

    # A second retraining, with another override, on a clone that lost its cache and its cube:
    # the cube comes back from the remote (convert does not run again), and the new model meets
    # the champion, which the summary compares it with.
    shutil.rmtree(folder / ".dvc" / "cache")
    (folder / "data" / "datacube" / "survey.npz").unlink()
    summary.unlink()
    env["PARAMS"] = "train.epochs=2"
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = summary.read_text()
    assert "Stage 'convert' didn't change, skipping" in result.stdout
    assert "Running stage 'train'" in result.stdout
    assert "| new | 2 |" in report
    assert re.search(r"\| champion before \| 1 \| -?\d\.\d{4} \|", report)

    # Overrides are data, never shell code.
    env["PARAMS"] = "train.epochs=3 $(touch${IFS}injected) `touch${IFS}injected` $(shell touch injected)"
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert result.returncode != 0
    assert not (folder / "injected").exists()
    assert "-S $(touch${IFS}injected)" in result.stdout, "the overrides reach DVC as they were given"
