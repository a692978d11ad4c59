"""otrain-train when things go wrong: interruptions at every step, two runs at once, divergence,
--overwrite beside a user's files; and every training option trained once. Real TensorFlow on a
tiny cube; faults are injected by making one real write fail as a kill would."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import BIN, call_main, files_under, train
from helpers import epochs_printed, history_epochs, wait_for_epochs
from numpy.testing import assert_allclose, assert_array_equal

from otrain.cli.train import main as train_main
from otrain.data.datacube import Datacube
from otrain.score.backends import choose_backend

pytestmark = pytest.mark.slow

#: Every file a finished training leaves in its folder.
OUTPUTS = (
    "m.keras",
    "m.keras.card.json",
    "validation_set/datacube/cube_validation.npz",
    "test_set/datacube/cube_test.npz",
    "history.csv",
    "m_loss_vs_epochs.png",
    "m_accuracy_vs_epochs.png",
    "metrics.json",
)


def folder_of(root: Path, name: str = "m") -> Path:
    return root / "CNN_training" / name


# ---------------------------------------------------------------------------------------------
# --overwrite and the user's files.


def test_overwrite_replaces_only_the_files_a_training_writes(workspace: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    folder = folder_of(root)
    assert train(workspace, "m.h5", "--epochs", "1", "--no-tracking", models=str(root)) == 0
    (folder / "notes.txt").write_text("my notes")
    (folder / "mlflow_run.json").write_text('{"run_id": "stale", "experiment_id": "0", "tracking_uri": "x"}')
    (folder / "extra").mkdir()
    (folder / "extra" / "figure.pdf").write_text("my figure")
    assert train(workspace, "m", "--epochs", "1", "--no-tracking", "--overwrite", models=str(root)) == 0
    assert (folder / "notes.txt").read_text() == "my notes"
    assert (folder / "extra" / "figure.pdf").read_text() == "my figure"
    for name in OUTPUTS:
        assert (folder / name).is_file(), name
    # The earlier training's model in the other format, and its run file, are a training's files.
    assert not (folder / "m.h5").exists()
    assert not (folder / "m.h5.card.json").exists()
    assert not (folder / "mlflow_run.json").exists()
    assert not (folder / ".checkpoint").exists()


def test_a_cube_inside_the_training_folder_is_refused(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "models"
    folder = folder_of(root)
    folder.mkdir(parents=True)
    inside = folder / "test_set" / "datacube" / "cube_test.npz"
    inside.parent.mkdir(parents=True)
    inside.write_bytes((workspace / "datacube" / "cube.npz").read_bytes())
    for extra in ((), ("--overwrite",)):
        status = call_main(
            train_main, "--cube", inside, "--model-path", root, "--model-name", "m", "--no-tracking", *extra
        )
        assert status == 2
        assert "--cube: " in capsys.readouterr().err
        assert inside.read_bytes() == (workspace / "datacube" / "cube.npz").read_bytes()


# ---------------------------------------------------------------------------------------------
# Two trainings of one folder, and a training killed outright.


def test_a_second_training_of_the_same_folder_is_refused_and_a_killed_ones_lock_is_taken_over(
    workspace: Path, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    folder = folder_of(root)
    base = [
        str(BIN / "otrain-train"),
        *("--cube", str(workspace / "datacube" / "cube.npz"), "--model-path", str(root), "--model-name", "m"),
        *("--normalisation", "robust", "--patience", "0", "--no-tracking"),
    ]
    env = {**os.environ, "OTRAIN_PROGRESS": "0"}
    first = subprocess.Popen(
        [*base, "--epochs", "1000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        wait_for_epochs(folder, 1, first)
        for extra in ((), ("--resume",), ("--overwrite",)):
            second = subprocess.run([*base, "--epochs", "2", *extra], capture_output=True, text=True, env=env)
            assert second.returncode == 1, (extra, second.stderr)
            lines = second.stderr.strip().splitlines()
            assert lines[-1].startswith(
                f"otrain-train: error: the training folder {folder} is in use by PID {first.pid}"
            ), (extra, lines)
            assert "Traceback" not in second.stderr
        assert first.poll() is None, "the running training was not disturbed"
    finally:
        first.kill()  # SIGKILL: the lock file stays, with a dead owner
        first.communicate()
    assert (folder / ".otrain-train.lock").is_file()
    done = json.loads((folder / ".checkpoint" / "latest.json").read_text())["epochs_done"]
    resumed = subprocess.run([*base, "--epochs", str(done + 1), "--resume"], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"took over the lock of PID {first.pid}" in resumed.stderr
    assert epochs_printed(resumed.stdout) == [done + 1]
    assert history_epochs(folder) == list(range(1, done + 2))
    assert not (folder / ".otrain-train.lock").exists()


DIES_WHILE_WRITING = """
import os, sys
from pathlib import Path
import keras
real_save = keras.Model.save_weights
calls = []
def dies_while_writing(model, path, *args, **kwargs):
    calls.append(path)
    real_save(model, path, *args, **kwargs)
    if len(calls) == 2:  # the second epoch's checkpoint: half of it is on disk when the process dies
        Path(path).write_bytes(Path(path).read_bytes()[:1000])
        os._exit(137)
keras.Model.save_weights = dies_while_writing
from otrain.cli.train import main
main(sys.argv[1:])
"""


def test_a_checkpoint_write_cut_short_leaves_the_previous_checkpoint_whole(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The process dies (no clean-up at all, as after SIGKILL) while the second epoch's weights are
    written; --resume continues from the first epoch, whose checkpoint is whole."""
    root = tmp_path / "models"
    folder = folder_of(root)
    args = [
        *("--cube", str(workspace / "datacube" / "cube.npz"), "--model-path", str(root), "--model-name", "m"),
        *("--epochs", "3", "--no-tracking", "--normalisation", "robust", "--patience", "0"),
    ]
    killed = subprocess.run([sys.executable, "-c", DIES_WHILE_WRITING, *args], capture_output=True, text=True)
    assert killed.returncode == 137, killed.stderr
    pointer = json.loads((folder / ".checkpoint" / "latest.json").read_text())
    assert (pointer["epochs_done"], pointer["state"]) == (1, "epoch-0001")
    half_written = list((folder / ".checkpoint" / "epoch-0002").glob(".latest.weights.h5.*.partial/*"))
    assert len(half_written) == 1, "the killed write left its half file in its staging folder only"
    assert not (folder / ".checkpoint" / "epoch-0002" / "latest.weights.h5").exists()
    assert (folder / ".otrain-train.lock").is_file(), "the lock file of the dead process is left"
    assert train(workspace, "m", "--epochs", "3", "--no-tracking", "--resume", models=str(root)) == 0
    out = capsys.readouterr().out
    assert "epoch 1 of 3 had finished" in out
    assert epochs_printed(out) == [2, 3]
    assert history_epochs(folder) == [1, 2, 3]
    assert not (folder / ".checkpoint").exists()


def test_a_damaged_checkpoint_is_named_in_one_line(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import otrain.train.publish

    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    root = tmp_path / "models"
    folder = folder_of(root)
    monkeypatch.setattr(otrain.train.publish, "mark_complete", interrupt)  # where a training ends (finish)
    assert train(workspace, "m", "--epochs", "1", "--no-tracking", models=str(root)) == 130
    monkeypatch.undo()
    weights = folder / ".checkpoint" / "epoch-0001" / "latest.weights.h5"
    weights.write_bytes(weights.read_bytes()[:2000])
    capsys.readouterr()
    assert train(workspace, "m", "--epochs", "2", "--no-tracking", "--resume", models=str(root)) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1] == (
        f"otrain-train: error: {weights}: checkpoint cannot be read (corrupt or truncated); "
        "pass --overwrite to start again"
    )
    (folder / ".checkpoint" / "latest.json").write_text('{"epochs_done": 1, "state"')
    assert train(workspace, "m", "--epochs", "2", "--no-tracking", "--resume", models=str(root)) == 1
    assert "latest.json: the checkpoint cannot be read" in capsys.readouterr().err
    assert not (folder / "m.keras").exists()


# ---------------------------------------------------------------------------------------------
# Ctrl-C while the final files are written.


def test_interrupted_while_writing_the_outputs_leaves_none_and_resume_does_not_retrain(
    workspace: Path,
    tmp_path: Path,
    tracking_uri: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from mlflow.tracking import MlflowClient

    import otrain.train.publish

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    root = tmp_path / "models"
    folder = folder_of(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setattr(otrain.train.publish, "write_card", interrupted)  # after the model, cubes and history
    assert train(workspace, "m", "--epochs", "2", models=str(root)) == 130
    monkeypatch.undo()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    visible = {path.relative_to(folder).as_posix() for path in files_under(folder)}
    assert not {name for name in visible if not name.startswith(".")}, visible
    run_id = json.loads((folder / ".checkpoint" / "mlflow_run.json").read_text())["run_id"]
    capsys.readouterr()
    # Other options or another format than the interrupted training's: refused, nothing moved.
    assert train(workspace, "m", "--epochs", "2", "--resume", "--seed", "7", models=str(root)) == 2
    assert "--resume: the interrupted training used other values of seed" in capsys.readouterr().err
    assert train(workspace, "m.h5", "--epochs", "2", "--resume", models=str(root)) == 2
    assert "other values of model_file" in capsys.readouterr().err
    assert not (folder / "m.keras").exists()
    assert train(workspace, "m", "--epochs", "2", "--resume", models=str(root)) == 0
    out = capsys.readouterr().out
    assert "epoch 2 of 2 had finished" in out
    assert epochs_printed(out) == []  # nothing is trained again
    for name in (*OUTPUTS, "mlflow_run.json"):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "mlflow_run.json").read_text())["run_id"] == run_id
    assert MlflowClient(tracking_uri).get_run(run_id).info.status == "FINISHED"


def test_interrupted_while_moving_the_outputs_in_is_finished_by_resume(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "models"
    folder = folder_of(root)
    real_replace = os.replace
    moved = []

    def dies_after_three(source: object, target: object) -> None:
        staged = f"{os.sep}.checkpoint{os.sep}final{os.sep}"
        if staged in str(source) and staged not in str(target):  # publishing, not staging
            if len(moved) == 3:
                raise KeyboardInterrupt
            moved.append(target)
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", dies_after_three)
    assert train(workspace, "m", "--epochs", "1", "--no-tracking", models=str(root)) == 130
    monkeypatch.undo()
    assert len(moved) == 3
    capsys.readouterr()
    assert train(workspace, "m", "--epochs", "1", "--no-tracking", "--resume", models=str(root)) == 0
    out = capsys.readouterr().out
    assert "the interrupted training had finished; moving its outputs" in out
    assert epochs_printed(out) == []
    for name in OUTPUTS:
        assert (folder / name).is_file(), name
    assert not (folder / ".checkpoint").exists()


# ---------------------------------------------------------------------------------------------
# Divergence.


def test_a_diverging_training_stops_with_one_line(
    workspace: Path,
    tmp_path: Path,
    tracking_uri: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from mlflow.tracking import MlflowClient

    cube = Datacube.load(workspace / "datacube" / "cube.npz")
    huge = Datacube(**{**cube.__dict__, "cube": np.full_like(cube.cube, 3e38)})
    path = huge.save(tmp_path / "huge.npz")
    root = tmp_path / "models"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    status = call_main(
        train_main, "--cube", path, "--model-path", root, "--model-name", "m", "--epochs", "3", "--patience", "0"
    )
    assert status == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "otrain-train: error: training diverged at epoch 1: loss is nan; try a lower --learning-rate "
        "(or --normalisation robust)"
    )
    assert not root.exists(), "no checkpoint and no empty folder is left behind"
    client = MlflowClient(tracking_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("otrain").experiment_id], "tags.`otrain.cube` LIKE '%huge%'"
    )
    assert [run.info.status for run in runs] == ["FAILED"]


# ---------------------------------------------------------------------------------------------
# Every training option, trained once.


@pytest.fixture
def float32_afterwards() -> Iterator[None]:
    """A mixed-precision training sets Keras' global policy: give the next test float32 back."""
    yield
    import keras

    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize(
    "options",
    [
        ("--augment",),
        ("--class-weight", "balanced"),
        ("--normalisation", "none"),
        ("--mixed-precision",),
        ("--batch-size", "32", "--learning-rate", "0.0005", "--dropout", "0.1", "--threshold", "0.4"),
        ("--lr-schedule", "cosine", "--monitor", "val_pr_auc"),
    ],
    ids=[
        "augment",
        "balanced-class-weight",
        "raw-pixels",
        "mixed-precision",
        "batch-lr-dropout-threshold",
        "cosine-pr-auc",
    ],
)
def test_every_training_option_trains(
    workspace: Path, tmp_path: Path, options: tuple[str, ...], float32_afterwards: None
) -> None:
    from otrain.cli.train import main

    extra = () if "--normalisation" in options else ("--normalisation", "robust")
    status = call_main(
        main,
        *("--cube", workspace / "datacube" / "cube.npz", "--model-path", tmp_path, "--model-name", "m"),
        *("--epochs", "1", "--no-tracking", *extra, *options),
    )
    assert status == 0
    folder = folder_of(tmp_path)
    card = json.loads((folder / "m.keras.card.json").read_text())
    flags = dict(zip(options[::2], options[1::2], strict=False)) if len(options) > 1 else {}
    if "--augment" in options:
        assert card["params"]["augment"] is True
    if "--mixed-precision" in options:
        assert card["params"]["mixed_precision"] is True
    for flag, value in flags.items():
        key = flag[2:].replace("-", "_")
        assert str(card["params"][key]) == value or float(card["params"][key]) == float(value)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["epochs_run"] == 1
    # Issue 23: raw pixels (the default) and --augment lost their ONNX twin to the parity check.
    assert "absent" not in card["onnx"], card["onnx"]["error"]
    assert card["onnx"]["parity"]["max_share_of_allowance"] <= 1.0
    parity = card["onnx"]["parity"]
    assert parity["decisions_changed"] <= parity["decisions_within_allowance"]  # ties at the threshold only
    assert choose_backend(folder / "m.keras", "auto").backend == "onnx"


# ---------------------------------------------------------------------------------------------
# Learning-rate schedules and the monitored validation metric.


def read_history(folder: Path) -> dict[str, np.ndarray]:
    with open(folder / "history.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    return {key: np.array([float(row[key]) for row in rows]) for key in rows[0]}


def test_plateau_halves_the_rate_and_resume_continues_it(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rate too small to move the weights keeps the validation AUC still: a plateau from epoch 1.

    The rate is halved after the 3rd and 6th epochs without a better AUC (epochs 4 and 7); a
    training interrupted after epoch 5 and resumed goes on at the halved rate, and halves it again
    at the same epoch.
    """
    import otrain.train.checkpoint

    root = tmp_path / "models"
    rate = 1e-12
    options = ("--epochs", "8", "--no-tracking", "--lr-schedule", "plateau", "--monitor", "val_roc_auc")
    options += ("--learning-rate", str(rate))
    assert train(workspace, "whole", *options, models=str(root)) == 0
    whole = read_history(folder_of(root, "whole"))
    assert np.all(whole["val_roc_auc"] == whole["val_roc_auc"][0]), whole["val_roc_auc"]
    assert_allclose(whole["learning_rate"], rate * np.array([1, 1, 1, 1, 0.5, 0.5, 0.5, 0.25]), rtol=1e-6)

    save = otrain.train.checkpoint.Checkpoint.save

    def save_then_interrupt(self: otrain.train.checkpoint.Checkpoint, *args: object, **kwargs: object) -> None:
        save(self, *args, **kwargs)
        if self.epochs_done == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(otrain.train.checkpoint.Checkpoint, "save", save_then_interrupt)
    assert train(workspace, "cut", *options, models=str(root)) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert train(workspace, "cut", *options, "--resume", models=str(root)) == 0
    out = capsys.readouterr().out
    assert "epoch 5 of 8 had finished" in out
    assert epochs_printed(out) == [6, 7, 8]
    assert_array_equal(read_history(folder_of(root, "cut"))["learning_rate"], whole["learning_rate"])


def test_cosine_decays_the_rate_to_zero_over_the_planned_epochs(workspace: Path, tmp_path: Path) -> None:
    options = ("--epochs", "4", "--batch-size", "64", "--learning-rate", "0.002", "--lr-schedule", "cosine")
    assert train(workspace, "m", *options, "--no-tracking", models=str(tmp_path)) == 0
    folder = folder_of(tmp_path)
    n_train = json.loads((folder / "m.keras.card.json").read_text())["split_sizes"]["train"]
    steps = math.ceil(n_train / 64)
    done = steps * np.arange(1, 5)  # the optimiser's steps at the end of each epoch
    expected = 0.002 * 0.5 * (1 + np.cos(np.pi * done / (4 * steps)))
    assert_allclose(read_history(folder)["learning_rate"], expected, rtol=1e-5, atol=1e-9)


def test_early_stopping_follows_the_pr_auc_of_the_real_class(workspace: Path, tmp_path: Path) -> None:
    """On an imbalanced cube (four real cutouts per bogus one) the PR AUC of each class differs."""
    from sklearn.metrics import average_precision_score

    from otrain.nets.model import load_model
    from otrain.score.scoring import predict

    cube = Datacube.load(workspace / "datacube" / "cube.npz")
    real, bogus = np.flatnonzero(cube.labels == 1), np.flatnonzero(cube.labels == 0)
    imbalanced = cube.subset(np.sort(np.concatenate([real, bogus[: len(bogus) // 4]])))
    path = imbalanced.save(tmp_path / "imbalanced.npz")

    def train_on_it(name: str, *options: str) -> dict[str, np.ndarray]:
        common = ("--normalisation", "robust", "--monitor", "val_pr_auc", "--no-tracking")
        args = ("--cube", path, "--model-path", tmp_path, "--model-name", name, *common, *options)
        assert call_main(train_main, *args) == 0
        return read_history(folder_of(tmp_path, name))

    history = train_on_it("long", "--epochs", "12", "--patience", "2")
    best = int(np.argmax(history["val_pr_auc"]))
    assert len(history["epoch"]) == min(12, best + 1 + 2), history["val_pr_auc"]

    # One epoch, before the classes separate perfectly: its PR AUC is that of P(real) for the real class.
    (value,) = train_on_it("short", "--epochs", "1")["val_pr_auc"]
    folder = folder_of(tmp_path, "short")
    validation = Datacube.load(folder / "validation_set" / "datacube" / "cube_validation.npz")
    p_real = predict(load_model(folder / "short.keras"), validation.cube)
    of_real = average_precision_score(validation.labels, p_real)
    of_bogus = average_precision_score(1 - validation.labels, 1 - p_real)
    assert abs(of_real - value) < 0.02, (value, of_real, of_bogus)
    assert abs(of_bogus - value) > 0.05, (value, of_real, of_bogus)


MIRRORED = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from otrain.cli.train import main
main(sys.argv[1:])
"""


def test_two_replicas_on_two_logical_cpus_train_the_same_kind_of_model(workspace: Path, tmp_path: Path) -> None:
    """The MirroredStrategy path (several GPUs in production) with two logical CPU devices."""
    args = [
        *("--cube", str(workspace / "datacube" / "cube.npz"), "--model-path", str(tmp_path)),
        *("--epochs", "4", "--patience", "0", "--normalisation", "robust", "--no-tracking"),
    ]
    env = {**os.environ, "OTRAIN_PROGRESS": "0"}
    mirrored = subprocess.run(
        [sys.executable, "-c", MIRRORED, *args, "--model-name", "two"], capture_output=True, text=True, env=env
    )
    assert mirrored.returncode == 0, mirrored.stderr
    assert "training on 2 CPU devices with MirroredStrategy" in mirrored.stderr
    single = subprocess.run(
        [str(BIN / "otrain-train"), *args, "--model-name", "one"], capture_output=True, text=True, env=env
    )
    assert single.returncode == 0, single.stderr
    assert "training on the CPU" in single.stderr
    from otrain.nets.model import load_model

    one, two = folder_of(tmp_path, "one"), folder_of(tmp_path, "two")
    assert load_model(two / "two.keras").count_params() == load_model(one / "one.keras").count_params()
    metrics = [json.loads((folder / "metrics.json").read_text()) for folder in (one, two)]
    assert set(metrics[0]) == set(metrics[1])
    assert metrics[1]["n"] == metrics[0]["n"]
    assert abs(metrics[1]["accuracy"] - metrics[0]["accuracy"]) < 0.15, metrics
    assert min(metrics[0]["roc_auc"], metrics[1]["roc_auc"]) > 0.9, metrics


def test_sigterm_from_a_stopped_pipeline_ends_the_training_like_ctrl_c(workspace: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    folder = folder_of(root)
    command = [
        str(BIN / "otrain-train"),
        *("--cube", str(workspace / "datacube" / "cube.npz"), "--model-path", str(root), "--model-name", "m"),
        *("--epochs", "1000", "--no-tracking", "--normalisation", "robust", "--patience", "0"),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_epochs(folder, 1, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate()
    assert process.returncode == 130
    assert err.strip().splitlines()[-1] == "otrain-train: error: interrupted"
    assert (folder / ".checkpoint" / "latest.json").is_file()
    assert not (folder / ".otrain-train.lock").exists()
