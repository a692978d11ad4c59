"""otrain-train --folds K: a cross-fitted ensemble trained, calibrated out of fold, saved as one model, scored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import call_main
from numpy.testing import assert_allclose

from otrain.cli.train import main as train_main
from otrain.data.datacube import Datacube

FOLDS = 3
N = 96


def _cube(path: Path) -> Path:
    """A small cube of 16x16x2 cutouts, two per group (an object seen twice), real ones with a centred source."""
    rng = np.random.default_rng(0)
    labels = np.array([1, 1, 0, 0] * (N // 4), dtype=np.int64)
    pixels = rng.normal(size=(N, 16, 16, 2)).astype(np.float32)
    y, x = np.mgrid[0:16, 0:16]
    pixels[labels == 1] += (8 * np.exp(-((y - 7.5) ** 2 + (x - 7.5) ** 2) / 4))[None, :, :, None].astype(np.float32)
    cube = Datacube(
        cube=pixels,
        labels=labels,
        mags=np.linspace(15, 20, N),
        errmags=np.linspace(0.01, 0.2, N),
        filters=np.array(["r"] * N),
        fwhms=np.full(N, 2.5),
        candids=np.arange(1000, 1000 + N),
        groups=np.array([f"ZTF{row // 2:04d}" for row in range(N)]),
    )
    return cube.save(path)


@pytest.fixture(scope="module")
def ensemble(workspace: Path) -> tuple[Path, Path]:
    """An ensemble trained on the workspace's cube, given groups: every two rows are one object."""
    from dataclasses import replace

    root = workspace / "ensemble"
    root.mkdir()
    cube = Datacube.load(workspace / "datacube" / "cube.npz")
    groups = np.array([f"ZTF{row // 2:04d}" for row in range(len(cube))])
    cube_file = replace(cube, groups=groups).save(root / "grouped.npz")
    options = ("--architecture", "vgg", "--normalisation", "robust", "--epochs", "1", "--no-tracking")
    code = call_main(
        train_main,
        *("--cube", cube_file, "--model-path", root / "models", "--model-name", "ens", "--folds", FOLDS),
        *options,
        *("--target-fnr", "0.1"),
    )
    assert code == 0
    return cube_file, root / "models" / "CNN_training" / "ens"


def test_folds_trains_k_members_on_whole_groups_and_the_card_records_them(ensemble: tuple[Path, Path]) -> None:
    from otrain.nets.ensemble import ensemble_members, is_ensemble
    from otrain.nets.model import load_model

    cube_file, folder = ensemble
    cube = Datacube.load(cube_file)
    card = json.loads((folder / "ens.keras.card.json").read_text())
    record = card["ensemble"]
    assert record["k"] == FOLDS
    assert record["grouped"] is True
    test = Datacube.load(folder / "test_set" / "datacube" / "cube_test.npz")
    fold_ids = [set(fold["candids"]) for fold in record["folds"]]
    test_ids = {str(candid) for candid in test.candids}
    # The folds and the test set partition the cube.
    assert sum(len(ids) for ids in fold_ids) + len(test_ids) == len(cube)
    assert set().union(*fold_ids, test_ids) == {str(candid) for candid in cube.candids}
    group_of = {str(candid): group for candid, group in zip(cube.candids, cube.groups, strict=True)}
    fold_groups = [{group_of[candid] for candid in ids} for ids in fold_ids]
    for first in range(FOLDS):
        for second in range(first + 1, FOLDS):
            assert not fold_groups[first] & fold_groups[second]
    assert [fold["member"] for fold in record["folds"]] == list(range(FOLDS))  # member k held fold k out
    # The test set is held out by whole objects too (--split-by auto on a cube with groups), and recorded.
    test_groups = {group_of[candid] for candid in test_ids}
    assert not test_groups & set().union(*fold_groups)
    assert card["split"]["method"] == "group"
    assert set(card["split"]["test_ids"]) == test_ids
    assert card["split"]["validation_ids"] == []
    for fold in record["folds"]:
        assert set(fold["oof_metrics"]) >= {"roc_auc", "mcc", "threshold"}
        assert fold["oof_metrics"]["threshold"] == card["threshold"]
    assert record["oof_metrics"]["threshold"] == card["threshold"]
    assert card["threshold_rule"]["chosen_on"] == "out-of-fold scores"
    assert card["threshold_rule"]["n_real"] + card["threshold_rule"]["n_bogus"] == len(cube) - len(test)
    assert card["calibration"]["fitted_on"] == len(cube) - len(test)
    assert card["split_sizes"] == {"train": len(cube) - len(test), "validation": 0, "test": len(test)}
    assert not (folder / "validation_set").exists()
    model = load_model(folder / "ens.keras")
    assert is_ensemble(model)
    assert len(ensemble_members(model)) == FOLDS
    head = model.layers[-1]
    assert (head.temperature, head.bias) == (card["calibration"]["temperature"], card["calibration"]["bias"])
    # The test metrics are the saved ensemble's.
    p_real = model.predict_on_batch(test.cube)[:, 1]
    from otrain.metrics.evaluation import binary_metrics

    expected = binary_metrics(test.labels, p_real.astype(np.float64), card["threshold"])
    assert card["test_metrics"]["roc_auc"] == pytest.approx(expected["roc_auc"])
    assert card["test_metrics"]["mcc"] == pytest.approx(expected["mcc"])
    assert card["onnx"]["parity"]["cutouts"] == len(cube)
    # As for one model: the exact operating rates among the test metrics, and the recipe.
    assert {"fpr_at_fnr_1pc", "threshold_at_fnr_1pc", "fnr_at_fpr_1pc"} <= set(card["test_metrics"])
    assert card["recipe"]["name"] == "original"


def test_an_ensemble_loads_by_its_registered_layers_alone(ensemble: tuple[Path, Path]) -> None:
    """MLflow's Keras flavour loads without custom objects: importing otrain.nets.model must register the head."""
    import subprocess
    import sys

    _, folder = ensemble
    code = (
        "import sys, keras, otrain.nets.model; "
        "m = keras.saving.load_model(sys.argv[1], compile=False); print(m.output_shape[-1])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(folder / "ens.keras")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "3"


def test_an_ensemble_is_scored_by_otrain_infer(ensemble: tuple[Path, Path], workspace: Path, tmp_path: Path) -> None:
    from astropy.io import ascii as astropy_ascii

    from otrain.cli.infer import main as infer_main

    _, folder = ensemble
    night, model = workspace / "survey" / "night", folder / "ens.keras"
    threshold = json.loads((folder / "ens.keras.card.json").read_text())["threshold"]
    tables = {}
    for backend in ("keras", "onnx"):
        out = tmp_path / f"{backend}.dat"
        assert call_main(infer_main, "--cutouts", night, "--model", model, "--output", out, "--backend", backend) == 0
        tables[backend] = astropy_ascii.read(out, format="commented_header")
    keras_table, onnx_table = tables["keras"], tables["onnx"]
    assert len(keras_table) > 0
    assert_allclose(np.asarray(onnx_table["label1"]), np.asarray(keras_table["label1"]), atol=1e-5)
    assert_allclose(np.asarray(keras_table["label0"]) + np.asarray(keras_table["label1"]), 1.0, atol=1e-6)
    decided = (np.asarray(keras_table["label1"]) > threshold).astype(int)
    assert np.array_equal(np.asarray(keras_table["real"]), decided)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--folds", "1"), "--folds"),
        (("--folds", "2", "--resume"), "--resume"),
        (("--folds", "2", "--lr-schedule", "plateau"), "--lr-schedule"),
    ],
)
def test_bad_folds_are_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], message: str
) -> None:
    cube = _cube(tmp_path / "grouped.npz")
    code = call_main(train_main, "--cube", cube, "--model-path", tmp_path / "m", "--model-name", "x", *extra)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert message in err
    assert not (tmp_path / "m" / "CNN_training").exists()


def test_folds_across_workers_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    cube = _cube(tmp_path / "grouped.npz")
    code = call_main(train_main, "--cube", cube, "--model-path", tmp_path / "m", "--model-name", "x", "--folds", "2")
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.splitlines() == [err]
    assert "--folds: an ensemble trains on one machine" in err
    assert not (tmp_path / "m" / "CNN_training").exists()


def test_the_folds_hold_whole_groups_with_both_classes() -> None:
    from otrain.errors import OptionError
    from otrain.train.folds import ensemble_folds

    labels = np.array([1, 1, 0, 0] * 10)
    groups = np.array([f"g{row // 2}" for row in range(40)])
    rows = np.arange(40)
    folds = ensemble_folds(labels, groups, rows, 4, seed=3)
    assert np.array_equal(np.sort(np.concatenate(folds)), rows)
    seen: dict[str, int] = {}
    for index, fold in enumerate(folds):
        assert set(labels[fold]) == {0, 1}
        for group in set(groups[fold]):
            assert seen.setdefault(group, index) == index
    with pytest.raises(OptionError, match="--folds: 11 folds need at least 11 groups of each class"):
        ensemble_folds(labels, groups, rows, 11, seed=3)


def test_an_ensemble_with_tta_and_a_given_test_set(tmp_path: Path) -> None:
    """--tta averages the 8 views inside every member; a caller's test rows are the test set, recorded as given."""
    from otrain.nets.ensemble import ensemble_members
    from otrain.nets.model import load_model
    from otrain.nets.tta import has_tta
    from otrain.options import TrainConfig
    from otrain.train.ensemble import train_ensemble

    cube_file = _cube(tmp_path / "grouped.npz")
    cube = Datacube.load(cube_file)
    test_rows = np.arange(N - 16, N)  # the last 8 objects, both classes
    config = TrainConfig.model_validate(
        {
            "cube": cube_file,
            "model_path": tmp_path / "models",
            "model_name": "tta",
            "folds": 2,
            "tta": True,
            "epochs": 1,
            "architecture": "vgg",
            "normalisation": "robust",
            "tracking": False,
        }
    )
    config.preflight()
    result = train_ensemble(config, cube=cube, test_rows=test_rows)
    folder = tmp_path / "models" / "CNN_training" / "tta"
    card = json.loads((folder / "tta.keras.card.json").read_text())
    assert card["split"]["method"] == "given"
    assert card["split"]["test_ids"] == [str(candid) for candid in cube.candids[test_rows]]
    assert card["test_time_augmentation"]["views"] == 8
    model = load_model(folder / "tta.keras")
    assert all(has_tta(member) for member in ensemble_members(model))
    pixels = cube.cube[:8]
    turned = np.ascontiguousarray(np.rot90(pixels, 1, axes=(1, 2)))
    flipped = np.ascontiguousarray(pixels[:, ::-1])
    scores = model.predict_on_batch(pixels)
    assert_allclose(model.predict_on_batch(turned), scores, atol=2e-5)
    assert_allclose(model.predict_on_batch(flipped), scores, atol=2e-5)
    assert set(result.metrics) >= {"roc_auc", "mcc"}


def test_every_member_starts_from_init_from(workspace: Path, trained_vgg: Path, tmp_path: Path) -> None:
    """--init-from starts each member: with a learning rate of 1e-12 every member keeps the source's weights."""
    import keras

    from otrain.nets.ensemble import ensemble_members
    from otrain.nets.model import load_model

    source = trained_vgg / "tiny_vgg.keras"
    code = call_main(
        train_main,
        *("--cube", workspace / "datacube" / "cube.npz", "--model-path", tmp_path, "--model-name", "warm"),
        *("--architecture", "vgg", "--normalisation", "robust", "--folds", "2", "--epochs", "1"),
        *("--init-from", source, "--learning-rate", "1e-12", "--no-tracking"),
    )
    assert code == 0
    convolution = next(layer for layer in load_model(source).layers if isinstance(layer, keras.layers.Conv2D))
    expected = convolution.get_weights()[0]
    members = ensemble_members(load_model(tmp_path / "CNN_training" / "warm" / "warm.keras"))
    assert len(members) == 2
    for member in members:
        first = next(layer for layer in member.layers if isinstance(layer, keras.layers.Conv2D))
        assert_allclose(first.get_weights()[0], expected, atol=1e-6)
