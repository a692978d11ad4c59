"""otrain-diagnostics, otrain-plot-results and otrain-grad-cam on a model trained for real."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SIZE, call_main
from numpy.testing import assert_allclose
from sklearn import metrics as skm

from otrain.cli.checkinfer import main as checkinfer_main
from otrain.cli.diagnostics import main as diagnostics_main
from otrain.cli.grad_cam import main as grad_cam_main
from otrain.cli.infer import main as infer_main
from otrain.cli.optimise_dataset_size import main as optimise_main
from otrain.cli.plot_results import main as plot_results_main
from otrain.datacube import Datacube
from otrain.evaluation import evaluate, expected_calibration_error, threshold_table

pytestmark = pytest.mark.slow


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def probabilities_of(model_file: Path, cube: Datacube) -> np.ndarray:
    from otrain.model import load_model

    return load_model(model_file).predict(cube.cube, verbose=0)[:, 1].astype(np.float64)


def test_metrics_against_a_hand_computed_confusion_matrix() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    p_real = np.array([0.9, 0.6, 0.4, 0.7, 0.2, 0.1, 0.5, 0.5])
    result = evaluate(labels, p_real, 0.5)  # real if p > 0.5: 0.5 itself is bogus
    assert (result["tp"], result["fn"], result["fp"], result["tn"]) == (2, 2, 1, 3)
    assert result["accuracy"] == pytest.approx(5 / 8)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 4)
    assert result["fpr"] == pytest.approx(1 / 4)
    assert result["fnr"] == pytest.approx(2 / 4)
    mcc = (2 * 3 - 1 * 2) / np.sqrt(3 * 4 * 4 * 5)
    assert result["mcc"] == pytest.approx(mcc)
    table = threshold_table(labels, p_real)
    assert len(table) == 101
    assert table[50]["threshold"] == 0.5
    assert table[50]["tp"] == 2
    assert result["best_threshold"] == max(table, key=lambda row: row["f1"] + row["mcc"])["threshold"]
    assert result["threshold_at_fpr_1pc"] == 0.7  # first threshold leaving no bogus above it


def test_calibration_error() -> None:
    rng = np.random.default_rng(0)
    p_real = rng.uniform(size=20000)
    calibrated = (rng.uniform(size=20000) < p_real).astype(int)
    assert expected_calibration_error(calibrated, p_real) < 0.02
    assert expected_calibration_error(np.ones(100, int), np.full(100, 0.3)) == pytest.approx(0.7)


@pytest.mark.parametrize(
    "cube_name", ["validation_set/datacube/cube_validation.npz", "test_set/datacube/cube_test.npz"]
)
def test_diagnostics_agree_with_scikit_learn(trained: Path, tmp_path: Path, cube_name: str) -> None:
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
    folders = out / "validation_set"
    assert len(list((folders / "misclassified" / "images_FP").glob("cutout_*.png"))) == fp
    assert len(list((folders / "misclassified" / "images_FN").glob("cutout_*.png"))) == fn
    assert len(list((folders / "well_classified" / "images_TP").glob("cutout_*.png"))) == min(tp, 30)
    assert len(list((folders / "well_classified" / "images_TN").glob("cutout_*.png"))) == min(tn, 30)
    assert len(read_csv(out / "threshold_table.csv")) == 101
    assert (out / "notes.txt").read_text() == "mine"
    assert (folders / "misclassified" / "images_FP" / "keep.txt").read_text() == "mine too"


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


def test_grad_cam_outputs_and_small_classes(trained: Path, tmp_path: Path) -> None:
    cam = tmp_path / "cam"
    (cam / "TP").mkdir(parents=True)
    (cam / "TP" / "my_notes.txt").write_text("mine")
    cube_file = trained / "validation_set" / "datacube" / "cube_validation.npz"
    status = call_main(
        grad_cam_main, "--cube", cube_file, "--model-path", trained / "tiny.keras", "--cam_path", cam, "--n_random", 500
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


def test_grad_cam_plus_plus(trained: Path, tmp_path: Path) -> None:
    cube_file = trained / "test_set" / "datacube" / "cube_test.npz"
    arguments = ("--cube", cube_file, "--model-path", trained / "tiny.keras", "--cam_path", tmp_path, "--n_random", 2)
    assert call_main(grad_cam_main, *arguments, "--method", "gradcam++") == 0
    cube = Datacube.load(cube_file)
    true_positives = int(np.sum((probabilities_of(trained / "tiny.keras", cube) > 0.5) & (cube.labels == 1)))
    assert len(list((tmp_path / "TP").glob("cutout_CAM_*.png"))) == min(2, true_positives)
    assert (tmp_path / "TN_summary.png").stat().st_size > 2000


def test_grad_cam_map_is_the_real_grad_cam(trained: Path) -> None:
    """tf-keras-vis against an independent GradientTape Grad-CAM on the last Conv2D."""
    import tensorflow as tf

    from otrain.gradcam import gradcam_maps
    from otrain.model import last_conv_layer, load_model

    model = load_model(trained / "tiny.keras")
    pixels = Datacube.load(trained / "test_set" / "datacube" / "cube_test.npz").cube[:8]
    classes = np.array([1, 0] * 4)
    ours = gradcam_maps(model, pixels, classes, expand=False, normalise=False)

    convolution, output = last_conv_layer(model), model.layers[-1]
    with tf.GradientTape() as tape:
        hidden = tf.convert_to_tensor(pixels)
        for layer in model.layers[:-1]:
            hidden = layer(hidden, training=False)
            if layer is convolution:
                features = hidden
                tape.watch(features)
        logits = tf.matmul(hidden, output.kernel) + output.bias  # the class score before softmax
        score = tf.gather(logits, classes, axis=1, batch_dims=1)
    gradients = tape.gradient(score, features)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    reference = tf.nn.relu(tf.reduce_sum(features * weights, axis=-1)).numpy()
    assert ours.shape == reference.shape == (8, SIZE // 4, SIZE // 4)
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
    assert f"{bad_cube}: not a readable datacube" in capsys.readouterr().err
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
    assert "model has no Conv2D layer" in capsys.readouterr().err


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
        *("--normalisation", "robust", "--patience", "0"),
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
    client = MlflowClient(tracking_uri)
    children = [
        json.loads((tmp_path / "CNN_training" / f"study_size_{size}" / "mlflow_run.json").read_text()) for size in sizes
    ]
    parents = {client.get_run(child["run_id"]).data.tags.get("mlflow.parentRunId") for child in children}
    assert len(parents) == 1
    assert None not in parents
