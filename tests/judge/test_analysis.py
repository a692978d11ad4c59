"""otrain-diagnostics, otrain-plot-results and otrain-grad-cam on a model trained for real."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ROOT, SIZE, call_main
from numpy.testing import assert_allclose
from sklearn import metrics as skm

from otrain.cli.checkinfer import main as checkinfer_main
from otrain.cli.diagnostics import main as diagnostics_main
from otrain.cli.grad_cam import main as grad_cam_main
from otrain.cli.infer import main as infer_main
from otrain.cli.optimise_dataset_size import main as optimise_main
from otrain.cli.plot_results import main as plot_results_main
from otrain.data.datacube import Datacube
from otrain.metrics.evaluation import evaluate, expected_calibration_error, operating_point, threshold_table

pytestmark = pytest.mark.slow


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def probabilities_of(model_file: Path, cube: Datacube) -> np.ndarray:
    from otrain.nets.model import load_model

    return load_model(model_file).predict(cube.cube, verbose=0)[:, 1].astype(np.float64)


def test_every_metric_against_a_hand_computed_case() -> None:
    """Eight candidates worked out on paper; every figure of diagnostics.json is pinned here."""
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    p_real = np.array([0.9, 0.6, 0.4, 0.7, 0.2, 0.1, 0.5, 0.5])
    result = evaluate(labels, p_real, 0.5)  # real if p > 0.5: 0.5 itself is bogus
    assert (result["tp"], result["fn"], result["fp"], result["tn"]) == (2, 2, 1, 3)
    assert result["n"] == 8
    assert result["accuracy"] == pytest.approx(5 / 8)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 4)
    assert result["f1"] == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))  # 4/7
    assert result["fpr"] == pytest.approx(1 / 4)
    assert result["fnr"] == pytest.approx(2 / 4)
    assert result["mcc"] == pytest.approx((2 * 3 - 1 * 2) / np.sqrt(3 * 4 * 4 * 5))
    # ROC AUC: of the 16 (real, bogus) pairs, the real one scores higher in 11 and ties in 1 (0.5 vs 0.5).
    assert result["roc_auc"] == pytest.approx(11.5 / 16)
    # Average precision, ranks 0.9 R, 0.7 B, 0.6 R, {0.5 R, 0.5 B}, 0.4 R: precision at each recall step.
    assert result["average_precision"] == pytest.approx(0.25 * 1 + 0.25 * 2 / 3 + 0.25 * 3 / 5 + 0.25 * 4 / 6)
    # Thresholds: FPR <= 1 % needs no bogus above t (t >= 0.7, where 3 of 4 real are missed).
    assert result["threshold_at_fpr_1pc"] == 0.7
    assert result["fnr_at_fpr_1pc"] == pytest.approx(3 / 4)
    # FNR <= 1 % needs every real above t: t is the largest float32 below 0.4 (exact, not the 0.39 of a
    # grid); there 2 of 4 bogus (0.7, 0.5) are above it.
    assert result["threshold_at_fnr_1pc"] == float(np.nextafter(np.float32(0.4), np.float32(0)))
    assert result["fpr_at_fnr_1pc"] == pytest.approx(2 / 4)
    # F1 + MCC is largest for 0.2 <= t < 0.4 (all real kept, 0.2 and 0.1 out); the lowest such t is given.
    assert result["best_threshold"] == 0.2
    assert result["best_f1"] == pytest.approx(2 * 4 / (2 * 4 + 2 + 0))
    assert result["best_mcc"] == pytest.approx((4 * 2 - 2 * 0) / np.sqrt(6 * 4 * 4 * 2))
    # Calibration: bins [0.1,0.2) [0.2,0.3) [0.4,0.5) [0.5,0.6) [0.6,0.7) [0.7,0.8) [0.9,1.0].
    ece = (
        abs(0.1 - 0) + abs(0.2 - 0) + abs(0.4 - 1) + 2 * abs(0.5 - 0.5) + abs(0.6 - 1) + abs(0.7 - 0) + abs(0.9 - 1)
    ) / 8
    assert result["expected_calibration_error"] == pytest.approx(ece)
    table = threshold_table(labels, p_real)
    assert len(table) == 101
    assert table[50]["threshold"] == 0.5
    assert (table[50]["tp"], table[50]["fp"], table[50]["tn"], table[50]["fn"]) == (2, 1, 3, 2)
    at_half = {key: table[50][key] for key in ("accuracy", "precision", "recall", "f1", "mcc", "fpr", "fnr")}
    assert at_half == pytest.approx({key: result[key] for key in at_half})
    # t = 0.2: 0.2 and 0.1 bogus, everything else real: TP 4, FP 2, TN 2, FN 0.
    assert table[20]["precision"] == pytest.approx(4 / 6)
    assert table[20]["recall"] == 1.0
    assert table[20]["mcc"] == pytest.approx(result["best_mcc"])
    assert table[20]["fnr"] == 0.0
    # t = 1: nothing is called real; precision and MCC have no value and read 0, as in scikit-learn.
    assert (table[100]["tp"], table[100]["fp"], table[100]["precision"], table[100]["mcc"]) == (0, 0, 0.0, 0.0)
    assert (table[100]["fpr"], table[100]["fnr"], table[100]["accuracy"]) == (0.0, 1.0, 0.5)


def test_calibration_error() -> None:
    rng = np.random.default_rng(0)
    p_real = rng.uniform(size=20000)
    calibrated = (rng.uniform(size=20000) < p_real).astype(int)
    assert expected_calibration_error(calibrated, p_real) < 0.02
    assert expected_calibration_error(np.ones(100, int), np.full(100, 0.3)) == pytest.approx(0.7)


@pytest.mark.parametrize(
    "cube_name", ["validation_set/datacube/cube_validation.npz", "test_set/datacube/cube_test.npz"]
)
def test_diagnostics_json_holds_scikit_learns_figures_for_the_models_predictions(
    trained: Path, tmp_path: Path, cube_name: str
) -> None:
    """Wiring, not arithmetic: otrain computes these with scikit-learn too, so this checks that the
    right predictions and labels reach it and the right figure lands under each key (the
    arithmetic is pinned by the hand-computed case above)."""
    out = tmp_path / "diag"
    (out / "validation_set" / "misclassified" / "images_FP").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / "validation_set" / "misclassified" / "images_FP" / "keep.txt").write_text("mine too")
    cube_file = trained / cube_name
    model = trained / "tiny.keras"
    status = call_main(
        diagnostics_main, "--path-cube-validation", cube_file, "--model-path", model, "--path-diagnostics", out
    )
    assert status == 0
    result = json.loads((out / "diagnostics.json").read_text())
    cube = Datacube.load(cube_file)
    p_real = probabilities_of(model, cube)
    predicted = (p_real > 0.5).astype(int)
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(cube.labels, predicted))
    assert result["precision"] == pytest.approx(skm.precision_score(cube.labels, predicted, zero_division=0))
    assert result["recall"] == pytest.approx(skm.recall_score(cube.labels, predicted))
    assert result["f1"] == pytest.approx(skm.f1_score(cube.labels, predicted))
    assert result["mcc"] == pytest.approx(skm.matthews_corrcoef(cube.labels, predicted))
    assert result["roc_auc"] == pytest.approx(skm.roc_auc_score(cube.labels, p_real))
    assert result["average_precision"] == pytest.approx(skm.average_precision_score(cube.labels, p_real))
    (tn, fp), (fn, tp) = skm.confusion_matrix(cube.labels, predicted)
    assert (result["tn"], result["fp"], result["fn"], result["tp"]) == (tn, fp, fn, tp)
    # The exact operating points of these predictions, up to the last bits in which the scorer that
    # diagnostics chose and Keras' predict may round a P(real) apart (a cutout at the threshold).
    at_fnr, at_fpr = (operating_point(cube.labels, p_real, **{target: 0.01}) for target in ("target_fnr", "target_fpr"))
    one = 1 / min(np.count_nonzero(cube.labels == 1), np.count_nonzero(cube.labels == 0))
    assert result["threshold_at_fnr_1pc"] == pytest.approx(at_fnr["threshold"], abs=1e-4)
    assert result["fpr_at_fnr_1pc"] == pytest.approx(at_fnr["fpr"], abs=one)
    assert result["threshold_at_fpr_1pc"] == pytest.approx(at_fpr["threshold"], abs=1e-4)
    assert result["fnr_at_fpr_1pc"] == pytest.approx(at_fpr["fnr"], abs=one)
    folders = out / "validation_set"
    assert len(list((folders / "misclassified" / "images_FP").glob("cutout_*.png"))) == fp
    assert len(list((folders / "misclassified" / "images_FN").glob("cutout_*.png"))) == fn
    assert len(list((folders / "well_classified" / "images_TP").glob("cutout_*.png"))) == min(tp, 30)
    assert len(list((folders / "well_classified" / "images_TN").glob("cutout_*.png"))) == min(tn, 30)
    assert len(read_csv(out / "threshold_table.csv")) == 101
    assert (out / "notes.txt").read_text() == "mine"
    assert (folders / "misclassified" / "images_FP" / "keep.txt").read_text() == "mine too"


def test_diagnostics_exports_n_examples_chosen_by_seed(trained: Path, tmp_path: Path) -> None:
    cube_file, model = trained / "test_set/datacube/cube_test.npz", trained / "tiny.keras"

    def exported(out: Path, *extra: str) -> dict[str, bytes]:
        # At threshold 1 nothing is called real: every bogus cutout is a true negative, so there
        # is a choice to draw from whatever the tiny model learnt.
        options = ("--path-cube-validation", cube_file, "--model-path", model, "--path-diagnostics", out)
        assert call_main(diagnostics_main, *options, "--no-tracking", "--threshold", "1", *extra) == 0
        return {str(path.relative_to(out)): path.read_bytes() for path in sorted(out.rglob("cutout_*.png"))}

    first = exported(tmp_path / "a", "--n-examples", "2", "--seed", "5")
    again = exported(tmp_path / "b", "--n-examples", "2", "--seed", "5")
    other = exported(tmp_path / "c", "--n-examples", "2", "--seed", "6")
    metrics = json.loads((tmp_path / "a" / "diagnostics.json").read_text())
    assert metrics["tp"] == metrics["fp"] == 0
    assert metrics["tn"] > 2
    well = [name for name in first if "well_classified" in name]
    assert len(well) == 2
    assert len(first) - len(well) == metrics["fn"]
    assert first == again  # the same candidates, drawn the same way
    assert {name: first[name] for name in well} != {name: other[name] for name in well}
    assert len(exported(tmp_path / "d", "--n-examples", "0")) == metrics["fp"] + metrics["fn"]


def test_plot_results_figures_and_their_data(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "plots"
    out.mkdir()
    (out / "paper_figure.pdf").write_text("a user's file")
    cube_file = trained / "test_set" / "datacube" / "cube_test.npz"
    status = call_main(
        plot_results_main,
        "--path-cube-validation",
        cube_file,
        "--model-path",
        trained / "tiny.keras",
        "--path-plots",
        out,
        "--backend",
        "keras",  # checked against the Keras model's own predictions below, to 1e-5 relative
    )
    assert status == 0
    for name in (
        "errmag_ROC",
        "mag_ROC",
        "errmag_recall",
        "mag_recall",
        "model_F1_MCC",
        "prob_distribution",
        "calibration",
    ):
        assert (out / f"{name}.png").stat().st_size > 5000, name
        assert (out / f"{name}.csv").stat().st_size > 0, name
    assert (out / "paper_figure.pdf").read_text() == "a user's file"
    cube = Datacube.load(cube_file)
    p_real = probabilities_of(trained / "tiny.keras", cube)
    distribution = read_csv(out / "prob_distribution.csv")
    assert [int(row["label"]) for row in distribution] == cube.labels.tolist()
    assert_allclose([float(row["p_real"]) for row in distribution], p_real, rtol=1e-5)
    table = read_csv(out / "model_F1_MCC.csv")
    assert len(table) == 101
    roc = read_csv(out / "mag_ROC.csv")
    per_bin = {int(row["bin"]): int(row["n"]) for row in roc}
    usable = cube.mags[np.isfinite(cube.mags) & (cube.mags > 0) & (cube.mags != 99) & (cube.mags <= 25)]
    edges = np.concatenate([[0.0], np.linspace(usable.min(), 25.0, 6)])
    for index, count in per_bin.items():  # half-open bins, the last one closed: nobody twice
        low, high = edges[index], edges[index + 1]
        inside = (cube.mags >= low) & ((cube.mags <= high) if index == 5 else (cube.mags < high))
        assert count == int(inside.sum())
    first = min(per_bin)
    low, high = edges[first], edges[first + 1]
    inside = (cube.mags >= low) & ((cube.mags <= high) if first == 5 else (cube.mags < high))
    fpr, tpr, _ = skm.roc_curve(cube.labels[inside], p_real[inside])
    rows = [row for row in roc if int(row["bin"]) == first]
    assert_allclose([float(row["tpr"]) for row in rows], tpr, atol=1e-6)
    assert_allclose([float(row["fpr"]) for row in rows], fpr, atol=1e-6)
    calibration = read_csv(out / "calibration.csv")
    assert sum(int(row["count"]) for row in calibration) == len(cube)


def assert_same_numbers(ours: Any, theirs: Any, where: str) -> None:
    """The same keys and rows (dicts, lists of CSV rows); numbers equal to 1e-5, anything else equal."""
    if isinstance(theirs, list):
        assert len(ours) == len(theirs), where
        for index, (row, other) in enumerate(zip(ours, theirs, strict=True)):
            assert_same_numbers(row, other, f"{where} row {index}")
    elif isinstance(theirs, dict):
        assert ours.keys() == theirs.keys(), where
        for key, other in theirs.items():
            assert_same_numbers(ours[key], other, f"{where} {key}")
    else:
        try:
            number, other = float(ours), float(theirs)
        except (TypeError, ValueError):
            assert ours == theirs, where
            return
        assert_allclose(number, other, rtol=0, atol=1e-5, err_msg=where)


def test_diagnostics_and_plot_results_give_the_same_numbers_with_either_backend(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ONNX twin and the Keras model: every figure's data and every metric agree to 1e-5."""
    cube_file, model = trained / "test_set" / "datacube" / "cube_test.npz", trained / "tiny.keras"
    assert (trained / "tiny.onnx").is_file()
    written: dict[str, dict[str, Any]] = {}
    for backend in ("keras", "onnx"):
        diagnostics, plots = tmp_path / backend / "diagnostics", tmp_path / backend / "plots"
        common = ("--path-cube-validation", cube_file, "--model-path", model, "--backend", backend, "--no-tracking")
        assert call_main(diagnostics_main, *common, "--path-diagnostics", diagnostics) == 0
        captured = capsys.readouterr()
        assert f"candidates scored with {backend}," in captured.out
        assert call_main(plot_results_main, *common, "--path-plots", plots) == 0
        captured = capsys.readouterr()
        assert captured.out.startswith(f"scored with {backend}; 14 files written to {plots}/")
        files = {"diagnostics.json": json.loads((diagnostics / "diagnostics.json").read_text())}
        files["threshold_table.csv"] = read_csv(diagnostics / "threshold_table.csv")
        files |= {f"plots/{path.name}": read_csv(path) for path in sorted(plots.glob("*.csv"))}
        files["exported"] = {
            folder.name: len(list(folder.glob("cutout_*.png"))) for folder in diagnostics.glob("validation_set/*/*")
        }
        written[backend] = files
    keras, onnx = written["keras"], written["onnx"]
    assert len(keras) == 10
    assert keras.keys() == onnx.keys()
    assert len(keras["plots/prob_distribution.csv"]) == len(Datacube.load(cube_file))
    for name in keras:
        assert_same_numbers(onnx[name], keras[name], name)


def test_analysis_commands_scoring_with_onnx_do_not_import_tensorflow(
    trained: Path, tracking_uri: str, tmp_path: Path
) -> None:
    """With the twin (auto), diagnostics and plot-results score, write and log to MLflow without TensorFlow."""
    probe = (
        "import sys\n"
        "from otrain.cli import diagnostics, plot_results\n"
        "cube, model, out = sys.argv[1:]\n"
        "common = ['--path-cube-validation', cube, '--model-path', model]\n"
        "for main, folder in ((diagnostics.main, '--path-diagnostics'), (plot_results.main, '--path-plots')):\n"
        "    try:\n"
        "        main([*common, folder, out + folder])\n"
        "    except SystemExit as stop:\n"
        "        print('exit', stop.code)\n"
        "print('tensorflow imported:', 'tensorflow' in sys.modules)\n"
    )
    cube_file = trained / "test_set" / "datacube" / "cube_test.npz"
    result = subprocess.run(
        [sys.executable, "-c", probe, str(cube_file), str(trained / "tiny.keras"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "OTRAIN_PROGRESS": "0"},
        cwd=ROOT,
    )
    lines = result.stdout.splitlines()
    assert [line for line in lines if line.startswith("exit")] == ["exit 0", "exit 0"], result.stderr
    assert any("candidates scored with onnx" in line for line in lines)
    assert any(line.startswith("scored with onnx;") for line in lines)
    assert lines[-1] == "tensorflow imported: False"
    assert "could not log to MLflow" not in result.stderr
    assert result.stderr.count("logged to MLflow run") == 2
    assert (tmp_path / "out--path-diagnostics" / "diagnostics.json").is_file()
    assert (tmp_path / "out--path-plots" / "calibration.png").is_file()


def test_grad_cam_outputs_and_small_classes(trained: Path, tmp_path: Path) -> None:
    cam = tmp_path / "cam"
    (cam / "TP").mkdir(parents=True)
    (cam / "TP" / "my_notes.txt").write_text("mine")
    cube_file = trained / "validation_set" / "datacube" / "cube_validation.npz"
    status = call_main(
        grad_cam_main,
        *("--cube", cube_file, "--model-path", trained / "tiny.keras", "--cam_path", cam, "--n_random", 500),
        *("--method", "gradcam"),
    )
    assert status == 0
    cube = Datacube.load(cube_file)
    predicted = probabilities_of(trained / "tiny.keras", cube) > 0.5
    expected = {
        "TP": int(np.sum(predicted & (cube.labels == 1))),
        "TN": int(np.sum(~predicted & (cube.labels == 0))),
        "FP": int(np.sum(predicted & (cube.labels == 0))),
        "FN": int(np.sum(~predicted & (cube.labels == 1))),
    }
    for outcome, count in expected.items():
        assert len(list((cam / outcome).glob("cutout_CAM_*.png"))) == count
        assert (cam / f"{outcome}_summary.png").is_file() == (count > 0)
    assert (cam / "TP" / "my_notes.txt").read_text() == "mine"


def test_centre_share_of_maps() -> None:
    from otrain.judge.gradcam import centre_share

    size = 21
    y, x = np.mgrid[0:size, 0:size]
    distance = np.hypot(y - 10, x - 10)
    on_source = np.exp(-0.5 * (distance / 1.0) ** 2)  # sigma 1 px: all within 2 FWHM of 3 px
    uniform = np.ones((size, size))
    border = (distance > 9).astype(float)
    share, area = centre_share(np.stack([on_source]), np.array([3.0]))
    assert share == pytest.approx(1.0, abs=1e-6)
    assert area == pytest.approx(np.mean(distance <= 6))
    assert centre_share(np.stack([uniform]), np.array([3.0]))[0] == pytest.approx(area)
    assert centre_share(np.stack([border]), np.array([3.0]))[0] == 0.0
    # An unknown FWHM counts as the median of the others; a map that is zero everywhere is left out.
    share, _ = centre_share(np.stack([on_source, np.zeros((size, size)), border]), np.array([3.0, 3.0, np.nan]))
    assert share == pytest.approx(0.5)
    assert np.isnan(centre_share(np.zeros((0, size, size)), np.zeros(0))[0])


def test_grad_cam_plus_plus(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cube_file = trained / "test_set" / "datacube" / "cube_test.npz"
    arguments = ("--cube", cube_file, "--model-path", trained / "tiny.keras", "--cam_path", tmp_path, "--n_random", 2)
    assert call_main(grad_cam_main, *arguments, "--method", "gradcam++") == 0
    out = capsys.readouterr().out
    assert "Grad-CAM (gradcam++) maps:" in out
    cube = Datacube.load(cube_file)
    predicted = probabilities_of(trained / "tiny.keras", cube) > 0.5
    true_positives = int(np.sum(predicted & (cube.labels == 1)))
    shares = re.search(r"true positives: \d+% of the maps within 2 FWHM of the centre, on \d+% of the pixels", out)
    assert (shares is not None) == (true_positives > 0), out  # the share is of the true positives' maps
    assert len(list((tmp_path / "TP").glob("cutout_CAM_*.png"))) == min(2, true_positives)
    true_negatives = int(np.sum(~predicted & (cube.labels == 0)))
    assert (tmp_path / "TN_summary.png").is_file() == (true_negatives > 0)  # a grid per outcome that occurred
    if true_negatives:
        assert (tmp_path / "TN_summary.png").stat().st_size > 2000


def test_grad_cam_explains_the_vgg_network(trained_vgg: Path, tmp_path: Path) -> None:
    model_file = trained_vgg / "tiny_vgg.keras"
    cube_file = trained_vgg / "test_set" / "datacube" / "cube_test.npz"
    arguments = ("--cube", cube_file, "--model-path", model_file, "--cam_path", tmp_path, "--n_random", 3)
    assert call_main(grad_cam_main, *arguments) == 0
    cube = Datacube.load(cube_file)
    predicted = probabilities_of(model_file, cube) > 0.5
    for outcome, cases in {"TP": predicted & (cube.labels == 1), "TN": ~predicted & (cube.labels == 0)}.items():
        assert len(list((tmp_path / outcome).glob("cutout_CAM_*.png"))) == min(3, int(np.sum(cases)))
        assert (tmp_path / f"{outcome}_summary.png").is_file() == bool(np.any(cases)), outcome


@pytest.mark.parametrize(
    ("training", "model_name", "grid"),
    [("trained", "tiny.keras", SIZE // 4), ("trained_vgg", "tiny_vgg.keras", SIZE // 2)],  # after 2 or 1 poolings
)
def test_grad_cam_map_is_the_real_grad_cam(
    request: pytest.FixtureRequest, training: str, model_name: str, grid: int
) -> None:
    """tf-keras-vis against an independent GradientTape Grad-CAM on the last convolution's rectified maps."""
    import tensorflow as tf
    from keras import layers

    from otrain.judge.gradcam import explained_layer, gradcam_maps
    from otrain.nets.model import last_conv_layer, load_model

    folder = request.getfixturevalue(training)
    model = load_model(folder / model_name)
    pixels = Datacube.load(folder / "test_set" / "datacube" / "cube_test.npz").cube[:8]
    classes = np.array([1, 0] * 4)
    ours = gradcam_maps(model, pixels, classes, expand=False, normalise=False)

    from otrain.nets.model import Calibration

    assert isinstance(model.layers[-1], Calibration)  # the map explains the network before it
    convolution, output = explained_layer(model), model.layers[-2]
    last = model.layers.index(last_conv_layer(model))
    if training == "trained":  # the O'TRAIN convolutions carry their ReLU
        assert convolution is model.layers[last]
    else:  # vgg: Conv2D, BatchNormalization, ReLU
        assert isinstance(model.layers[last + 1], layers.BatchNormalization)
        assert convolution is model.layers[last + 2]
        assert isinstance(convolution, layers.ReLU)
    with tf.GradientTape() as tape:
        hidden = tf.convert_to_tensor(pixels)
        for layer in model.layers[:-2]:
            hidden = layer(hidden, training=False)
            if layer is convolution:
                features = hidden
                tape.watch(features)
        logits = tf.matmul(hidden, output.kernel) + output.bias  # the class score before softmax
        score = tf.gather(logits, classes, axis=1, batch_dims=1)
    gradients = tape.gradient(score, features)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    reference = tf.nn.relu(tf.reduce_sum(features * weights, axis=-1)).numpy()
    assert ours.shape == reference.shape == (8, grid, grid)
    assert np.ptp(reference) > 0
    assert_allclose(ours, reference, atol=1e-5)


def test_bad_inputs_of_the_analysis_commands(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import keras

    model = trained / "tiny.keras"
    bad_cube = tmp_path / "bad.npz"
    bad_cube.write_text("not a cube")
    assert (
        call_main(
            diagnostics_main,
            "--path-cube-validation",
            bad_cube,
            "--model-path",
            model,
            "--path-diagnostics",
            tmp_path / "d",
        )
        == 1
    )
    assert f"{bad_cube}: not a NumPy .npz file" in capsys.readouterr().err
    cube_file = trained / "test_set" / "datacube" / "cube_test.npz"
    assert (
        call_main(
            plot_results_main,
            "--path-cube-validation",
            cube_file,
            "--model-path",
            model,
            "--path-plots",
            tmp_path / "p",
            "--threshold",
            "2",
        )
        == 2
    )
    assert "--threshold: must be a probability in [0, 1], got 2.0" in capsys.readouterr().err
    dense = keras.Sequential(
        [keras.Input((SIZE, SIZE, 1)), keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")]
    )
    dense_file = tmp_path / "dense.keras"
    dense.save(dense_file)
    assert call_main(grad_cam_main, "--cube", cube_file, "--model-path", dense_file, "--cam_path", tmp_path / "c") == 1
    assert capsys.readouterr().err == (
        f"otrain-grad-cam: error: {dense_file}: model has no Conv2D layer; Grad-CAM explains a convolutional layer\n"
    )
    assert not (tmp_path / "c").exists(), "no empty output folder is left behind"


# ---------------------------------------------------------------------------------------------
# otrain-checkinfer


def scored_night(workspace: Path, trained: Path) -> Path:
    night = workspace / "survey" / "night"
    if not (night / "infer_results.dat").exists():
        assert call_main(infer_main, "--cutouts", night, "--model", trained / "tiny.keras") == 0
    return night


def test_checkinfer_matches_injected_sources(workspace: Path, trained: Path, tmp_path: Path) -> None:
    from astropy.io import ascii as astropy_ascii

    night = scored_night(workspace, trained)
    (tmp_path / "mine.txt").write_text("mine")
    status = call_main(
        checkinfer_main,
        *("--plots", tmp_path, "--crossmatch", night, "--infer", night / "infer_results.dat"),
        *("--maglim", "12", "16", "18", "20", "--cnn-problim", "0.2", "0.5", "0.8", "0.9"),
        *("--fwhm-ratio-lower", "0.3", "--fwhm-ratio-upper", "5"),
    )
    assert status == 0
    out = tmp_path / "CheckInfer"
    for name in (
        "distrib_CNN_prob_sim.png",
        "distrib_CNN_prob_all.png",
        "distrib_CNNprob_all_and_sim.png",
        "fraction_per_bin.png",
        "distrib_FWHM_simulation.png",
        "distrib_FWHM_real_vs_sim.png",
    ):
        assert (out / name).stat().st_size > 5000, name
    assert (tmp_path / "mine.txt").read_text() == "mine"
    crossmatch = astropy_ascii.read(night / "crossmatch.dat", format="commented_header")
    scores = astropy_ascii.read(night / "infer_results.dat", format="commented_header")
    p_of = {str(candid): float(p) for candid, p in zip(scores["cand_ID"], scores["label1"], strict=True)}
    expected = [p_of[str(c)] for c in crossmatch["closest_candID"] if str(c) in p_of]
    summary = json.loads((out / "checkinfer_summary.json").read_text())
    assert summary["n_injected"] == len(crossmatch)
    assert summary["n_detected"] == sum(1 for c in crossmatch["closest_candID"] if str(c) != "None")
    assert summary["n_scored"] == len(expected) > 0
    for limit in (0.2, 0.5, 0.8, 0.9):
        assert summary[f"recovered_above_{limit:g}"] == sum(1 for p in expected if p > limit)
    matches = read_csv(out / "checkinfer_matches.csv")
    assert sorted(float(row["label1"]) for row in matches) == sorted(expected)


def test_checkinfer_matches_candidate_ids_as_text_never_as_floats(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ZTF's 19-digit candids differ where a float64 cannot tell them apart; ``00123`` is not ``123``."""
    infer = tmp_path / "infer_results.dat"
    infer.write_text(
        "# cand_ID label1 FWHM FWHMPSF\n"
        "1285423380015015016 0.512 2.0 2.0\n"
        "1285423380015015017 0.460 2.0 2.0\n"
        "123 0.100 2.0 2.0\n"
        "00123 0.900 2.0 2.0\n"
        "3000020 0.700 2.0 2.0\n"
    )
    crossmatch = tmp_path / "crossmatch.dat"
    crossmatch.write_text(
        "# idx closest_candID mag\n"
        "0 1285423380015015017 17.0\n"
        "1 00123 17.5\n"
        "2 3000020.0 18.0\n"  # a column written through floats
        "3 None 19.0\n"
    )
    status = call_main(
        checkinfer_main, "--plots", tmp_path / "p", "--crossmatch", crossmatch, "--infer", infer, "--no-tracking"
    )
    assert status == 0
    assert "more than once" not in capsys.readouterr().err
    out = tmp_path / "p" / "CheckInfer"
    matches = {row["cand_ID"]: float(row["label1"]) for row in read_csv(out / "checkinfer_matches.csv")}
    assert matches == {"1285423380015015017": 0.460, "00123": 0.900, "3000020": 0.700}
    summary = json.loads((out / "checkinfer_summary.json").read_text())
    assert (summary["n_injected"], summary["n_detected"], summary["n_scored"]) == (4, 3, 3)
    assert summary["recovered_above_0.5"] == 2


def test_checkinfer_bad_inputs(
    workspace: Path, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    night = scored_night(workspace, trained)
    empty = tmp_path / "crossmatch.dat"
    empty.write_text(
        "# idx filename Xpos Ypos RA Dec mag filter count_ADU filename2 Nmatches closest_candID all_candIDs\n"
    )
    assert call_main(checkinfer_main, "--plots", tmp_path, "--crossmatch", empty, "--infer", night) == 1
    assert "crossmatch table has no injected source" in capsys.readouterr().err
    assert call_main(checkinfer_main, "--plots", tmp_path, "--crossmatch", tmp_path / "nowhere", "--infer", night) == 2
    assert "--crossmatch: " in capsys.readouterr().err
    status = call_main(
        checkinfer_main, "--plots", tmp_path, "--crossmatch", night, "--infer", night, "--maglim", "21", "18"
    )
    assert status == 2
    assert "--maglim: give one or more values in increasing order" in capsys.readouterr().err
    assert not (tmp_path / "CheckInfer" / "checkinfer_summary.json").exists()


# ---------------------------------------------------------------------------------------------
# otrain-optimise-dataset-size


def test_dataset_size_study(
    workspace: Path, tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    status = call_main(
        optimise_main,
        *("--cube", workspace / "datacube" / "cube.npz", "--model-path", tmp_path, "--model-name", "study"),
        *("--epochs", "1", "--n_sections", "3", "--dropout", "0.1", "--outdir", tmp_path / "out"),
        *("--normalisation", "asinh", "--patience", "0", "--architecture", "vgg"),
        *("--monitor", "val_roc_auc", "--lr-schedule", "cosine"),
    )
    assert status == 0
    rows = read_csv(tmp_path / "out" / "study_dataset_size.csv")
    sizes = [int(row["size"]) for row in rows]
    assert len(sizes) == 2
    assert sizes[0] < sizes[1]
    for name in ("study_scores_dataset_size.png", "study_ecart_accuracy_size.png", "study_loss_dataset_size.png"):
        assert (tmp_path / "out" / name).stat().st_size > 5000
    tests = [
        Datacube.load(tmp_path / "CNN_training" / f"study_size_{size}" / "test_set" / "datacube" / "cube_test.npz")
        for size in sizes
    ]
    assert tests[0].content_hash() == tests[1].content_hash()  # one fixed test set for every size
    cards = [
        json.loads(
            (tmp_path / "CNN_training" / f"study_size_{size}" / f"study_size_{size}.keras.card.json").read_text()
        )
        for size in sizes
    ]
    assert [card["split_sizes"]["train"] for card in cards] == sizes
    assert all(card["params"]["dropout"] == 0.1 for card in cards)  # --dropout is honoured
    assert all(card["architecture"] == "vgg" for card in cards)
    assert all((card["normalisation"], card["params"]["monitor"]) == ("asinh", "val_roc_auc") for card in cards)
    assert all(card["params"]["lr_schedule"] == "cosine" for card in cards)
    client = MlflowClient(tracking_uri)
    children = [
        json.loads((tmp_path / "CNN_training" / f"study_size_{size}" / "mlflow_run.json").read_text()) for size in sizes
    ]
    parents = {client.get_run(child["run_id"]).data.tags.get("mlflow.parentRunId") for child in children}
    assert len(parents) == 1
    assert None not in parents


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "the table is empty (expected a header line like '# cand_ID label1 FWHM FWHMPSF ...')"),
        (b"\x00\x01 binary \xff garbage\n" * 5, "not a readable commented_header table (not UTF-8 text)"),
        ("# cand_ID label1\n1 0.5 7 8 9\n2\n", "not a readable commented_header table"),
    ],
    ids=["empty", "binary", "ragged"],
)
def test_checkinfer_on_an_unreadable_table_is_one_line(
    workspace: Path,
    trained: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str | bytes,
    message: str,
) -> None:
    night = scored_night(workspace, trained)
    bad = tmp_path / "infer_results.dat"
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert call_main(checkinfer_main, "--plots", tmp_path / "p", "--crossmatch", night, "--infer", bad) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"otrain-checkinfer: error: {bad}: {message}")
    assert not (tmp_path / "p").exists()


# ---------------------------------------------------------------------------------------------
# Output folders a user names: a command replaces its own files there, never someone else's.


def test_analysis_commands_replace_their_own_files_and_refuse_a_users(
    trained: Path, workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cube = trained / "test_set" / "datacube" / "cube_test.npz"
    model = trained / "tiny.keras"
    night = scored_night(workspace, trained)
    # Each "user's file" stands where the command always writes, whatever the tiny model learnt on
    # this CPU: at threshold 1 nothing is called real, so every real cutout is a false negative of
    # diagnostics and every bogus one a true negative of Grad-CAM.
    commands = {
        "diagnostics": (
            diagnostics_main,
            (
                *("--path-cube-validation", cube, "--model-path", model, "--path-diagnostics", tmp_path / "diag"),
                *("--threshold", "1"),
            ),
            tmp_path / "diag" / "validation_set" / "misclassified" / "images_FN" / "cutout_0.png",
            "--path-diagnostics",
        ),
        "plot-results": (
            plot_results_main,
            ("--path-cube-validation", cube, "--model-path", model, "--path-plots", tmp_path / "plots"),
            tmp_path / "plots" / "calibration.csv",
            "--path-plots",
        ),
        "grad-cam": (
            grad_cam_main,
            (
                "--cube",
                cube,
                "--model-path",
                model,
                "--cam_path",
                tmp_path / "cam",
                "--n_random",
                "2",
                "--threshold",
                "1",
            ),
            tmp_path / "cam" / "TN_summary.png",
            "--cam_path",
        ),
        "checkinfer": (
            checkinfer_main,
            ("--plots", tmp_path / "check", "--crossmatch", night, "--infer", night),
            tmp_path / "check" / "CheckInfer" / "checkinfer_summary.json",
            "--plots",
        ),
    }
    for name, (main, args, users_file, flag) in commands.items():
        assert call_main(main, *args, "--no-tracking") == 0, name
        assert call_main(main, *args, "--no-tracking") == 0, f"{name}: its own files are replaced"
        capsys.readouterr()
        users_file.parent.mkdir(parents=True, exist_ok=True)
        users_file.write_bytes(b"a user's file, not a figure or table of otrain")
        assert call_main(main, *args, "--no-tracking") == 2, name
        err = capsys.readouterr().err
        assert err.startswith(f"otrain-{name}: error: {flag}: '{users_file}' exists and was not written by"), err
        assert users_file.read_bytes() == b"a user's file, not a figure or table of otrain"
        assert call_main(main, *args, "--no-tracking", "--overwrite") == 0, name
        assert users_file.read_bytes() != b"a user's file, not a figure or table of otrain"
    # An output that is an input: never, even with --overwrite.
    status = call_main(
        diagnostics_main, "--path-cube-validation", cube, "--model-path", model, "--path-diagnostics", tmp_path / "x"
    )
    assert status == 0
    shutil.copy(cube, tmp_path / "x" / "diagnostics.json")
    same = tmp_path / "x" / "diagnostics.json"
    status = call_main(
        diagnostics_main, "--path-cube-validation", same, "--model-path", model, "--path-diagnostics", tmp_path / "x",
        "--overwrite",
    )  # fmt: skip
    assert status == 2
    assert f"--path-diagnostics: '{same}' is an input of otrain-diagnostics" in capsys.readouterr().err


def test_promote_and_serve_on_an_unreachable_server_advise_what_they_offer(
    trained: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Neither command has --no-tracking: the one line must not suggest it."""
    from otrain.cli.promote import main as promote_main
    from otrain.cli.serve import main as serve_main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the discard port: nothing listens
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])  # free once closed
    serve_options = ("--model", "models:/otrain-cnn@champion", "--port", port)
    for main, options in ((promote_main, ("--model-dir", trained)), (serve_main, serve_options)):
        assert call_main(main, *options) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert "cannot reach MLflow tracking server http://127.0.0.1:9 (" in err
        assert err.rstrip().endswith("; set MLFLOW_TRACKING_URI to a reachable store"), err


def test_promote_report_and_study_outputs_follow_the_same_rule(
    trained: Path, workspace: Path, tmp_path: Path, tracking_uri: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from otrain.cli.promote import main as promote_main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    report = tmp_path / "promotion.json"
    report.write_text('{"my": "numbers"}')
    assert call_main(promote_main, "--model-dir", trained, "--registered-name", "rule", "--report", report) == 2
    assert f"--report: '{report}' exists and was not written by otrain-promote" in capsys.readouterr().err
    assert report.read_text() == '{"my": "numbers"}'
    model_card = trained / "tiny.keras.card.json"
    assert call_main(promote_main, "--model-dir", trained, "--report", model_card, "--overwrite") == 2
    assert "is an input of otrain-promote" in capsys.readouterr().err
    assert (
        call_main(promote_main, "--model-dir", trained, "--registered-name", "rule", "--report", report, "--overwrite")
        == 0
    )
    assert json.loads(report.read_text())["registered_name"] == "rule"
    out = tmp_path / "study"
    out.mkdir()
    (out / "s_scores_dataset_size.png").write_bytes(b"\x89PNG not ours")
    status = call_main(
        optimise_main, "--cube", workspace / "datacube" / "cube.npz", "--model-path", tmp_path, "--model-name", "s",
        "--outdir", out, "--epochs", "1", "--n_sections", "2", "--no-tracking",
    )  # fmt: skip
    assert status == 2
    assert f"--outdir: '{out / 's_scores_dataset_size.png'}' exists and was not written" in capsys.readouterr().err
    assert not (tmp_path / "CNN_training").exists()
    status = call_main(
        optimise_main, "--cube", workspace / "datacube" / "cube.npz", "--model-path", tmp_path, "--model-name", "s",
        "--outdir", out, "--epochs", "1", "--n_sections", "2", "--no-tracking", "--overwrite",
    )  # fmt: skip
    assert status == 0
    from otrain.io.outputs import png_software

    assert png_software(out / "s_scores_dataset_size.png").startswith("otrain ")


def test_dataset_size_study_refuses_sections_smaller_than_ten_cutouts(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cube = workspace / "datacube" / "cube.npz"
    status = call_main(
        optimise_main, "--cube", cube, "--model-path", tmp_path, "--model-name", "s", "--outdir", tmp_path / "out",
        "--epochs", "1", "--n_sections", "60", "--no-tracking",
    )  # fmt: skip
    assert status == 2
    err = capsys.readouterr().err.strip()
    from otrain.data.datacube import stratified_split

    pool = len(stratified_split(Datacube.load(cube).labels, 0.15, 0.15, 42).train)
    assert err == (
        f"otrain-optimise-dataset-size: error: --n_sections: 60 sections of the {pool} training cutouts of {cube} "
        f"would make sizes below 10 cutouts; give at most {pool // 10 + 1}"
    )
    assert not (tmp_path / "CNN_training").exists()
    assert not (tmp_path / "out").exists()


def test_dataset_size_study_splits_by_group_as_split_by_says(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from otrain.data.datacube import grouped_split, stratified_split

    full = Datacube.load(workspace / "datacube" / "cube.npz")
    groups = np.array([f"object-{row // 3}" for row in range(len(full))])
    grouped = Datacube(**{**full.__dict__, "groups": groups, "group_keyword": "OBJECT"}).save(tmp_path / "g.npz")
    common = ("--model-path", tmp_path, "--model-name", "s", "--outdir", tmp_path / "out", "--epochs", "1")
    # The fixed validation and test sets are drawn by group (--split-by auto): the pool is what remains.
    status = call_main(optimise_main, "--cube", grouped, *common, "--n_sections", "60", "--no-tracking")
    assert status == 2
    pool = len(grouped_split(full.labels, groups, 0.15, 0.15, 42).train)
    assert pool != len(stratified_split(full.labels, 0.15, 0.15, 42).train)  # not the split by row
    assert f"--n_sections: 60 sections of the {pool} training cutouts of {grouped}" in capsys.readouterr().err
    # --split-by group on a cube without groups: one line, nothing written.
    plain = workspace / "datacube" / "cube.npz"
    status = call_main(optimise_main, "--cube", plain, *common, "--split-by", "group", "--no-tracking")
    assert status == 1
    err = capsys.readouterr().err
    assert err == (
        f"otrain-optimise-dataset-size: error: {plain}: --split-by group: the cube records no groups; convert the "
        "cutouts with otrain-convert --group-keyword KEYWORD (for example the ZTF objectId)\n"
    )
    assert not (tmp_path / "CNN_training").exists()
    assert not (tmp_path / "out").exists()
