"""How sure an ensemble is: its spread (the standard deviation of its members' P(real)) in every scorer.

The ensemble is tiny and untrained (:func:`conftest.saved_ensemble`): the spread each scorer gives is
compared with the standard deviation of the members' own P(real), computed here member by member.
A single model gives no spread, and its outputs are unchanged.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import ascii as astropy_ascii
from conftest import SIZE, call_main, labelled_cube, make_tree, members_spread, saved_ensemble

from otrain.io.outputs import INFER_COLUMNS, INFER_ENSEMBLE_COLUMNS

MASTER = "local[2]"


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any]]:
    """The saved ensemble (with its ONNX twin) and its members."""
    return saved_ensemble(tmp_path_factory.mktemp("ensemble") / "models")


@pytest.fixture(scope="module")
def single(ensemble: tuple[Path, list[Any]]) -> Path:
    """One of the members, saved alone: a single model."""
    from otrain.nets.model import save_model

    model_file, members = ensemble
    return save_model(members[0], model_file.parent.parent / "single" / "single.keras")


@pytest.fixture(scope="module")
def cutouts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("night") / "cutouts", 6, 5, size=SIZE)


def as_read(folder: Path, names: list[str]) -> np.ndarray:
    """The pixels otrain-infer scores for each file named (read by its own reading code)."""
    from otrain.score.inference import read_for_model

    return np.stack([read_for_model(Path(name), (SIZE, SIZE, 1), None)[1] for name in names])


def read_rows(table: Path) -> Any:
    return astropy_ascii.read(table, format="commented_header", guess=False)


# ---------------------------------------------------------------------------------------------
# The one scoring path


@pytest.mark.parametrize("backend", ["keras", "onnx"])
def test_the_scoring_path_gives_an_ensembles_spread_and_none_for_a_single_model(
    ensemble: tuple[Path, list[Any]], single: Path, tmp_path: Path, backend: str
) -> None:
    from otrain.data.datacube import Datacube
    from otrain.score.backends import choose_backend
    from otrain.score.scoring import predict_columns, predict_scores, score_cube

    model_file, members = ensemble
    cube_file = labelled_cube(tmp_path / "cube.npz", n=13)
    pixels = Datacube.load(cube_file).cube
    scored = score_cube(cube_file, choose_backend(model_file, backend))  # type: ignore[arg-type]
    assert scored.backend == backend
    assert scored.spread is not None
    np.testing.assert_allclose(scored.spread, members_spread(members, pixels), rtol=0, atol=1e-6)
    assert scored.spread.max() > 0  # the members disagree
    columns = predict_columns(scored.model, pixels, batch_size=4)
    assert columns.shape == (13, 3)
    np.testing.assert_allclose(scored.probabilities, columns[:, 1], rtol=0, atol=1e-6)  # other batches: a few ulps
    assert predict_columns(scored.model, pixels[:0]).shape == (0, 3)

    alone = score_cube(cube_file, choose_backend(single, "keras"))
    assert alone.spread is None
    p_real, spread = predict_scores(alone.model, pixels)
    assert spread is None
    np.testing.assert_array_equal(p_real, alone.probabilities)
    assert predict_columns(alone.model, pixels).shape == (13, 2)


# ---------------------------------------------------------------------------------------------
# otrain-infer's table


def test_otrain_infer_writes_an_ensembles_spread_as_a_15th_column(
    ensemble: tuple[Path, list[Any]], single: Path, cutouts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from otrain.cli.infer import main as infer_main

    model_file, members = ensemble
    table = tmp_path / "infer_results.dat"
    common = ("--cutouts", cutouts, "--recursive", "--output", table, "--no-tracking")
    by_backend = {}
    for backend in ("onnx", "keras"):
        assert call_main(infer_main, *common, "--model", model_file, "--backend", backend) == 0  # replaces its own
        assert "spread of the members' P(real): median " in capsys.readouterr().out
        assert table.read_text().splitlines()[0] == "# " + " ".join(INFER_ENSEMBLE_COLUMNS)
        rows = read_rows(table)
        by_backend[backend] = rows
        names = [str(name) for name in rows["filename"]]
        np.testing.assert_allclose(rows["spread"], members_spread(members, as_read(cutouts, names)), rtol=0, atol=1e-6)
    np.testing.assert_allclose(by_backend["onnx"]["label1"], by_backend["keras"]["label1"], rtol=0, atol=1e-5)

    # A single model's table is as it always was, and replaces the ensemble's.
    assert call_main(infer_main, *common, "--model", single) == 0
    assert "spread" not in capsys.readouterr().out
    assert table.read_text().splitlines()[0] == "# " + " ".join(INFER_COLUMNS)


def test_otrain_infer_logs_the_spread_distribution_into_the_training_run(
    ensemble: tuple[Path, list[Any]], cutouts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow import MlflowClient

    from otrain.cli.infer import main as infer_main
    from otrain.score.spread import spread_summary
    from otrain.track.tracking import open_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model_file, _ = ensemble
    folder = tmp_path / "model"
    folder.mkdir()
    for path in (model_file, model_file.with_suffix(".onnx")):
        (folder / path.name).write_bytes(path.read_bytes())
    with open_run(uri, "spread") as run:
        mlflow.log_metric("test_accuracy", 0.5)
    run.write(folder)
    table = tmp_path / "infer_results.dat"
    arguments = ("--cutouts", cutouts, "--recursive", "--model", folder / model_file.name, "--output", table)
    assert call_main(infer_main, *arguments) == 0
    summary = spread_summary(np.asarray(read_rows(table)["spread"], dtype=float))
    assert summary is not None
    metrics = MlflowClient(uri).get_run(run.run_id).data.metrics
    for name, value in summary.metrics().items():
        assert metrics[f"infer_{name}"] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    assert metrics["infer_scored"] == 11
    logged = {item.path for item in MlflowClient(uri).list_artifacts(run.run_id, "infer")}
    assert logged == {"infer/infer_results.dat", "infer/spread.png"}


# ---------------------------------------------------------------------------------------------
# Serving: the MLflow model's answer


def test_the_served_ensemble_answers_with_its_spread(
    ensemble: tuple[Path, list[Any]], single: Path, tmp_path: Path, tracking_uri: str
) -> None:
    from otrain.nets.model import load_model
    from otrain.score.mlflow_model import save_mlflow_model
    from otrain.score.serving import ENSEMBLE_ANSWER, SINGLE_ANSWER, describe_model

    model_file, members = ensemble
    example = np.random.default_rng(5).normal(size=(3, SIZE, SIZE, 1)).astype(np.float32)
    folder = save_mlflow_model(
        load_model(model_file), tmp_path / "served", example, onnx_file=model_file.with_suffix(".onnx")
    )
    assert describe_model(str(folder), tracking_uri).answer == ENSEMBLE_ANSWER
    alone = save_mlflow_model(load_model(single), tmp_path / "alone", example)
    assert describe_model(str(alone), tracking_uri).answer == SINGLE_ANSWER

    probe = (
        "import json, sys, numpy as np, mlflow\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "x = np.asarray(json.loads(sys.argv[2]), dtype=np.float32)\n"
        "print(json.dumps({'served': type(model.get_raw_model()).__name__, 'p': model.predict(x).tolist()}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(folder), json.dumps(example.tolist())],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["served"] == "OnnxClassifier"
    predictions = np.asarray(answer["p"])
    assert predictions.shape == (3, 3)
    np.testing.assert_allclose(predictions[:, 2], members_spread(members, example), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# otrain-infer-spark


@pytest.mark.slow
def test_otrain_infer_spark_writes_the_spread_column(
    ensemble: tuple[Path, list[Any]], cutouts: Path, tmp_path: Path
) -> None:
    pyarrow_parquet = pytest.importorskip("pyarrow.parquet")
    from otrain.cli.infer import main as infer_main
    from otrain.cli.infer_spark import main as spark_main

    model_file, members = ensemble
    reference = tmp_path / "infer_results.dat"
    common = ("--model", model_file, "--backend", "onnx")
    assert call_main(infer_main, "--cutouts", cutouts, "--recursive", "--output", reference, *common) == 0
    expected = {str(row["filename"]): float(row["spread"]) for row in read_rows(reference)}

    output, table = tmp_path / "scores.parquet", tmp_path / "spark.dat"
    arguments = ("--cutouts", cutouts, "--output", output, "--table", table, "--master", MASTER, *common)
    assert call_main(spark_main, *arguments) == 0
    parquet = pyarrow_parquet.read_table(output)
    assert tuple(parquet.column_names) == INFER_ENSEMBLE_COLUMNS
    spark = dict(zip(parquet["filename"].to_pylist(), parquet["spread"].to_pylist(), strict=True))
    assert sorted(spark) == sorted(expected)
    for name, spread in expected.items():
        assert spark[name] == pytest.approx(spread, abs=1e-7), name
    assert table.read_text().splitlines()[0] == "# " + " ".join(INFER_ENSEMBLE_COLUMNS)
    rows = read_rows(table)
    names = [str(name) for name in rows["filename"]]
    np.testing.assert_allclose(rows["spread"], members_spread(members, as_read(cutouts, names)), rtol=0, atol=1e-6)
