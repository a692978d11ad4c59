"""otrain-train and otrain-infer for real: tiny simulated cubes, real TensorFlow, real MLflow."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from astropy.io import ascii as astropy_ascii
from conftest import (
    BIN,
    SIZE,
    call_main,
    original_otrain_network,
    pixels,
    refused_init_sources,
    train,
    write_gmadet,
)
from helpers import history_epochs, wait_for_epochs
from numpy.testing import assert_allclose, assert_array_equal

from otrain.cli.infer import main as infer_main
from otrain.cli.train import main as train_main
from otrain.data.datacube import Datacube
from otrain.io.card import split_summary
from otrain.score.inference import INFER_COLUMNS

pytestmark = pytest.mark.slow


def test_training_writes_the_original_layout(trained: Path) -> None:
    for name in (
        "tiny.keras",
        "tiny.keras.card.json",
        "validation_set/datacube/cube_validation.npz",
        "test_set/datacube/cube_test.npz",
        "history.csv",
        "tiny_loss_vs_epochs.png",
        "tiny_accuracy_vs_epochs.png",
        "metrics.json",
        "mlflow_run.json",
    ):
        assert (trained / name).is_file(), name
    assert not (trained / ".checkpoint").exists()
    with np.load(trained / "validation_set" / "datacube" / "cube_validation.npz") as archive:
        assert archive["labels"].shape[1] == 2  # one-hot, readable by the original tools
    metrics = json.loads((trained / "metrics.json").read_text())
    assert set(metrics) >= {"accuracy", "precision", "recall", "f1", "mcc", "roc_auc"}
    # The exact operating points of the test set (otrain.metrics.evaluation.operating_rates).
    assert set(metrics) >= {"threshold_at_fpr_1pc", "fnr_at_fpr_1pc", "threshold_at_fnr_1pc", "fpr_at_fnr_1pc"}
    assert history_epochs(trained) == [1, 2, 3, 4, 5, 6]
    card = json.loads((trained / "tiny.keras.card.json").read_text())
    assert card["input_shape"] == [SIZE, SIZE, 1]
    assert card["architecture"] == "otrain"
    assert card["normalisation"] == "robust"
    assert card["data_hash"] == Datacube.load(trained.parents[2] / "datacube" / "cube.npz").content_hash()
    assert card["test_metrics"]["accuracy"] == metrics["accuracy"]


def test_splits_are_disjoint_and_test_only(trained: Path, workspace: Path) -> None:
    validation = Datacube.load(trained / "validation_set" / "datacube" / "cube_validation.npz")
    test = Datacube.load(trained / "test_set" / "datacube" / "cube_test.npz")
    assert not set(validation.candids.tolist()) & set(test.candids.tolist())
    full = Datacube.load(workspace / "datacube" / "cube.npz")
    assert abs(len(test) - 0.15 * len(full)) <= 2
    assert abs(test.n_real - test.n_bogus) <= 1


def test_the_card_records_the_candidate_ids_of_the_held_out_sets(trained: Path, workspace: Path) -> None:
    validation = Datacube.load(trained / "validation_set" / "datacube" / "cube_validation.npz")
    test = Datacube.load(trained / "test_set" / "datacube" / "cube_test.npz")
    record = json.loads((trained / "tiny.keras.card.json").read_text())["split"]
    assert record["method"] == "row"  # the workspace cube records no groups: --split-by auto splits by row
    assert record["group_keyword"] is None
    assert record["unique_ids"] is True
    assert record["test_ids"] == [str(candid) for candid in test.candids]
    assert record["validation_ids"] == [str(candid) for candid in validation.candids]
    assert record["data_hash"] == Datacube.load(workspace / "datacube" / "cube.npz").content_hash()


def test_split_by_group_trains_on_whole_groups(workspace: Path, tmp_path: Path) -> None:
    full = Datacube.load(workspace / "datacube" / "cube.npz")
    # Three alerts per object, as a survey sees an object on several nights.
    groups = np.array([f"object-{row // 3}" for row in np.random.default_rng(0).permutation(len(full))])
    grouped = Datacube(**{**full.__dict__, "groups": groups, "group_keyword": "OBJECT"}).save(tmp_path / "g.npz")
    common = ("--cube", grouped, "--model-path", tmp_path, "--epochs", "1", "--normalisation", "robust")
    assert call_main(train_main, *common, "--model-name", "grouped", "--no-tracking") == 0
    folder = tmp_path / "CNN_training" / "grouped"
    record = json.loads((folder / "grouped.keras.card.json").read_text())["split"]
    assert (record["method"], record["group_keyword"]) == ("group", "OBJECT")
    by_id = dict(zip((str(candid) for candid in full.candids), groups, strict=True))
    held = {name: {by_id[key] for key in record[f"{name}_ids"]} for name in ("validation", "test")}
    trained_on = set(groups) - held["validation"] - held["test"]
    rows_of = {name: [key for key in by_id if by_id[key] in held[name]] for name in held}
    assert not held["validation"] & held["test"]
    assert sorted(record["test_ids"]) == sorted(rows_of["test"])  # every alert of a test object is in test
    assert sorted(record["validation_ids"]) == sorted(rows_of["validation"])
    assert trained_on
    test = Datacube.load(folder / "test_set" / "datacube" / "cube_test.npz")
    assert test.groups is not None
    assert not set(test.groups.tolist()) & trained_on
    # --split-by row on the same cube: objects straddle the sets, as before.
    assert call_main(train_main, *common, "--model-name", "rows", "--no-tracking", "--split-by", "row") == 0
    rows = json.loads((tmp_path / "CNN_training" / "rows" / "rows.keras.card.json").read_text())["split"]
    assert rows["method"] == "row"
    test_objects = {by_id[key] for key in rows["test_ids"]}
    assert {by_id[key] for key in by_id if key not in set(rows["test_ids"])} & test_objects


def test_split_by_group_needs_a_cube_with_groups(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cube = workspace / "datacube" / "cube.npz"
    status = call_main(
        train_main,
        "--cube",
        cube,
        "--model-path",
        tmp_path,
        "--model-name",
        "m",
        "--split-by",
        "group",
        "--no-tracking",
    )
    assert status == 1
    assert capsys.readouterr().err == (
        f"otrain-train: error: {cube}: --split-by group: the cube records no groups; convert the cutouts with "
        "otrain-convert --group-keyword KEYWORD (for example the ZTF objectId)\n"
    )
    assert not (tmp_path / "CNN_training").exists()


def test_model_scores_another_survey_as_its_seed_always_does(trained: Path, workspace: Path) -> None:
    """The seeded 6-epoch training classifies 130 of the 143 usable candidates of a survey simulated
    with another seed correctly, on every run (op determinism on the CPU); a few candidates of
    tolerance allow for another CPU's floating-point rounding, not for a change of behaviour."""
    night = workspace / "other" / "night"
    assert call_main(infer_main, "--cutouts", night, "--model", trained / "tiny.keras") == 0
    table = astropy_ascii.read(night / "infer_results.dat", format="commented_header")
    with open(workspace / "other" / "truth.csv", newline="") as stream:
        truth = {row["path"].split("/")[-1]: int(row["label"]) for row in csv.DictReader(stream)}
    labels = np.array([truth[Path(name).name] for name in table["filename"]])
    accuracy = np.mean((np.asarray(table["label1"]) > 0.5) == labels)
    assert len(labels) == 143
    assert accuracy == pytest.approx(130 / 143, abs=3 / 143), accuracy


def test_infer_results_round_trip(trained: Path, workspace: Path) -> None:
    night = workspace / "survey" / "night"
    output = workspace / "scores.dat"
    default = night / "infer_results.dat"
    before = default.stat().st_mtime_ns if default.exists() else None
    status = call_main(infer_main, "--cutouts", night, "--model", trained / "tiny.keras", "--output", output)
    assert status == 0
    table = astropy_ascii.read(output, format="commented_header")
    assert tuple(table.colnames) == INFER_COLUMNS
    assert table.colnames[:13] == [
        "filename",
        "RA",
        "Dec",
        "originalFile",
        "Xpos",
        "Ypos",
        "mag",
        "magerr",
        "FWHM",
        "FWHMPSF",
        "cand_ID",
        "label0",
        "label1",
    ]
    assert_allclose(np.asarray(table["label0"]) + np.asarray(table["label1"]), 1.0, atol=1e-6)
    with open(workspace / "survey" / "truth.csv", newline="") as stream:
        night_rows = [row for row in csv.DictReader(stream) if row["set"] == "night"]
    assert len(table) == sum(1 for row in night_rows if row["edge"] == "False")
    after = default.stat().st_mtime_ns if default.exists() else None
    assert before == after  # with --output, the default table in --cutouts is not touched


@pytest.mark.parametrize("backend", ["onnx", "keras"])
def test_reading_here_or_in_a_pool_gives_the_same_table(
    trained: Path, workspace: Path, tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """560 cutouts in chunks of 200: one reader (this process) and one run at a time, or two readers
    and three runs at once (ONNX Runtime; Keras always scores one chunk at a time), give the same rows in the
    same order, all of them."""
    import otrain.score.inference

    tables = {}
    for workers, runs in (("1", 1), ("2", 3)):
        monkeypatch.setattr(otrain.score.inference, "scoring_threads", lambda runs=runs: (runs, 1))
        output = tmp_path / f"workers{workers}.dat"
        arguments = ("--cutouts", workspace / "survey", "--recursive", "--model", trained / "tiny.keras")
        options = ("--output", output, "--workers", workers, "--backend", backend, "--no-tracking")
        options += ("--batch-size", "200")
        assert call_main(infer_main, *arguments, *options) == 0
        tables[workers] = output.read_text()
    assert tables["1"] == tables["2"]
    with open(workspace / "survey" / "truth.csv", newline="") as stream:
        usable = [row["path"] for row in csv.DictReader(stream) if row["edge"] == "False"]
    rows = tables["1"].splitlines()[1:]
    assert len(rows) == len(usable) > 400
    assert [row.split()[0] for row in rows] == sorted(row.split()[0] for row in rows)  # the files' order


def test_prob_ratio_reweights(trained: Path, workspace: Path) -> None:
    night = workspace / "survey" / "night"
    plain, weighted = workspace / "plain.dat", workspace / "weighted.dat"
    assert call_main(infer_main, "--cutouts", night, "--model", trained / "tiny.keras", "--output", plain) == 0
    assert (
        call_main(
            infer_main, "--cutouts", night, "--model", trained / "tiny.keras", "--output", weighted, "--prob-ratio", "3"
        )
        == 0
    )
    p = np.asarray(astropy_ascii.read(plain, format="commented_header")["label1"])
    q = np.asarray(astropy_ascii.read(weighted, format="commented_header")["label1"])
    assert_allclose(q, p / (p + (1 - p) * 3), rtol=1e-6)


def test_same_seed_same_metrics(workspace: Path) -> None:
    for name in ("seed_a", "seed_b"):
        assert train(workspace, name, "--epochs", "2", "--no-tracking", models="seeds") == 0
    folder = workspace / "seeds" / "CNN_training"
    first = json.loads((folder / "seed_a" / "metrics.json").read_text())
    second = json.loads((folder / "seed_b" / "metrics.json").read_text())
    assert first == second
    assert not (folder / "seed_a" / "mlflow_run.json").exists()


def test_the_default_network_is_the_original_layer_for_layer() -> None:
    """Same layers, settings and, from the same seed, the same initial weights as the plain-Keras original."""
    import keras

    from otrain.nets.model import build_model

    networks = []
    for build in (lambda: build_model((SIZE, SIZE, 1)), lambda: original_otrain_network(SIZE)):
        keras.utils.set_random_seed(11)
        networks.append(build())
    ours, original = networks
    assert [type(layer) for layer in ours.layers] == [type(layer) for layer in original.layers]
    configs = [[{**layer.get_config(), "name": None} for layer in model.layers] for model in networks]
    assert configs[0] == configs[1]
    assert ours.count_params() == original.count_params() == 2_621_826
    for mine, theirs in zip(ours.get_weights(), original.get_weights(), strict=True):
        assert_array_equal(mine, theirs)


def test_h5_models_load_and_score_the_same(workspace: Path, tmp_path: Path) -> None:
    from otrain.nets.model import build_model, load_model, save_model

    cube = Datacube.load(workspace / "datacube" / "cube.npz")
    pixels_in = cube.cube[:16]
    # This version's .h5: scores after loading equal the in-memory model's.
    ours = build_model((SIZE, SIZE, 1), normalisation="robust")
    saved = save_model(ours, tmp_path / "ours.h5")
    assert_allclose(load_model(saved).predict(pixels_in, verbose=0), ours.predict(pixels_in, verbose=0), rtol=1e-5)
    # A Keras-3 legacy .h5 of the original architecture, scored through otrain-infer.
    original = original_otrain_network(SIZE)
    original.save(tmp_path / "original.h5")
    assert load_model(tmp_path / "original.h5").count_params() == original.count_params()
    night = workspace / "survey" / "night"
    output = tmp_path / "original.dat"
    assert call_main(infer_main, "--cutouts", night, "--model", tmp_path / "original.h5", "--output", output) == 0
    table = astropy_ascii.read(output, format="commented_header")
    from otrain.data.cutouts import read_cutout

    first = read_cutout(Path(table["filename"][0])).pixels[np.newaxis]
    assert_allclose(table["label1"][0], original.predict(first, verbose=0)[0, 1], rtol=1e-5)
    # And a training saved as .h5 by otrain-train.
    assert train(workspace, "legacy.h5", "--epochs", "1", "--no-tracking", models="h5") == 0
    assert (workspace / "h5" / "CNN_training" / "legacy" / "legacy.h5").is_file()


def test_mlflow_run_has_params_metrics_artifacts_and_model(trained: Path, tracking_uri: str) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    run_info = json.loads((trained / "mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "6"
    assert run.data.params["normalisation"] == "robust"
    assert {"test_accuracy", "test_mcc", "test_roc_auc", "val_loss"} <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 6
    assert run.data.tags["otrain.data_hash"]
    assert run.data.tags["device"] == "CPU"
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id, "training")}
    assert {"training/history.csv", "training/metrics.json", "training/tiny_loss_vs_epochs.png"} <= artifacts
    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.keras.load_model(f"runs:/{run.info.run_id}/model")
    cube = Datacube.load(trained / "test_set" / "datacube" / "cube_test.npz")
    assert model.predict(cube.cube[:4], verbose=0).shape == (4, 2)


def test_logged_model_loads_as_a_python_function_without_importing_otrain(
    trained: Path, tracking_uri: str, tmp_path: Path
) -> None:
    """What `mlflow models serve` does: mlflow.pyfunc.load_model in a fresh process, where nothing
    imported otrain.nets.model (whose Keras layers the model holds) beforehand."""
    from otrain.nets.model import load_model

    run_id = json.loads((trained / "mlflow_run.json").read_text())["run_id"]
    cutouts = Datacube.load(trained / "test_set" / "datacube" / "cube_test.npz").cube[:4]
    np.save(tmp_path / "cutouts.npy", cutouts)
    script = (
        "import sys, mlflow, numpy as np; "
        f"model = mlflow.pyfunc.load_model('runs:/{run_id}/model'); "
        "np.save(sys.argv[2], model.predict(np.load(sys.argv[1])))"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    result = subprocess.run(
        [str(BIN / "python"), "-c", script, str(tmp_path / "cutouts.npy"), str(tmp_path / "scores.npy")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = load_model(trained / "tiny.keras").predict(cutouts, verbose=0)
    assert_allclose(np.load(tmp_path / "scores.npy"), expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The vgg network.


def test_vgg_training_records_its_network(trained_vgg: Path, tracking_uri: str) -> None:
    from keras import layers
    from mlflow.tracking import MlflowClient

    from otrain.nets.model import load_model

    card = json.loads((trained_vgg / "tiny_vgg.keras.card.json").read_text())
    assert card["architecture"] == card["params"]["architecture"] == "vgg"
    model = load_model(trained_vgg / "tiny_vgg.keras")
    assert model.name == "vgg_cnn"
    assert sum(isinstance(layer, layers.BatchNormalization) for layer in model.layers) == 4
    assert history_epochs(trained_vgg) == [1, 2, 3]
    metrics = json.loads((trained_vgg / "metrics.json").read_text())
    assert metrics["roc_auc"] > 0.8, metrics  # it learnt (the test set's ROC AUC is 0.96 on this CPU)
    run_id = json.loads((trained_vgg / "mlflow_run.json").read_text())["run_id"]
    assert MlflowClient(tracking_uri).get_run(run_id).data.params["architecture"] == "vgg"


def test_vgg_model_saves_and_loads_in_both_formats(trained_vgg: Path, tmp_path: Path) -> None:
    from keras import layers

    from otrain.nets.model import load_model, save_model

    model = load_model(trained_vgg / "tiny_vgg.keras")
    normalisation = next(layer for layer in model.layers if isinstance(layer, layers.BatchNormalization))
    assert np.abs(np.asarray(normalisation.moving_mean)).max() > 0.01  # statistics learnt, saved with the model
    test = Datacube.load(trained_vgg / "test_set" / "datacube" / "cube_test.npz")
    expected = model.predict(test.cube, verbose=0)
    card = json.loads((trained_vgg / "tiny_vgg.keras.card.json").read_text())
    accuracy = np.mean((expected[:, 1] > card["threshold"]) == test.labels)
    assert accuracy == pytest.approx(card["test_metrics"]["accuracy"])  # the model the metrics come from
    for name in ("copy.keras", "copy.h5"):
        again = load_model(save_model(model, tmp_path / name))
        assert_array_equal(again.predict(test.cube, verbose=0), expected)


# ---------------------------------------------------------------------------------------------
# Bad input.


def test_cube_with_one_class(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cube = Datacube.load(workspace / "datacube" / "cube.npz")
    cube.subset(np.flatnonzero(cube.labels == 1)).save(workspace / "onlyreal.npz")
    status = call_main(
        train_main,
        "--cube",
        workspace / "onlyreal.npz",
        "--model-path",
        workspace / "bad",
        "--model-name",
        "m",
        "--no-tracking",
    )
    assert status == 1
    assert "holds only real cutouts" in capsys.readouterr().err
    assert not (workspace / "bad" / "CNN_training" / "m").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--batch-size", "5000"), "--batch-size: 5000 is larger than the training set"),
        (("--frac", "0"), "--frac: must be a fraction in (0, 1)"),
        (("--frac", "1"), "--frac: must be a fraction in (0, 1)"),
        (("--frac", "0.5", "--test-frac", "0.5"), "--frac, --test-frac: together must leave data"),
        (("--architecture", "resnet"), "--architecture: Input should be 'otrain' or 'vgg'"),
    ],
)
def test_bad_training_options(
    workspace: Path, capsys: pytest.CaptureFixture[str], options: tuple[str, ...], message: str
) -> None:
    assert train(workspace, "bad", "--no-tracking", *options, models="badopts") == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not (workspace / "badopts" / "CNN_training" / "bad" / "bad.keras").exists()


def test_unreachable_tracking_server_fails_before_training(
    workspace: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert train(workspace, "offline", "--epochs", "1", models="offline") == 2
    err = capsys.readouterr().err
    assert "cannot reach MLflow tracking server http://127.0.0.1:9" in err
    assert "--no-tracking" in err
    assert not (workspace / "offline" / "CNN_training" / "offline").exists()
    assert train(workspace, "offline", "--epochs", "1", "--no-tracking", models="offline") == 0


def test_existing_training_is_not_replaced_silently(
    trained: Path, workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (trained / "tiny.keras").stat().st_mtime_ns
    assert train(workspace, "tiny", "--no-tracking") == 2
    assert "already holds a training; pass --overwrite to replace it" in capsys.readouterr().err
    assert (trained / "tiny.keras").stat().st_mtime_ns == before


def test_model_that_is_not_a_model(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = workspace / "fake.keras"
    fake.write_text("not a model")
    assert (
        call_main(
            infer_main, "--cutouts", workspace / "survey" / "night", "--model", fake, "--output", workspace / "x.dat"
        )
        == 1
    )
    assert f"{fake}: not a readable Keras model" in capsys.readouterr().err
    assert not (workspace / "x.dat").exists()


def test_empty_folder_and_mismatched_cutouts(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = trained / "tiny.keras"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert call_main(infer_main, "--cutouts", empty, "--model", model) == 1
    assert "no cutout files" in capsys.readouterr().err
    # A model for other cutouts is one mistake: one line naming the model and both shapes, not a
    # warning per file.
    small = tmp_path / "small"
    for index in range(5):
        write_gmadet(small / f"a{index}.fits", pixels(16, seed=index))
    assert call_main(infer_main, "--cutouts", small, "--model", model) == 1
    assert capsys.readouterr().err == (
        f"otrain-infer: error: {model}: the model takes 32x32x1 cutouts, but a0.fits (and probably the others "
        "in its folder) is 16x16x1\n"
    )
    planes = tmp_path / "planes"
    write_gmadet(planes / "a.fits", np.stack([pixels(40), pixels(40)]))
    assert call_main(infer_main, "--cutouts", planes, "--model", model) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"otrain-infer: error: {model}: the model takes 32x32x1 cutouts, but a.fits")
    assert err.strip().endswith("is 40x40x2")
    assert not list(tmp_path.rglob("infer_results.dat"))


def test_good_and_corrupt_files(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "mixed"
    for index in range(3):
        write_gmadet(folder / f"good{index}.fits", pixels(40, seed=index), CANDID=index)
    (folder / "broken.fits").write_text("garbage" * 500)
    write_gmadet(folder / "edge.fits", pixels(40), EDGE="True")
    write_gmadet(folder / "nomag.fits", pixels(40), MAG=None, RA=None, FILE=None)
    assert call_main(infer_main, "--cutouts", folder, "--model", trained / "tiny.keras") == 0
    captured = capsys.readouterr()
    assert "scored 4 of 6 cutouts" in captured.out
    assert "skipped 1 EDGE, 1 unreadable" in captured.out
    assert f"skipped: {folder / 'broken.fits'}" in captured.err
    table = astropy_ascii.read(folder / "infer_results.dat", format="commented_header")
    row = table[[Path(name).name for name in table["filename"]].index("nomag.fits")]
    assert np.isnan(row["mag"])
    assert np.isnan(row["RA"])


def test_interrupted_training_resumes(workspace: Path, tmp_path: Path) -> None:
    """Ctrl-C leaves no model and a KILLED run; --resume says where it resumes and finishes the same run."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'resume.db'}"
    command = [
        str(BIN / "otrain-train"),
        *("--cube", str(workspace / "datacube" / "cube.npz"), "--model-path", str(tmp_path), "--model-name", "long"),
        *("--epochs", "1000", "--patience", "0"),
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OTRAIN_PROGRESS": "0"}
    output = tmp_path / "CNN_training" / "long"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_for_epochs(output, 2, process)
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate()
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "otrain-train: error: interrupted"
    assert not (output / "long.keras").exists()
    assert not (output / "metrics.json").exists()
    run_id = json.loads((output / ".checkpoint" / "mlflow_run.json").read_text())["run_id"]
    assert MlflowClient(uri).get_run(run_id).info.status == "KILLED"
    finished = json.loads((output / ".checkpoint" / "latest.json").read_text())["epochs_done"]

    for option, value in (("seed", "7"), ("architecture", "vgg")):
        changed = subprocess.run(
            [*command[:-4], "--epochs", "4", "--patience", "0", f"--{option}", value, "--resume"],
            capture_output=True,
            text=True,
            env=env,
        )
        assert changed.returncode == 2
        assert f"--resume: the interrupted training used other values of {option}" in changed.stderr
    total = finished + 2
    resumed = subprocess.run(
        [*command[:-4], "--epochs", str(total), "--patience", "0", "--resume"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"epoch {finished} of {total} had finished" in resumed.stdout
    assert (output / "long.keras").is_file()
    assert json.loads((output / "mlflow_run.json").read_text())["run_id"] == run_id
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"
    assert f"epoch 1/{total}" not in resumed.stdout
    assert history_epochs(output) == list(range(1, total + 1))
    assert not (output / ".checkpoint").exists()
    again = subprocess.run([*command, "--resume"], capture_output=True, text=True, env=env)
    assert again.returncode == 2
    assert "--resume: nothing to resume" in again.stderr
    assert "it holds a finished training" in again.stderr


def test_promotion_gate_keeps_a_better_champion(
    trained: Path, workspace: Path, tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    from otrain.cli.promote import main as promote_main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    first = tmp_path / "first.json"
    assert call_main(promote_main, "--model-dir", trained, "--registered-name", "gate", "--report", first) == 0
    assert json.loads(first.read_text())["promoted"] is True
    # A model that has not learnt anything (a vanishing learning rate) must not take the alias.
    assert train(workspace, "untrained", "--epochs", "1", "--learning-rate", "1e-12", models="gate") == 0
    second = tmp_path / "second.json"
    untrained = workspace / "gate" / "CNN_training" / "untrained"
    assert call_main(promote_main, "--model-dir", untrained, "--registered-name", "gate", "--report", second) == 0
    decision = json.loads(second.read_text())
    assert decision["promoted"] is False
    assert decision["champion_value"] > decision["new_value"] + 0.005, decision
    client = MlflowClient(tracking_uri)
    assert str(client.get_model_version_by_alias("gate", "champion").version) == "1"
    assert client.get_model_version("gate", "2").tags["promotion"].startswith("roc_auc "), decision


def test_promote_leaves_the_processs_tracking_uri_as_it_found_it(
    trained: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without MLFLOW_TRACKING_URI the gate uses the store named in mlflow_run.json, and only inside."""
    from mlflow.tracking import MlflowClient

    from otrain.cli.promote import main as promote_main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert json.loads((trained / "mlflow_run.json").read_text())["tracking_uri"] == tracking_uri
    assert call_main(promote_main, "--model-dir", trained, "--registered-name", "restored") == 0
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert str(MlflowClient(tracking_uri).get_model_version_by_alias("restored", "champion").version) == "1"


# ---------------------------------------------------------------------------------------------
# What otrain-infer may write.


def test_infer_never_overwrites_what_it_did_not_write(
    trained: Path, workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    night = tmp_path / "night"
    shutil.copytree(workspace / "survey" / "night", night)
    model = tmp_path / "model.keras"
    shutil.copy(trained / "tiny.keras", model)
    truth = tmp_path / "truth.csv"
    truth.write_text("path,label\na.fits,1\n")
    cutout = sorted(night.glob("*.fits"))[0]
    originals = {path: path.read_bytes() for path in (model, truth, cutout)}

    def infer(*extra: object) -> int:
        return call_main(infer_main, "--cutouts", night, "--model", model, *extra)

    for target in (model, cutout):  # an input: never, even with --overwrite
        for extra in ((), ("--overwrite",)):
            assert infer("--output", target, *extra) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"otrain-infer: error: --output: '{target}' is ")
            assert "input of otrain-infer" in err or "a cutout being scored" in err
    assert infer("--output", truth) == 2  # a user's file: only with --overwrite
    assert capsys.readouterr().err.strip() == (
        f"otrain-infer: error: --output: '{truth}' exists and was not written by otrain-infer; "
        "pass --overwrite to replace it, or choose another path"
    )
    for path, content in originals.items():
        assert path.read_bytes() == content, path
    table = tmp_path / "scores.dat"
    assert infer("--output", table) == 0
    first = table.read_text()
    assert infer("--output", table, "--threshold", "0.9") == 0  # its own table: replaced
    assert table.read_text() != first
    assert infer("--output", truth, "--overwrite") == 0
    assert truth.read_text().startswith("# filename RA Dec")


def test_a_file_name_that_is_not_utf8_is_written_escaped(
    trained: Path, workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    night = tmp_path / "night"
    night.mkdir()
    source = sorted((workspace / "survey" / "night").glob("*.fits"))[:3]
    for path in source:
        shutil.copy(path, night / path.name)
    latin1 = os.fsdecode(b"caf\xe9_cutout.fits")  # a Latin-1 name: not valid UTF-8
    shutil.copy(source[0], night / latin1)
    assert call_main(infer_main, "--cutouts", night, "--model", trained / "tiny.keras") == 0
    text = (night / "infer_results.dat").read_bytes().decode("utf-8")  # the whole table is valid UTF-8
    table = astropy_ascii.read(night / "infer_results.dat", format="commented_header")
    assert len(table) == 4
    names = [Path(name).name for name in table["filename"]]
    assert "caf\\xe9_cutout.fits" in names
    assert "scored 4 of 4" in capsys.readouterr().out
    assert "\\xe9" in text


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("empty.keras", lambda data: b""),
        ("truncated.keras", lambda data: data[: len(data) // 2]),
        ("truncated.h5", None),
        ("text.h5", lambda data: b"this is not HDF5\n" * 10),
    ],
)
def test_a_damaged_model_file_is_named_as_such(
    trained: Path, workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, damage: object
) -> None:
    from otrain.nets.model import build_model, save_model

    path = tmp_path / name
    if damage is None:
        save_model(build_model((SIZE, SIZE, 1)), tmp_path / "whole.h5")
        data = (tmp_path / "whole.h5").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(damage((trained / "tiny.keras").read_bytes()))  # type: ignore[operator]
    status = call_main(
        infer_main, "--cutouts", workspace / "survey" / "night", "--model", path, "--output", tmp_path / "x.dat"
    )
    assert status == 1
    assert (
        capsys.readouterr().err == f"otrain-infer: error: {path}: not a readable Keras model (corrupt or truncated)\n"
    )
    assert not (tmp_path / "x.dat").exists()


# ---------------------------------------------------------------------------------------------
# The promotion gate.


def test_promote_with_an_unreachable_server_is_one_line_at_once(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from otrain.cli.promote import main as promote_main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    # MLflow's client would retry for minutes, then raise: the check before it gives one line.
    assert call_main(promote_main, "--model-dir", trained, "--report", tmp_path / "p.json") == 2
    err = capsys.readouterr().err
    assert err.startswith("otrain-promote: error: cannot reach MLflow tracking server http://127.0.0.1:9")
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.json").exists()


def test_the_gate_compares_on_rows_neither_model_trained_on(
    trained: Path, workspace: Path, tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    from otrain.cli.promote import main as promote_main
    from otrain.track.registry import SPLIT_TAG

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    assert (
        call_main(promote_main, "--model-dir", trained, "--registered-name", "fair", "--report", tmp_path / "a.json")
        == 0
    )
    client = MlflowClient(tracking_uri)
    record = json.loads(client.get_model_version("fair", "1").tags[SPLIT_TAG])
    card = json.loads((trained / "tiny.keras.card.json").read_text())
    # The tag is small (MLflow limits tags): the ids are in the card, the tag holds their digests.
    assert record == split_summary(card["split"])
    assert {"data_hash", "seed", "frac", "test_frac", "cube", "test_ids_sha256", "n_test"} <= set(record)
    assert "test_ids" not in record
    # Another seed: another test set, part of which the champion trained on.
    assert train(workspace, "reseeded", "--epochs", "2", "--seed", "5", "--test-frac", "0.4", models="fair") == 0
    reseeded = workspace / "fair" / "CNN_training" / "reseeded"
    assert (
        call_main(promote_main, "--model-dir", reseeded, "--registered-name", "fair", "--report", tmp_path / "b.json")
        == 0
    )
    decision = json.loads((tmp_path / "b.json").read_text())
    test = Datacube.load(reseeded / "test_set" / "datacube" / "cube_test.npz")
    full = Datacube.load(workspace / "datacube" / "cube.npz")
    # What the champion saw: its cube's rows but the test set its card records.
    seen = {str(candid) for candid in full.candids} - set(card["split"]["test_ids"])
    held_out = [candid for candid in test.candids.tolist() if str(candid) not in seen]
    assert 0 < decision["compared_on"] == len(held_out) < len(test), decision["reason"]
    assert (
        f"compared on the {len(held_out)} of {len(test)} test cutouts that champion v1 never saw" in decision["reason"]
    )
    # A champion whose cube is gone: only the cutouts of its recorded test set count as unseen.
    temporary = tmp_path / "temporary.npz"
    full.subset(np.arange(0, len(full), 2)).save(temporary)
    status = call_main(
        train_main, "--cube", temporary, "--model-path", tmp_path, "--model-name", "gone",
        "--epochs", "1", "--normalisation", "robust",
    )  # fmt: skip
    assert status == 0
    gone = tmp_path / "CNN_training" / "gone"
    assert (
        call_main(promote_main, "--model-dir", gone, "--registered-name", "gone", "--report", tmp_path / "c.json") == 0
    )
    temporary.unlink()
    assert (
        call_main(promote_main, "--model-dir", trained, "--registered-name", "gone", "--report", tmp_path / "d.json")
        == 0
    )
    gone_tests = set(json.loads((gone / "gone.keras.card.json").read_text())["split"]["test_ids"])
    ours = Datacube.load(trained / "test_set" / "datacube" / "cube_test.npz")
    unseen = [row for row, candid in enumerate(ours.candids) if str(candid) in gone_tests]
    decided = json.loads((tmp_path / "d.json").read_text())
    assert 0 < len(unseen) < 10  # a few of our test cutouts were in its test set: too few to compare
    assert decided["promoted"] is False
    assert decided["reason"].startswith(f"not compared: only {len(unseen)} of the {len(ours)} test cutouts were")
    assert f"({temporary}) is not available here, so only the cutouts of its recorded test set" in decided["reason"]
    assert str(client.get_model_version_by_alias("gone", "champion").version) == "1"


def test_init_from_starts_from_the_trained_weights(trained: Path, workspace: Path, tmp_path: Path) -> None:
    """A vanishing learning rate keeps the starting weights: they must be the source model's."""
    from otrain.nets.model import load_model

    source = trained / "tiny.keras"
    options = ("--epochs", "1", "--learning-rate", "1e-12", "--no-tracking", "--init-from", str(source))
    assert train(workspace, "tuned", *options, models="tuned") == 0
    tuned = load_model(workspace / "tuned" / "CNN_training" / "tuned" / "tuned.keras")
    for ours, theirs in zip(tuned.get_weights(), load_model(source).get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)
    card = json.loads((workspace / "tuned" / "CNN_training" / "tuned" / "tuned.keras.card.json").read_text())
    assert card["init_from"] == str(source)
    assert train(workspace, "fresh", "--epochs", "1", "--learning-rate", "1e-12", "--no-tracking", models="tuned") == 0
    fresh = load_model(workspace / "tuned" / "CNN_training" / "fresh" / "fresh.keras")
    assert not np.allclose(fresh.get_weights()[0], tuned.get_weights()[0])


def test_a_refused_init_from_writes_nothing_and_the_corrected_command_needs_no_overwrite(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every --init-from model a training cannot start from is refused before anything is written:
    no checkpoint, no folder, no MLflow run; the command without it then runs as if the refused
    one never had (no --overwrite, and nothing to --resume)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    root = tmp_path / "models"
    planes = Datacube.load(workspace / "datacube" / "cube.npz").planes
    for source, message in refused_init_sources(tmp_path / "sources", (SIZE, SIZE, 1), planes):
        assert train(workspace, "x", "--epochs", "1", "--init-from", str(source), models=str(root)) == 1, source
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1] == f"otrain-train: error: {message}"
        assert "Traceback" not in err
        assert not root.exists(), f"{source}: {sorted(root.rglob('*'))}"
    experiment = MlflowClient(uri).get_experiment_by_name("otrain")
    assert experiment is None or not MlflowClient(uri).search_runs([experiment.experiment_id])
    assert train(workspace, "x", "--epochs", "1", "--resume", models=str(root)) == 2
    assert "--resume: nothing to resume" in capsys.readouterr().err
    assert train(workspace, "x", "--epochs", "1", models=str(root)) == 0
    assert (root / "CNN_training" / "x" / "x.keras").is_file()
    experiment = MlflowClient(uri).get_experiment_by_name("otrain")
    assert [run.info.status for run in MlflowClient(uri).search_runs([experiment.experiment_id])] == ["FINISHED"]


def test_init_from_refuses_another_network_or_itself(
    trained: Path, workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from otrain.nets.model import build_model, save_model

    other = save_model(build_model((SIZE + 8, SIZE + 8, 1)), tmp_path / "bigger.keras")
    assert train(workspace, "x", "--epochs", "1", "--no-tracking", "--init-from", str(other), models="refused") == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        f"--init-from: {other} takes 40x40x1 cutouts, this cube has 32x32x1; use the same --cutout-size and planes"
    ), err
    target = workspace / "refused" / "CNN_training" / "x" / "x.keras"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(trained / "tiny.keras", target)
    assert train(workspace, "x", "--overwrite", "--no-tracking", "--init-from", str(target), models="refused") == 2
    assert "is the model this training writes" in capsys.readouterr().err
