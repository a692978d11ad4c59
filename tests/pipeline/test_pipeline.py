"""The DVC pipeline for real: dvc repro and dvc exp run in a temporary git repository."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import ascii as astropy_ascii
from conftest import BIN, ROOT
from helpers import wait_for_epochs

from otrain.options import validate_params

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


def test_params_yaml_promotes_by_rank_not_at_a_fixed_threshold() -> None:
    """The gate's default metric needs no threshold; a thresholded one uses each model's card threshold."""
    from otrain.judge.gate import THRESHOLD_FREE

    promote = yaml.safe_load((ROOT / "params.yaml").read_text())["promote"]
    assert "threshold" not in promote
    assert promote["metric"] in THRESHOLD_FREE
    assert validate_params({"promote": promote})["promote"]["threshold"] is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train": {"epoch": 3}}, "train.epoch: Extra inputs are not permitted"),
        ({"train": {"epochs": 0}}, "train.epochs: must be a positive whole number"),
        ({"convert": {"frac_true": 1.5}}, "convert.frac_true: must be a fraction"),
        ({"trian": {}}, "unknown section(s) trian"),
        ({"alerts": {"night": " "}}, "alerts.night: must be a path"),
        ({"alerts": {"night": "n.tar.gz", "nite": "x"}}, "alerts.nite: Extra inputs are not permitted"),
        ({"convert": {"cube": "other"}}, "convert.cube: Extra inputs are not permitted"),
        ({"train": {"frac": 0.6, "test_frac": 0.6}}, "train.frac, train.test_frac: together must leave data"),
        ({"train": {"mixed_precision": True, "normalisation": "none"}}, "train.mixed_precision: needs"),
        ({"checkinfer": {"maglim": [21, 18]}}, "checkinfer.maglim: give one or more values in increasing order"),
        ({"train": {"learning_rate": float("nan")}}, "train.learning_rate: Input should be a finite number"),
        ({"train": {"architecture": "resnet"}}, "train.architecture: Input should be 'otrain' or 'vgg'"),
    ],
)
def test_params_yaml_mistakes_are_caught(change: dict, message: str) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in change.items():
        params.setdefault(section, {}).update(values)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_params(params)


def make_repo(folder: Path) -> Path:
    """A git repository holding the pipeline and the otrain code its stages depend on, with tiny parameters."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dvc.yaml", folder / "dvc.yaml")
    shutil.copytree(ROOT / ".dvc", folder / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    shutil.copytree(ROOT / "otrain", folder / "otrain", ignore=shutil.ignore_patterns("__pycache__"))
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
    # Files, not pipes: `dvc queue start` leaves daemon children holding its output, and reading a
    # pipe to its end would wait for them (a whole suite hung on it once, the queue long finished).
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        done = subprocess.run([str(BIN / "dvc"), *args], cwd=folder, stdout=out, stderr=err, text=True, env=env)
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(done.args, done.returncode, out.read(), err.read())
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
        folder / "reports" / "infer_results.dat",
        folder / "reports" / "vetting" / "index.html",
        folder / "reports" / "vetting" / "thumbs" / "sheet_0000.png",
        folder / "reports" / "CheckInfer" / "checkinfer_summary.json",
        folder / "reports" / "promotion.json",
        folder / "reports" / "dataset_size" / "size_study_dataset_size.csv",
        folder / "dvc.lock",
    ):
        assert path.is_file(), path
    # A grid per outcome that occurred (which ones depends on what the tiny model learnt).
    assert list((folder / "reports" / "grad_cam").glob("[TF][PN]_summary.png"))


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
    assert {"model", "training", "diagnostics", "plot_results", "grad_cam", "infer", "checkinfer", "report"} <= folders
    page = [item.path for item in client.list_artifacts(run_id, "report/vetting")]
    assert "report/vetting/index.html" in page
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


def experiment_rows(shown: list[dict]) -> dict[str, dict]:
    """``dvc exp show --json``: experiment name -> its params and metrics (baselines included)."""
    rows = {}
    for baseline in shown:
        for row in [baseline, *(exp for experiment in baseline.get("experiments") or [] for exp in experiment["revs"])]:
            data = row.get("data") or {}
            rows[row.get("name") or row["rev"]] = data
    return rows


def param(data: dict, section: str, key: str) -> object:
    return data["params"]["params.yaml"]["data"][section][key]


@pytest.mark.slow
def test_experiment_with_a_changed_parameter(pipeline: tuple[Path, str]) -> None:
    folder, uri = pipeline
    baseline = yaml.safe_load((folder / "params.yaml").read_text())["train"]["epochs"]
    assert baseline != 1
    overrides = ("-S", "train.epochs=1", "-S", "optimise_dataset_size.epochs=1", "-S", "train.target_fnr=0.05")
    run = dvc(folder, uri, "exp", "run", *overrides)
    name = re.search(r"Ran experiment\(s\): (\S+)", run.stdout)
    assert name, run.stdout
    rows = experiment_rows(json.loads(dvc(folder, uri, "exp", "show", "--json").stdout))
    assert param(rows[name[1]], "train", "epochs") == 1
    assert param(rows["workspace"], "train", "epochs") == 1
    # The threshold chosen for the target reaches the card, and the night is decided with it.
    card = json.loads((folder / "models" / "CNN_training" / "survey" / "survey.keras.card.json").read_text())
    assert card["threshold_rule"]["method"] == "target_fnr"
    table = astropy_ascii.read(folder / "reports" / "infer_results.dat", format="commented_header")
    assert np.array_equal(np.asarray(table["real"]), (np.asarray(table["label1"]) > card["threshold"]).astype(int))
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("otrain").experiment_id], f"tags.`dvc.exp_name` = '{name[1]}'"
    )
    assert len(runs) == 1, "the experiment's run carries its DVC experiment name"
    assert runs[0].data.params["epochs"] == "1"


@pytest.mark.slow
def test_killed_training_then_repro_finishes_cleanly(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    folder = make_repo(tmp_path / "killed")
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["train"]["epochs"] = 1000
    params["train"]["patience"] = 0
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    env = {**git_env(), "PATH": f"{BIN}:{os.environ['PATH']}", "MLFLOW_TRACKING_URI": uri, "OTRAIN_PROGRESS": "0"}
    process = subprocess.Popen(
        [str(BIN / "dvc"), "repro", "train"],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    wait_for_epochs(folder / "models" / "CNN_training" / "survey", 2, process, seconds=1800)
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait() != 0
    assert not (folder / "models" / "CNN_training" / "survey" / "survey.keras").exists()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("otrain").experiment_id
    assert [run.info.status for run in client.search_runs([experiment])] == ["KILLED"]
    params["train"]["epochs"] = 2
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(folder, uri, "repro", "train")
    assert sorted(run.info.status for run in client.search_runs([experiment])) == ["FINISHED", "KILLED"]
    assert (folder / "models" / "CNN_training" / "survey" / "survey.keras").is_file()


@pytest.mark.slow
def test_repro_train_with_augment_writes_the_twin(tmp_path: Path) -> None:
    """Issue 23: with train.augment: true (and robust scaling, the pipeline's default) the twin failed its
    parity check, and dvc repro train stopped with "output survey.onnx does not exist"."""
    from otrain.score.backends import choose_backend

    folder = make_repo(tmp_path / "augment")
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["simulate"].update(n_true=60, n_false=60, n_night=0)
    params["train"].update(augment=True, epochs=1)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    dvc(folder, uri, "repro", "train")
    model = folder / "models" / "CNN_training" / "survey"
    card = json.loads((model / "survey.keras.card.json").read_text())
    assert card["params"]["augment"] is True
    assert card["normalisation"] == "robust"
    assert "absent" not in card["onnx"], card["onnx"]["error"]
    cutouts = len(np.load(folder / "data" / "datacube" / "survey.npz")["labels"])
    assert card["onnx"]["parity"]["cutouts"] == cutouts  # every cutout the training saw
    parity = card["onnx"]["parity"]
    assert parity["decisions_changed"] <= parity["decisions_within_allowance"]  # ties at the threshold only
    chosen = choose_backend(model / "survey.keras", "auto")
    assert (chosen.backend, chosen.path, chosen.note) == ("onnx", model / "survey.onnx", "")


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


# ---------------------------------------------------------------------------------------------
# params.yaml is checked before DVC touches any output.


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train": {"epoch": 3}}, "params.yaml: train.epoch: Extra inputs are not permitted"),
        ({"train": {"epochs": "many"}}, "params.yaml: train.epochs: Input should be a valid integer"),
        ({"train": {"frac": 0.6, "test_frac": 0.6}}, "params.yaml: train.frac, train.test_frac: together must"),
    ],
    ids=["unknown-key", "wrong-type", "fractions"],
)
def test_bad_params_stop_repro_before_any_output_is_removed(
    pipeline: tuple[Path, str], change: dict, message: str
) -> None:
    folder, uri = pipeline
    model = folder / "models" / "CNN_training" / "survey"
    kept = {
        path: path.read_bytes()
        for path in (model / "metrics.json", model / "mlflow_run.json", model / "history.csv", model / "survey.keras")
    }
    original = (folder / "params.yaml").read_text()
    params = yaml.safe_load(original)
    for section, values in change.items():
        params[section].update(values)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        result = dvc(folder, uri, "repro", check=False)
        assert result.returncode != 0
        assert message in result.stderr + result.stdout
        assert "Running stage 'train'" not in result.stdout
        for path, content in kept.items():
            assert path.read_bytes() == content, f"{path} was removed or changed"
    finally:
        (folder / "params.yaml").write_text(original)
    again = dvc(folder, uri, "repro")
    assert "Running stage 'train'" not in again.stdout, "the constant stamp does not make every stage run again"


# ---------------------------------------------------------------------------------------------
# The pipeline notices code changes.


def module_file(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def otrain_imports(path: Path) -> set[str]:
    """The otrain modules a file imports, anywhere in it (functions import lazily)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "otrain"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "otrain":
            found.add(node.module)
            found |= {
                f"{node.module}.{alias.name}" for alias in node.names if module_file(f"{node.module}.{alias.name}")
            }
    return found


def code_of(module: str) -> set[str]:
    """The otrain code a module runs, as DVC dependencies: the subpackages (rooms) of its imports,
    their imports and the packages', with the entry points and top-level modules as files."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        parts = todo.pop().split(".")
        for end in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:end]))
            if path is not None and path not in seen:
                seen.add(path)
                todo += sorted(otrain_imports(path))
    return {dependency(path.relative_to(ROOT).as_posix()) for path in seen}


def dependency(file: str) -> str:
    """A source file as a stage dependency: a top-level file as itself, anything else as its
    subpackage (its package data included)."""
    parts = file.split("/")
    return file if len(parts) == 2 else "/".join(parts[:2])


COMMAND_MODULES = {
    "otrain-check-params": "otrain.cli.check_params",
    "otrain-simulate": "otrain.cli.simulate",
    "otrain-convert": "otrain.cli.convert",
    "otrain-train": "otrain.cli.train",
    "otrain-diagnostics": "otrain.cli.diagnostics",
    "otrain-plot-results": "otrain.cli.plot_results",
    "otrain-grad-cam": "otrain.cli.grad_cam",
    "otrain-infer": "otrain.cli.infer",
    "otrain-checkinfer": "otrain.cli.checkinfer",
    "otrain-promote": "otrain.cli.promote",
    "otrain-optimise-dataset-size": "otrain.cli.optimise_dataset_size",
    "otrain-report": "otrain.cli.report",
}


def test_every_stage_depends_on_exactly_the_code_it_runs() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert next(iter(stages)) == "validate_params"
    for name, stage in stages.items():
        command = stage["cmd"].split()[0]
        deps = set(stage["deps"])
        assert {dep for dep in deps if dep.startswith("otrain/")} == code_of(COMMAND_MODULES[command]), name
        if name != "validate_params":
            assert "reports/params_checked.txt" in deps, f"{name} must wait for the parameters check"


def changes(folder: Path, uri: str) -> set[tuple[str, str, str]]:
    """``dvc status`` as (stage, path, state) triples."""
    found = set()
    for stage, entries in json.loads(dvc(folder, uri, "status", "--json").stdout).items():
        for entry in entries:
            if isinstance(entry, dict):
                found |= {(stage, path, state) for files in entry.values() for path, state in files.items()}
            else:
                found.add((stage, "", str(entry)))
    return found


@pytest.mark.slow
def test_a_code_change_marks_the_stages_that_run_it(pipeline: tuple[Path, str], tmp_path: Path) -> None:
    folder, uri = pipeline
    scratch = tmp_path / "clone"
    shutil.copytree(folder, scratch, ignore=shutil.ignore_patterns("mlflow.db", "mlruns", "plots_html"))
    before = changes(scratch, uri)
    # A stage depends on the subpackages its command runs: a change to one of their files reruns it.
    changed_by = {
        "otrain/train/training.py": {"train", "optimise_dataset_size"},
        "otrain/simulate/physics.py": {"simulate"},
        "otrain/judge/checkinfer.py": {"diagnostics", "plot_results", "grad_cam", "checkinfer", "report", "promote"},
        "otrain/metrics/plots.py": {"train", "diagnostics", "plot_results", "grad_cam", "checkinfer"}
        | {"optimise_dataset_size", "report", "promote", "infer", "infer_alerts"},
        "otrain/score/scoring.py": {"train", "diagnostics", "plot_results", "grad_cam", "promote", "infer"}
        | {"optimise_dataset_size", "report", "infer_alerts"},
        "otrain/vet/templates/vetting.html": {"report"},
    }
    for module, stages in changed_by.items():
        original = (scratch / module).read_text()
        (scratch / module).write_text(original + "\n# a change\n")
        dependency = "/".join(module.split("/")[:2])
        assert changes(scratch, uri) - before == {(stage, dependency, "modified") for stage in stages}, module
        (scratch / module).write_text(original)
    assert changes(scratch, uri) == before


@pytest.mark.slow
def test_the_committed_lock_metrics_and_plots_are_current(tmp_path: Path) -> None:
    """On a clone of the repository, only the data (in no cache here) is missing: no stage has changed
    code, parameters, command or committed metrics since dvc.lock was written."""
    clone = tmp_path / "clone"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, tracked):
        source = ROOT / os.fsdecode(name)
        if source.is_file():
            (clone / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / os.fsdecode(name))
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "clone"]):
        subprocess.run(command, cwd=clone, check=True, env=git_env())
    status = json.loads(dvc(clone, f"sqlite:///{tmp_path / 'unused.db'}", "status", "--json").stdout)
    stale = {
        stage: change
        for stage, changes in status.items()
        for change in changes
        if not isinstance(change, dict)
        or any(state not in ("deleted", "not in cache") for files in change.values() for state in files.values())
    }
    assert not stale, f"dvc.lock is out of date (run make demo and commit dvc.lock and the metrics): {stale}"


# ---------------------------------------------------------------------------------------------
# Queued experiments, two at a time, with the default (relative) store.


def promoted(version: object) -> bool:
    reason = version.tags["promotion"]  # type: ignore[attr-defined]
    return reason == "no champion yet" or " >= champion v" in reason


#: What `dvc queue status` says of a task.
TASK_STATUSES = ("Queued", "Running", "Success", "Failed")


def wait_for_the_queue(folder: Path, uri: str, deadline: float = 2400.0) -> list[str]:
    """Poll `dvc queue status` until no task is queued or running; return the tasks' statuses.

    The tasks' ends are watched, not the workers': a worker whose monitor decided to shut down
    while its task still ran may never exit (a race in DVC's task queue, treeverse/dvc#10398),
    and `dvc exp run --run-all` waits for the workers.
    """
    give_up = time.monotonic() + deadline
    while True:
        lines = dvc(folder, uri, "queue", "status").stdout.splitlines()
        statuses = [line.split()[-1] for line in lines if line.split() and line.split()[-1] in TASK_STATUSES]
        if statuses and not {"Queued", "Running"} & set(statuses):
            return statuses
        assert time.monotonic() < give_up, f"the queue did not finish within {deadline:.0f} s: {lines}"
        time.sleep(5)


def stop_queue_workers(folder: Path, uri: str) -> None:
    """Stop the queue's workers: DVC's own stop, then, after a minute, any worker left running."""
    dvc(folder, uri, "queue", "stop", check=False)
    pids = []
    for pid_file in (folder / ".dvc" / "tmp" / "exps" / "celery").glob("*.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip())
            if b"queue-worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
    give_up = time.monotonic() + 60
    while pids and time.monotonic() < give_up:
        pids = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        time.sleep(1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_queued_experiments_log_into_the_main_store_and_promote_in_turn(pipeline: tuple[Path, str]) -> None:
    from mlflow.tracking import MlflowClient

    folder, uri = pipeline
    git = {"cwd": folder, "check": True, "env": git_env(), "capture_output": True}
    subprocess.run(["git", "add", "-A", ".", ":!mlflow.db", ":!mlruns", ":!plots_html"], **git)
    subprocess.run(["git", "commit", "-qm", "the pipeline's results"], **git)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("otrain").experiment_id
    tagged = "tags.`dvc.exp_name` != ''"
    runs_before = {run.info.run_id for run in client.search_runs([experiment], tagged)}
    versions_before = {version.version for version in client.search_model_versions("name='otrain-cnn'")}
    champion = client.get_model_version_by_alias("otrain-cnn", "champion").version
    relative = "sqlite:///mlflow.db"  # as `make demo` sets it: relative to the repository
    for epochs in ("3", "4"):  # neither the baseline's 2 nor an earlier test's 1: both trainings run
        # A tolerance of 1 lets every gate promote: so the second must compare with the first.
        overrides = ("-S", f"train.epochs={epochs}", "-S", "grad_cam.n_random=1", "-S", "promote.tolerance=1")
        dvc(folder, relative, "exp", "run", "--queue", *overrides)
    try:
        dvc(folder, relative, "queue", "start", "--jobs", "2")
        statuses = wait_for_the_queue(folder, relative)
        outputs = sorted((folder / ".dvc" / "tmp" / "exps" / "run").glob("*/*.out"))
        assert statuses == ["Success", "Success"], "\n".join(path.read_text()[-2000:] for path in outputs)
    finally:
        stop_queue_workers(folder, relative)
    runs = [run for run in client.search_runs([experiment], tagged) if run.info.run_id not in runs_before]
    assert len(runs) == 2, "both experiments' runs are in the repository's store"
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert {run.data.params["epochs"] for run in runs} == {"3", "4"}
    assert len({run.data.tags["dvc.exp_name"] for run in runs}) == 2
    versions = sorted(
        (v for v in client.search_model_versions("name='otrain-cnn'") if v.version not in versions_before),
        key=lambda version: int(version.version),
    )
    assert sorted(v.run_id for v in versions) == sorted(run.info.run_id for run in runs)
    # The gate ran once at a time, in the order of registration: each compared with the champion
    # the one before it left, and the alias is where the last decision put it.
    for version in versions:
        assert f"champion v{champion} " in version.tags["promotion"], (champion, version.tags["promotion"])
        assert promoted(version), version.tags["promotion"]
        champion = version.version
    assert client.get_model_version_by_alias("otrain-cnn", "champion").version == versions[-1].version
