"""ONNX twins: written by otrain-train and otrain-export, checked, used by otrain-infer (TensorFlow, ONNX Runtime)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import ascii as astropy_ascii
from conftest import BIN, SIZE, call_main, files_under, original_otrain_network, run_command, train
from helpers import tracking_at
from numpy.testing import assert_allclose, assert_array_equal

from otrain.cli.export import main as export_main
from otrain.data.datacube import Datacube

pytestmark = pytest.mark.slow


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ort_p_real(onnx_file: Path, pixels: np.ndarray) -> np.ndarray:
    """P(real) from a plain ONNX Runtime session (default options), not otrain's classifier."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: pixels.astype(np.float32)})[0][:, 1]


def _keras_p_real(model_file: Path, pixels: np.ndarray) -> np.ndarray:
    import keras

    from otrain.nets.model import Calibration, RobustScaling

    custom = {"RobustScaling": RobustScaling, "Calibration": Calibration}
    model = keras.saving.load_model(model_file, custom_objects=custom, compile=False)
    return np.asarray(model(pixels, training=False))[:, 1]


@pytest.fixture
def model_copy(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained folder (model, card, twin, test set, run file) that a test may change."""
    folder = tmp_path / "tiny"
    shutil.copytree(trained, folder)
    return folder / "tiny.keras"


def _infer(model: Path, cutouts: Path, output: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    arguments = ["--cutouts", str(cutouts), "--model", str(model), "--output", str(output), "--no-tracking"]
    return run_command("otrain-infer", *arguments, *extra)


def model_onnx_cannot_express(folder: Path) -> tuple[Any, Path, np.ndarray]:
    """A saved Keras model with a layer ONNX has no operator for (Log1p), and 4 cutouts for it."""
    import keras
    from keras import layers, ops

    class Log1p(layers.Layer):
        def call(self, inputs: object) -> object:
            return ops.log1p(ops.abs(inputs))

    model = keras.Sequential([keras.Input((8, 8, 1)), Log1p(), layers.Flatten(), layers.Dense(2, activation="softmax")])
    model_file = folder / "log1p.keras"
    model.save(model_file)
    return model, model_file, np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype(np.float32)


def test_training_writes_a_twin_checked_on_every_cutout(trained: Path, workspace: Path) -> None:
    from otrain.score.twin import FLOAT32_EPS, keras_scores, parity_allowance

    twin = trained / "tiny.onnx"
    card = json.loads((trained / "tiny.keras.card.json").read_text())
    record = card["onnx"]
    assert record["file"] == "tiny.onnx"
    assert "absent" not in record
    assert record["sha256"] == _sha256(twin)
    assert record["source_sha256"] == _sha256(trained / "tiny.keras")
    cube = Datacube.load(workspace / "datacube" / "cube.npz")
    parity = record["parity"]
    assert parity["checked_on"] == "cube.npz (every cutout)"
    assert parity["cutouts"] == len(cube.labels)  # training, validation and test sets
    assert parity["tolerance"] == 64.0
    assert 0 <= parity["max_share_of_allowance"] <= 1.0
    assert parity["threshold"] == card["threshold"]
    # Decisions may change only for cutouts within their allowance of the threshold (ties at float32
    # precision); how many there are depends on what the model learnt, so no count is asserted.
    assert 0 <= parity["decisions_changed"] <= parity["decisions_within_allowance"] <= parity["cutouts"]
    # Recomputed here: TensorFlow through Keras against a plain ONNX Runtime session, two engines, one
    # network, held to the contract of docs/onnx.md on every cutout (with the logit scale S of each).
    from otrain.nets.model import load_model

    model_p, twin_p = _keras_p_real(trained / "tiny.keras", cube.cube), _ort_p_real(twin, cube.cube)
    scores = keras_scores(load_model(trained / "tiny.keras"), cube.cube)
    allowance = parity_allowance(scores, twin_p, parity["tolerance"])
    difference = np.abs(twin_p - model_p)
    assert np.all(difference <= allowance)
    assert difference.max() == pytest.approx(parity["max_abs_diff_p_real"], abs=4 * FLOAT32_EPS)
    changed = (twin_p > card["threshold"]) != (model_p > card["threshold"])
    assert np.all(np.abs(model_p[changed] - card["threshold"]) <= allowance[changed])


def test_the_parity_check_of_a_large_cube_is_a_seeded_sample_with_the_held_out_sets() -> None:
    from otrain.data.datacube import stratified_split
    from otrain.train.postfit import PARITY_CUTOUTS, parity_rows

    labels = np.arange(30_000) % 2
    split = stratified_split(labels, 0.1, 0.1, seed=5)
    assert parity_rows(split, PARITY_CUTOUTS, 5) == (None, "every cutout")  # a small cube: exact
    rows, checked = parity_rows(split, len(labels), 5)
    assert rows is not None
    assert len(rows) == PARITY_CUTOUTS == len(np.unique(rows))
    assert np.all(np.diff(rows) > 0)
    assert set(split.validation) | set(split.test) <= set(rows)
    described = "the validation and test sets, and 4000 of the 24000 training cutouts drawn with --seed"
    assert checked == f"10000 of 30000 cutouts: {described}"
    assert_array_equal(parity_rows(split, len(labels), 5)[0], rows)  # seeded
    assert not np.array_equal(parity_rows(split, len(labels), 6)[0], rows)
    # Held-out sets larger than the limit are still checked whole.
    rows, checked = parity_rows(split, len(labels), 5, limit=1000)
    assert rows is not None
    assert_array_equal(rows, np.sort(np.concatenate([split.validation, split.test])))
    assert checked.endswith("and 0 of the 24000 training cutouts drawn with --seed")


def test_a_training_on_a_cube_above_the_limit_checks_its_sample(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limit lowered below the workspace cube's size: the card records the sample the twin was checked on."""
    import otrain.train.training

    # The limit the training passes to parity_rows: its import of otrain.train.postfit.PARITY_CUTOUTS.
    monkeypatch.setattr(otrain.train.training, "PARITY_CUTOUTS", 300)
    cube = Datacube.load(workspace / "datacube" / "cube.npz")
    assert train(workspace, "sampled", "--epochs", "1", "--no-tracking", models=str(tmp_path / "models")) == 0
    card = json.loads((tmp_path / "models" / "CNN_training" / "sampled" / "sampled.keras.card.json").read_text())
    parity = card["onnx"]["parity"]
    sizes = card["split_sizes"]
    assert parity["cutouts"] == 300
    drawn = 300 - sizes["validation"] - sizes["test"]
    assert parity["checked_on"] == (
        f"cube.npz (300 of {len(cube.labels)} cutouts: the validation and test sets, and {drawn} of the "
        f"{sizes['train']} training cutouts drawn with --seed)"
    )


def test_the_calibration_is_exact_near_one_in_both_runtimes(tmp_path: Path) -> None:
    """Issue 23: P(real) within 1e-3 to 1e-7 of 1 before a temperature of 8.2. Taken as log(1 - p), its
    log-odds lost up to half their bits to the rounding of p, and the calibrated P(real) of Keras and of
    the twin were each up to 0.005 from the exact value (and so from each other when they rounded p
    apart). Taken as log P(real) - log P(bogus), both are exact to float32 precision."""
    import keras
    from keras import layers

    from otrain.nets.model import with_calibration
    from otrain.score.backends import OnnxClassifier
    from otrain.score.twin import FLOAT32_EPS, export_onnx

    temperature = 8.2
    network = keras.Sequential([keras.Input((1, 1, 1)), layers.Flatten(), layers.Dense(2, activation="softmax")])
    network.layers[-1].set_weights([np.array([[-0.5, 0.5]], np.float32), np.zeros(2, np.float32)])
    model = with_calibration(network, temperature, 0.0)
    model_file = tmp_path / "near_one.keras"
    model.save(model_file)
    logit = np.linspace(7.0, 16.0, 400)  # the network's log-odds: 1 - P(real) from 1e-3 to 1e-7
    pixels = logit.astype(np.float32).reshape(-1, 1, 1, 1)
    record = export_onnx(model, model_file, pixels)
    exact = 1.0 / (1.0 + np.exp(-pixels.reshape(-1).astype(np.float64) / temperature))
    keras_p = np.asarray(model.predict_on_batch(pixels), np.float64)[:, 1]
    twin_p = OnnxClassifier(model_file.with_suffix(".onnx")).predict_on_batch(pixels).astype(np.float64)[:, 1]
    for computed in (keras_p, twin_p):
        assert np.max(np.abs(computed - exact)) <= 16 * FLOAT32_EPS
    assert record["parity"]["max_abs_diff_p_real"] <= 4 * FLOAT32_EPS


def test_a_mixed_precision_twin_without_its_calibration_is_refused(tmp_path: Path) -> None:
    """Under mixed precision only the network's own sums are float16; the last dense layer, its softmax
    and the calibration are float32. Float16's epsilon on the whole allowance (at least 0.0625 P at
    --tolerance 64) let a twin without a temperature of 1.3 pass. Here the wrong twin is made for real:
    the same float16 network exported without its calibration layer, judged against the calibrated model
    by the check export_onnx applies. A network built so that its logit scale is known, |z| / 2: nothing
    depends on learnt weights."""
    import keras
    from keras import layers

    from otrain.nets.model import with_calibration
    from otrain.options import PARITY_TOLERANCE
    from otrain.score.backends import OnnxClassifier
    from otrain.score.twin import export_onnx, keras_scores, parity_allowance

    network = keras.Sequential(
        [
            keras.Input((1, 1, 1)),
            layers.Flatten(),
            layers.Dense(2, activation="relu", dtype="mixed_float16"),  # h = (x, -x)+
            layers.Dense(2, activation="softmax", dtype="float32"),  # z = x, from terms of size |x| / 2
        ]
    )
    network.layers[1].set_weights([np.array([[1.0, -1.0]], np.float32), np.zeros(2, np.float32)])
    network.layers[2].set_weights([np.array([[-0.5, 0.5], [0.5, -0.5]], np.float32), np.zeros(2, np.float32)])
    calibrated = with_calibration(network, 1.3, 0.0)
    pixels = np.linspace(-8.0, 8.0, 65, dtype=np.float32).reshape(-1, 1, 1, 1)  # float16 numbers
    uncalibrated_file = tmp_path / "uncalibrated.keras"
    network.save(uncalibrated_file)
    export_onnx(network, uncalibrated_file, pixels)  # a twin of the network alone, checked against it
    wrong = OnnxClassifier(uncalibrated_file.with_suffix(".onnx")).predict_on_batch(pixels)[:, 1].astype(np.float64)
    scores = keras_scores(calibrated, pixels)
    assert_allclose(scores.logit_scale, np.abs(pixels.reshape(-1)) / 2, rtol=1e-3)
    share = np.abs(wrong - scores.p_real) / parity_allowance(scores, wrong, PARITY_TOLERANCE)
    assert share.max() > 3.0, share.max()
    assert (scores.epsilon, scores.output_epsilon) == (2.0**-10, 2.0**-23)
    # The calibrated model's own twin passes, and the card says which epsilon scaled what.
    calibrated_file = tmp_path / "calibrated.keras"
    calibrated.save(calibrated_file)
    parity = export_onnx(calibrated, calibrated_file, pixels)["parity"]
    assert (parity["epsilon"], parity["output_epsilon"]) == (2.0**-10, 2.0**-23)
    assert parity["max_share_of_allowance"] <= 1.0


def test_the_logged_mlflow_model_has_the_onnx_flavour(trained: Path, tracking_uri: str, tmp_path: Path) -> None:
    import mlflow

    from otrain.score.backends import choose_backend, load_classifier

    run_id = json.loads((trained / "mlflow_run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(tracking_uri)
    proto = mlflow.onnx.load_model(f"runs:/{run_id}/model")
    assert proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value == SIZE
    folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path)))
    choice = choose_backend(folder / "data" / "model.keras")
    assert choice.backend == "onnx"
    classifier = load_classifier(choice)
    test = Datacube.load(trained / "test_set" / "datacube" / "cube_test.npz")
    expected = _keras_p_real(trained / "tiny.keras", test.cube[:32])
    assert_allclose(classifier.predict_on_batch(test.cube[:32])[:, 1], expected, atol=1e-5)


def test_the_python_function_flavour_serves_the_twin(trained: Path, tracking_uri: str) -> None:
    """What otrain-serve and `mlflow models serve` load: ONNX Runtime, with the Keras model's P(real)."""
    import mlflow

    from otrain.score.backends import OnnxClassifier

    run_id = json.loads((trained / "mlflow_run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(tracking_uri)
    served = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    assert isinstance(served.get_raw_model(), OnnxClassifier)
    test = Datacube.load(trained / "test_set" / "datacube" / "cube_test.npz")
    expected = _keras_p_real(trained / "tiny.keras", test.cube)
    assert_allclose(np.asarray(served.predict(test.cube))[:, 1], expected, atol=1e-5)


def test_every_loader_name_a_logged_model_may_give_serves_it(trained: Path, tracking_uri: str, tmp_path: Path) -> None:
    """MLmodel files name otrain.model (logged before the subpackages, and now) or otrain.nets.model
    (logged in between): MLflow loads the model through either, the twin served by ONNX Runtime."""
    import mlflow
    import yaml

    from otrain.score.backends import OnnxClassifier

    run_id = json.loads((trained / "mlflow_run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(tracking_uri)
    folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path)))
    description = yaml.safe_load((folder / "MLmodel").read_text())
    assert description["flavors"]["python_function"]["loader_module"] == "otrain.model"
    test = Datacube.load(trained / "test_set" / "datacube" / "cube_test.npz")
    expected = _keras_p_real(trained / "tiny.keras", test.cube[:16])
    for name in ("otrain.model", "otrain.nets.model"):
        description["flavors"]["python_function"]["loader_module"] = name
        (folder / "MLmodel").write_text(yaml.safe_dump(description))
        served = mlflow.pyfunc.load_model(str(folder))
        assert isinstance(served.get_raw_model(), OnnxClassifier), name
        assert_allclose(np.asarray(served.predict(test.cube[:16]))[:, 1], expected, atol=1e-5)


def test_both_backends_write_the_same_table(trained: Path, workspace: Path, tmp_path: Path) -> None:
    night = workspace / "survey" / "night"
    auto = _infer(trained / "tiny.keras", night, tmp_path / "auto.dat")
    assert auto.returncode == 0, auto.stderr
    assert "scored with onnx" in auto.stdout
    keras_run = _infer(trained / "tiny.keras", night, tmp_path / "keras.dat", "--backend", "keras")
    assert keras_run.returncode == 0, keras_run.stderr
    assert "scored with keras" in keras_run.stdout
    onnx_table = astropy_ascii.read(tmp_path / "auto.dat", format="commented_header")
    keras_table = astropy_ascii.read(tmp_path / "keras.dat", format="commented_header")
    assert onnx_table.colnames == keras_table.colnames
    for column in onnx_table.colnames:
        if column in ("label0", "label1", "real"):
            continue
        assert_array_equal(onnx_table[column], keras_table[column])
    assert_allclose(onnx_table["label1"], keras_table["label1"], atol=1e-5)
    assert_allclose(onnx_table["label0"], 1 - onnx_table["label1"], atol=1e-7)
    card = json.loads((trained / "tiny.keras.card.json").read_text())
    clear = np.abs(np.asarray(keras_table["label1"]) - card["threshold"]) > 1e-5
    assert_array_equal(onnx_table["real"][clear], keras_table["real"][clear])
    # And the P(real) a plain ONNX Runtime session gives the first file's pixels.
    from otrain.data.cutouts import read_cutout

    first = read_cutout(Path(onnx_table["filename"][0])).pixels[np.newaxis]
    assert_allclose(onnx_table["label1"][0], _ort_p_real(trained / "tiny.onnx", first)[0], atol=1e-6)


def test_scoring_with_onnx_does_not_import_tensorflow(trained: Path, workspace: Path, tmp_path: Path) -> None:
    """Nor astropy, which only reads the files otrain's FITS reader declines (none of these): start-up matters."""
    script = (
        "import sys\n"
        "from otrain.cli.infer import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit as stop:\n"
        "    print('exit', stop.code, 'tensorflow' in sys.modules, 'keras' in sys.modules, 'astropy' in sys.modules)\n"
    )
    for backend, loaded in (("onnx", "False False False"), ("keras", "True True")):
        arguments = ["--cutouts", workspace / "survey" / "night", "--model", trained / "tiny.keras"]
        arguments += ["--output", tmp_path / f"{backend}.dat", "--no-tracking", "--backend", backend]
        result = subprocess.run(
            [str(BIN / "python"), "-c", script, *map(str, arguments)],
            capture_output=True,
            text=True,
            env={**os.environ, "OTRAIN_PROGRESS": "0"},
        )
        assert f"exit 0 {loaded}" in result.stdout, result.stderr


def test_onnx_runtime_takes_the_cores_the_process_may_use(trained: Path) -> None:
    script = (
        "from pathlib import Path; from otrain.score.backends import OnnxClassifier; "
        f"session = OnnxClassifier(Path({str(trained / 'tiny.onnx')!r})).session; "
        "print(session.get_session_options().intra_op_num_threads)"
    )
    one_core = subprocess.run(["taskset", "-c", "0", str(BIN / "python"), "-c", script], capture_output=True, text=True)
    assert one_core.stdout.strip() == "1", one_core.stderr
    from otrain.io.parallel import default_workers

    every = subprocess.run([str(BIN / "python"), "-c", script], capture_output=True, text=True)
    assert every.stdout.strip() == str(default_workers()), every.stderr


def test_a_twin_of_other_weights_is_never_used(model_copy: Path, workspace: Path, tmp_path: Path) -> None:
    from otrain.nets.model import load_model, save_model

    model = load_model(model_copy)
    model.layers[-2].set_weights([weight * 0.5 for weight in model.layers[-2].get_weights()])
    save_model(model, model_copy)  # retrained, say: same name, other weights; the twin is the old one
    night = workspace / "survey" / "night"
    auto = _infer(model_copy, night, tmp_path / "auto.dat")
    assert auto.returncode == 0, auto.stderr
    assert "scored with keras" in auto.stdout
    assert "exported from another version of tiny.keras" in auto.stderr
    forced = _infer(model_copy, night, tmp_path / "forced.dat", "--backend", "onnx")
    assert forced.returncode == 1
    assert forced.stderr.strip().count("\n") == 0, forced.stderr
    assert "otrain-export" in forced.stderr
    assert not (tmp_path / "forced.dat").exists()
    # otrain-export brings the twin up to date; then it scores as the Keras model does.
    assert call_main(export_main, "--model", model_copy, "--no-tracking") == 0
    again = _infer(model_copy, night, tmp_path / "again.dat", "--backend", "onnx")
    assert again.returncode == 0, again.stderr
    new = astropy_ascii.read(tmp_path / "again.dat", format="commented_header")["label1"]
    assert_allclose(new, astropy_ascii.read(tmp_path / "auto.dat", format="commented_header")["label1"], atol=1e-5)


def test_backend_onnx_needs_a_twin(model_copy: Path, workspace: Path, tmp_path: Path) -> None:
    model_copy.with_suffix(".onnx").unlink()
    forced = _infer(model_copy, workspace / "survey" / "night", tmp_path / "t.dat", "--backend", "onnx")
    assert forced.returncode == 1
    assert forced.stderr.strip() == (
        f"otrain-infer: error: --backend onnx: {model_copy.with_suffix('.onnx')} does not exist "
        f"(otrain-export --model {model_copy} writes it)"
    )
    auto = _infer(model_copy, workspace / "survey" / "night", tmp_path / "t.dat")
    assert auto.returncode == 0
    assert "scored with keras" in auto.stdout
    assert "warning" not in auto.stderr  # no twin is no problem
    bad = _infer(model_copy, workspace / "survey" / "night", tmp_path / "u.dat", "--backend", "tflite")
    assert bad.returncode == 2
    assert "--backend" in bad.stderr


def test_export_an_original_h5_model(workspace: Path, tmp_path: Path) -> None:
    """An original O'TRAIN .h5 (no card, no normalisation): the twin is checked on random cutouts, or on --cube."""
    original = original_otrain_network(SIZE)
    model_file = tmp_path / "original.h5"
    original.save(model_file)
    # Raw pixels in the thousands through untrained weights: float32 sums in another order move
    # P(real) by more than 1e-5, and the allowance, scaled by the logits' terms, says how much more.
    assert call_main(export_main, "--model", model_file) == 0
    card = json.loads((tmp_path / "original.h5.card.json").read_text())
    assert card["model_file"] == "original.h5"
    assert card["onnx"]["parity"]["checked_on"] == "256 seeded random cutouts (no test set)"
    assert card["onnx"]["parity"]["tolerance"] == 64.0
    assert card["onnx"]["parity"]["max_share_of_allowance"] <= 1.0
    assert card["onnx"]["source_sha256"] == _sha256(model_file)
    cube = workspace / "datacube" / "cube.npz"
    assert call_main(export_main, "--model", model_file, "--cube", cube, "--no-tracking") == 0
    card = json.loads((tmp_path / "original.h5.card.json").read_text())
    assert card["onnx"]["parity"]["cutouts"] == len(Datacube.load(cube).labels)
    pixels = Datacube.load(cube).cube[:64]
    expected = original.predict(pixels, verbose=0)[:, 1]
    assert_allclose(_ort_p_real(tmp_path / "original.onnx", pixels), expected, atol=1e-5)
    night = workspace / "survey" / "night"
    assert _infer(model_file, night, tmp_path / "onnx.dat", "--backend", "onnx").returncode == 0
    assert _infer(model_file, night, tmp_path / "keras.dat", "--backend", "keras").returncode == 0
    onnx_table = astropy_ascii.read(tmp_path / "onnx.dat", format="commented_header")
    keras_table = astropy_ascii.read(tmp_path / "keras.dat", format="commented_header")
    assert_allclose(onnx_table["label1"], keras_table["label1"], atol=1e-5)


def test_a_twin_outside_the_tolerance_is_not_written(tmp_path: Path) -> None:
    """ONNX Runtime's Sigmoid is an approximation that flushes P below about 1e-8 to 0: P(real) differs
    by less than 1e-5 (the old absolute tolerance) but by far more than float32 allows, and the ranking
    of the lowest scores is lost. The check refuses: one line, exit 1, nothing written."""
    import keras
    from keras import layers

    model = keras.Sequential([keras.Input((4, 4, 1)), layers.Flatten(), layers.Dense(2, activation="sigmoid")])
    model.layers[-1].set_weights([np.full((16, 2), 0.1, np.float32) * [1, -1], np.zeros(2, np.float32)])
    model_file = tmp_path / "sigmoid.keras"
    model.save(model_file)
    result = run_command("otrain-export", "--model", str(model_file), "--no-tracking")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("otrain-export: error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "the ONNX model's P(real) differs from sigmoid.keras's by" in errors[0]
    assert "times what float32 allows at --tolerance 64 (see docs/onnx.md); not written" in errors[0]
    assert files_under(tmp_path) == {model_file}
    for bad in ("0", "1e-05"):  # a probability (the option's meaning before) is refused
        refused = run_command("otrain-export", "--model", str(model_file), "--tolerance", bad)
        assert refused.returncode == 2
        rule = "must be at least 1 (machine epsilons of the logit scale, docs/onnx.md)"
        assert f"--tolerance: {rule}, got {float(bad)}" in refused.stderr


def test_export_onnx_refuses_a_tolerance_in_the_old_unit(tmp_path: Path) -> None:
    """PARITY_TOLERANCE was a difference of P(real) (1e-5) and is now a count of epsilons: a caller
    still passing a probability is told so, before anything is exported."""
    import keras
    from keras import layers

    from otrain.score.twin import export_onnx

    model = keras.Sequential([keras.Input((2, 2, 1)), layers.Flatten(), layers.Dense(2, activation="softmax")])
    model_file = tmp_path / "small.keras"
    model.save(model_file)
    pixels = np.zeros((2, 2, 2, 1), np.float32)
    for bad in (1e-5, 0.0, float("nan")):
        with pytest.raises(ValueError, match=r"tolerance must be at least 1 \(machine epsilons of the logit scale"):
            export_onnx(model, model_file, pixels, tolerance=bad)
    assert files_under(tmp_path) == {model_file}
    assert export_onnx(model, model_file, pixels, tolerance=1.0)["parity"]["tolerance"] == 1.0


def test_a_model_without_a_twin_has_an_absence_record(model_copy: Path, workspace: Path, tmp_path: Path) -> None:
    """A training whose twin cannot be made still writes <name>.onnx (the pipeline declares it): a record
    that says why, which the scoring commands name, and which otrain-export replaces with a twin."""
    import onnx

    from otrain.errors import DataError
    from otrain.score.backends import TWIN_ABSENT, OnnxClassifier, choose_backend
    from otrain.score.twin import write_absent_twin
    from otrain.train.postfit import export_twin

    model, model_file, pixels = model_onnx_cannot_express(tmp_path)
    record = export_twin(model, model_file, pixels, "4 cutouts", 0.5)
    twin = tmp_path / "log1p.onnx"
    assert record["file"] == "log1p.onnx"
    assert record["absent"] is True
    assert "log1p.onnx: not a readable ONNX model" in record["error"]
    metadata = {entry.key: entry.value for entry in onnx.load(str(twin)).metadata_props}
    assert metadata[TWIN_ABSENT] == record["error"]
    with pytest.raises(DataError, match=r"log1p\.onnx: not a readable ONNX model"):
        OnnxClassifier(twin)  # no runtime mistakes it for a model
    choice = choose_backend(model_file, "auto")
    assert (choice.backend, choice.path) == ("keras", model_file)
    assert choice.note.startswith("scoring with Keras: log1p.keras has no ONNX twin (log1p.onnx says why: ")
    with pytest.raises(DataError, match=r"--backend onnx: log1p.keras has no ONNX twin \(log1p.onnx says why"):
        choose_backend(model_file, "onnx")
    # otrain-export replaces an absence record (otrain wrote it) without --overwrite.
    write_absent_twin(model_copy, "a reason")
    night = workspace / "survey" / "night"
    auto = _infer(model_copy, night, tmp_path / "auto.dat")
    assert auto.returncode == 0, auto.stderr
    assert "scored with keras" in auto.stdout
    assert "tiny.keras has no ONNX twin (tiny.onnx says why: a reason)" in auto.stderr
    assert call_main(export_main, "--model", model_copy, "--no-tracking") == 0
    assert choose_backend(model_copy, "auto").backend == "onnx"


def test_no_failure_of_the_twin_fails_the_training(tmp_path: Path) -> None:
    """Not only DataError: whatever export_onnx raises (here Keras' error on cutouts of another shape, and
    the twin's place taken by a folder), the training goes on; when not even the absence record can be
    written, a second line says so and the folder is left as it was."""
    import logging.handlers

    import keras
    import onnx
    from keras import layers

    from otrain.score.backends import TWIN_ABSENT
    from otrain.train.postfit import export_twin

    model = keras.Sequential([keras.Input((4, 4, 1)), layers.Flatten(), layers.Dense(2, activation="softmax")])
    model_file = tmp_path / "small.keras"
    model.save(model_file)
    folder = tmp_path / "taken"
    folder.mkdir()
    taken_file = folder / "small.keras"
    model.save(taken_file)
    (folder / "small.onnx").mkdir()
    (folder / "small.onnx" / "mine.txt").write_text("not otrain's")
    warnings = logging.handlers.BufferingHandler(capacity=100)
    warnings.setLevel(logging.WARNING)
    logging.getLogger("otrain").addHandler(warnings)
    try:
        wrong_shape = export_twin(model, model_file, np.zeros((2, 5, 5, 1), np.float32), "2 cutouts", 0.5)
        first = [record.getMessage() for record in warnings.buffer]
        warnings.flush()
        taken = export_twin(model, taken_file, np.zeros((2, 4, 4, 1), np.float32), "2 cutouts", 0.5)
        second = [record.getMessage() for record in warnings.buffer]
    finally:
        logging.getLogger("otrain").removeHandler(warnings)
    assert wrong_shape["absent"] is True
    assert wrong_shape["error"].startswith("small.onnx: not exported (")
    assert "record_error" not in wrong_shape
    metadata = {entry.key: entry.value for entry in onnx.load(str(tmp_path / "small.onnx")).metadata_props}
    assert metadata[TWIN_ABSENT] == wrong_shape["error"]
    assert first == [f"no ONNX twin: {wrong_shape['error']}; otrain-infer will score with Keras"]
    assert taken["absent"] is True
    assert taken["file"] == "small.onnx"
    assert "Is a directory" in taken["error"]
    assert "Is a directory" in taken["record_error"]
    assert len(second) == 2, second
    assert second[0] == f"no ONNX twin: {taken['error']}; otrain-infer will score with Keras"
    assert second[1].startswith(f"no absence record either: {folder / 'small.onnx'} cannot be written (")
    assert files_under(folder) == {taken_file, folder / "small.onnx" / "mine.txt"}
    assert (folder / "small.onnx" / "mine.txt").read_text() == "not otrain's"


def test_export_never_replaces_an_onnx_file_it_did_not_write(model_copy: Path, tmp_path: Path) -> None:
    foreign = model_copy.with_suffix(".onnx")
    foreign.write_bytes(b"someone else's network")
    before = files_under(model_copy.parent)
    result = run_command("otrain-export", "--model", str(model_copy), "--no-tracking")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"otrain-export: error: --model: {str(foreign)!r} exists and was not written by otrain-export; "
        "pass --overwrite to replace it, or choose another path"
    )
    assert files_under(model_copy.parent) == before
    assert foreign.read_bytes() == b"someone else's network"
    assert call_main(export_main, "--model", model_copy, "--no-tracking", "--overwrite") == 0
    assert json.loads(model_copy.with_name("tiny.keras.card.json").read_text())["onnx"]["sha256"] == _sha256(foreign)


def test_export_logs_the_twin_into_the_training_run(model_copy: Path, tracking_uri: str) -> None:
    from mlflow.tracking import MlflowClient

    with tracking_at(tracking_uri):
        assert call_main(export_main, "--model", model_copy) == 0
    run_id = json.loads((model_copy.parent / "mlflow_run.json").read_text())["run_id"]
    logged = {item.path for item in MlflowClient(tracking_uri).list_artifacts(run_id, "onnx")}
    assert {"onnx/tiny.onnx", "onnx/tiny.keras.card.json"} <= logged


def test_a_model_onnx_cannot_express_is_not_exported(tmp_path: Path) -> None:

    from otrain.errors import DataError
    from otrain.score.twin import export_onnx

    model, model_file, pixels = model_onnx_cannot_express(tmp_path)
    with pytest.raises(DataError, match=r"log1p\.onnx: not a readable ONNX model"):
        export_onnx(model, model_file, pixels)
    assert files_under(tmp_path) == {model_file}


def test_int8_records_how_far_it_moves_and_is_used_only_when_it_passes(
    model_copy: Path, workspace: Path, tmp_path: Path
) -> None:
    from sklearn.metrics import roc_auc_score

    cube = workspace / "datacube" / "cube.npz"
    arguments = ("--model", model_copy, "--quantize", "int8", "--no-tracking", "--calibration-cube", cube)
    assert call_main(export_main, *arguments, "--calibration-size", "150", "--seed", "3") == 0
    int8 = model_copy.with_suffix(".int8.onnx")
    card = json.loads(model_copy.with_name("tiny.keras.card.json").read_text())
    record = card["onnx_int8"]
    assert record["source_sha256"] == _sha256(model_copy)
    assert record["sha256"] == _sha256(int8)
    assert record["calibration"] == {"cube": str(cube), "rows": "training rows", "cutouts": 128, "seed": 3}
    # Recomputed here with plain sessions and scikit-learn: what the card says about the test set.
    test = Datacube.load(model_copy.parent / "test_set" / "datacube" / "cube_test.npz")
    float_p, int8_p = _ort_p_real(model_copy.with_suffix(".onnx"), test.cube), _ort_p_real(int8, test.cube)
    evaluation = record["evaluation"]
    assert evaluation["cutouts"] == len(test.labels)
    assert evaluation["roc_auc_float"] == pytest.approx(roc_auc_score(test.labels, float_p), abs=1e-9)
    assert evaluation["roc_auc_int8"] == pytest.approx(roc_auc_score(test.labels, int8_p), abs=1e-9)
    changed = np.mean((float_p > card["threshold"]) != (int8_p > card["threshold"]))
    assert evaluation["decisions_changed"] == pytest.approx(changed)
    passes = abs(evaluation["roc_auc_shift"]) < 0.002 and evaluation["decisions_changed"] < 0.005
    assert record["default"] is passes
    assert int8.stat().st_size < 0.5 * model_copy.with_suffix(".onnx").stat().st_size
    night = workspace / "survey" / "night"
    auto = _infer(model_copy, night, tmp_path / "auto.dat")
    assert f"scored with {'int8' if passes else 'onnx'}" in auto.stdout
    forced = _infer(model_copy, night, tmp_path / "int8.dat", "--backend", "int8")
    assert "scored with int8" in forced.stdout, forced.stderr
    # A card whose int8 model passed its gates (a model that quantises well): auto takes it.
    card["onnx_int8"]["default"] = True
    model_copy.with_name("tiny.keras.card.json").write_text(json.dumps(card))
    assert "scored with int8" in _infer(model_copy, night, tmp_path / "passed.dat").stdout
    table = astropy_ascii.read(tmp_path / "passed.dat", format="commented_header")
    from otrain.data.cutouts import read_cutout

    pixels = read_cutout(Path(table["filename"][0])).pixels[np.newaxis]
    assert_allclose(table["label1"][0], _ort_p_real(int8, pixels)[0], atol=1e-6)


def test_int8_needs_a_labelled_cube(workspace: Path, tmp_path: Path) -> None:
    model_file = tmp_path / "original.h5"
    original_otrain_network(SIZE).save(model_file)
    result = run_command("otrain-export", "--model", str(model_file), "--quantize", "int8", "--no-tracking")
    assert result.returncode == 2
    assert "--quantize: int8 is judged on a labelled cube" in result.stderr
    assert files_under(tmp_path) == {model_file}


def test_the_twin_keeps_tiny_probabilities(tmp_path: Path) -> None:
    """The calibration's smallest outputs (about 1e-9) survive ONNX Runtime: not flushed to 0, so the ranking holds."""
    import keras
    from keras import layers

    from otrain.nets.model import Calibration
    from otrain.score.backends import OnnxClassifier
    from otrain.score.twin import export_onnx

    model = keras.Sequential(
        [keras.Input((1, 1, 2)), layers.Reshape((2,)), Calibration(temperature=0.8, bias=-0.5, name="calibration")]
    )
    model_file = tmp_path / "calibration.keras"
    model.save(model_file)
    real = np.array([1e-12, 1e-7, 1e-5, 0.3, 0.5, 0.9, 1 - 1e-5], np.float32)
    pixels = np.stack([1 - real, real], axis=1).reshape(-1, 1, 1, 2)
    export_onnx(model, model_file, pixels)
    ours = OnnxClassifier(model_file.with_suffix(".onnx")).predict_on_batch(pixels)[:, 1]
    keras_p = np.asarray(model(pixels))[:, 1]
    assert ours.min() > 0
    assert_allclose(ours, keras_p, rtol=1e-4)
    # Independently: sigmoid(logit(clip(p)) / T + b) in float64.
    clipped = np.clip(real.astype(np.float64), 1e-7, 1 - 1e-7)
    expected = 1 / (1 + np.exp(-(np.log(clipped / (1 - clipped)) / 0.8 - 0.5)))
    assert_allclose(ours, expected, rtol=1e-3)


def test_int8_calibrates_on_the_training_rows_the_card_names(model_copy: Path, workspace: Path, tmp_path: Path) -> None:
    from otrain.cli.diagnostics import main as diagnostics_main

    card_file = model_copy.with_name("tiny.keras.card.json")
    card = json.loads(card_file.read_text())
    assert call_main(export_main, "--model", model_copy, "--quantize", "int8", "--no-tracking") == 0
    record = json.loads(card_file.read_text())["onnx_int8"]
    assert record["calibration"]["cube"] == card["cube"]
    assert record["calibration"]["rows"] == "training rows"
    training_rows = card["split_sizes"]["train"]
    assert record["calibration"]["cutouts"] == training_rows - training_rows % 64
    # The analysis commands score with it when asked.
    test_cube = model_copy.parent / "test_set" / "datacube" / "cube_test.npz"
    common = ("--path-cube-validation", test_cube, "--model-path", model_copy, "--no-tracking")
    assert call_main(diagnostics_main, *common, "--backend", "int8", "--path-diagnostics", tmp_path / "d") == 0
    # A card whose training cube is not there: one line, and nothing written, the float twin included.
    card_file.write_text(json.dumps({**card, "cube": str(tmp_path / "moved.npz")}))
    before = {path: path.read_bytes() for path in files_under(model_copy.parent)}
    result = run_command("otrain-export", "--model", str(model_copy), "--quantize", "int8", "--no-tracking")
    assert result.returncode == 1
    assert f"otrain-export: error: {tmp_path / 'moved.npz'}: the training cube the model card names" in result.stderr
    assert "Traceback" not in result.stderr
    assert {path: path.read_bytes() for path in files_under(model_copy.parent)} == before


def test_int8_calibrates_on_the_rows_the_card_records_not_a_recomputation(model_copy: Path, workspace: Path) -> None:
    """The card's ids say which rows trained: a split no seed gives (all but 128 rows held out) is the one used."""
    card_file = model_copy.with_name("tiny.keras.card.json")
    card = json.loads(card_file.read_text())
    candids = [str(candid) for candid in Datacube.load(Path(card["cube"])).candids]
    assert card["split_sizes"]["train"] - card["split_sizes"]["train"] % 64 != 128
    held_out = {**card["split"], "validation_ids": candids[128:200], "test_ids": candids[200:]}
    card_file.write_text(json.dumps({**card, "split": held_out}))
    assert call_main(export_main, "--model", model_copy, "--quantize", "int8", "--no-tracking") == 0
    calibration = json.loads(card_file.read_text())["onnx_int8"]["calibration"]
    assert (calibration["rows"], calibration["cutouts"]) == ("training rows", 128)


def test_calibration_options_need_int8_and_another_cube(model_copy: Path, workspace: Path) -> None:
    cube = workspace / "datacube" / "cube.npz"
    alone = run_command("otrain-export", "--model", str(model_copy), "--calibration-size", "64")
    assert alone.returncode == 2
    assert "--calibration-size: only with --quantize int8" in alone.stderr
    judged = model_copy.parent / "test_set" / "datacube" / "cube_test.npz"
    same = run_command(
        "otrain-export", "--model", str(model_copy), "--quantize", "int8", "--calibration-cube", str(judged)
    )
    assert same.returncode == 2
    assert "is the cube the int8 model is judged on" in same.stderr
    other = run_command("otrain-export", "--model", str(model_copy), "--calibration-cube", str(cube))
    assert other.returncode == 2
    assert "--calibration-cube: only with --quantize int8" in other.stderr
