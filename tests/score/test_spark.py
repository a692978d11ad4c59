"""otrain-pack and otrain-infer-spark: real Spark (local[2]), real FITS files, the session's trained model."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import ascii as astropy_ascii
from conftest import (
    ROOT,
    call_main,
    constant_twin,
    file_hashes,
    files_under,
    make_tree,
    pixels,
    write_gmadet,
    write_stdpipe,
)
from helpers import imported_by_help

from otrain.cli.infer import main as infer_main
from otrain.cli.infer_spark import main as spark_main
from otrain.cli.pack import main as pack_main
from otrain.io.outputs import INFER_COLUMNS
from otrain.options import PARQUET_MARKER

pyarrow_parquet = pytest.importorskip("pyarrow.parquet")

MASTER = "local[2]"


def read_table(path: Path) -> dict[str, dict[str, object]]:
    """An infer_results.dat table as rows keyed by file."""
    table = astropy_ascii.read(path, format="commented_header", guess=False)
    assert tuple(table.colnames) == INFER_COLUMNS
    return {str(row["filename"]): {name: row[name] for name in INFER_COLUMNS} for row in table}


def read_parquet(folder: Path) -> dict[str, dict[str, object]]:
    """otrain-infer-spark's Parquet output as rows keyed by file."""
    table = pyarrow_parquet.read_table(folder)
    assert tuple(table.column_names) == INFER_COLUMNS
    return {row["filename"]: row for row in table.to_pylist()}


def assert_same_results(spark: dict[str, dict[str, object]], reference: dict[str, dict[str, object]]) -> None:
    assert sorted(spark) == sorted(reference)
    for name, expected in reference.items():
        got = spark[name]
        np.testing.assert_allclose(float(got["label1"]), float(expected["label1"]), atol=1e-5, err_msg=name)
        np.testing.assert_allclose(float(got["label0"]), float(expected["label0"]), atol=1e-5, err_msg=name)
        assert int(got["real"]) == int(expected["real"]), name
        for column in ("RA", "Dec", "Xpos", "Ypos", "mag", "magerr", "FWHM", "FWHMPSF"):
            # Parquet holds null for a missing number, the table nan.
            value, wanted = (np.nan if row[column] is None else float(row[column]) for row in (got, expected))
            np.testing.assert_array_equal(value, wanted, err_msg=f"{name} {column}")
        assert str(got["cand_ID"]) == str(expected["cand_ID"]), name
        assert str(got["originalFile"] or "") == str(expected["originalFile"] or "").strip('"'), name


@pytest.fixture(scope="module")
def night(workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The other survey's night, with sub-folders, a gzipped copy, NaN pixels, an EDGE cutout and two bad files."""
    folder = tmp_path_factory.mktemp("spark") / "night"
    shutil.copytree(workspace / "other" / "night", folder, ignore=shutil.ignore_patterns("*.dat"))
    cutouts = sorted(folder.glob("*.fits"))
    sub = folder / "sub"
    sub.mkdir()
    for path in cutouts[:20]:
        path.rename(sub / path.name)
    (sub / "zipped.fits.gz").write_bytes(gzip.compress(cutouts[30].read_bytes()))
    with_nan = np.random.default_rng(3).normal(0.0, 10.0, (40, 40)).astype(np.float32)
    with_nan[18:22, 18:22] = np.nan
    write_gmadet(folder / "with_nan.fits", with_nan, CANDID=77)
    write_gmadet(folder / "on_edge.fits", EDGE="True")
    write_stdpipe(sub / "stdpipe.fits", pixels(40, seed=5))  # no RA, Dec, Xpos...: missing numbers
    (folder / "not_fits.fits").write_bytes(b"hello, this is not FITS")
    (folder / "truncated.fits").write_bytes(cutouts[40].read_bytes()[:3000])
    return folder


@pytest.fixture(scope="module")
def reference(night: Path, trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    table = tmp_path_factory.mktemp("reference") / "infer_results.dat"
    model = trained / "tiny.keras"
    assert call_main(infer_main, "--cutouts", night, "--model", model, "--recursive", "--output", table) == 0
    return table


@pytest.mark.slow
def test_spark_scores_fits_and_packed_parquet_as_otrain_infer_does(
    night: Path, trained: Path, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = trained / "tiny.keras"
    expected = read_table(reference)
    n_files = len([path for path in night.rglob("*") if path.name.endswith((".fits", ".fits.gz"))])
    counts = f"skipped {n_files - len(expected) - 2} EDGE, 2 unreadable"  # the night's own EDGE cutouts, and ours
    capsys.readouterr()

    output, table = tmp_path / "fits.parquet", tmp_path / "spark.dat"
    arguments = ("--model", model, "--output", output, "--table", table, "--master", MASTER, "--batch-size", 16)
    assert call_main(spark_main, "--cutouts", night, *arguments) == 0
    captured = capsys.readouterr()
    assert_same_results(read_parquet(output), expected)
    assert_same_results(read_table(table), expected)
    assert counts in captured.out
    warnings = [line for line in captured.err.splitlines() if "warning: skipped:" in line]
    assert len(warnings) == 2
    assert any("not_fits.fits" in line for line in warnings)
    assert any("truncated.fits: truncated FITS file" in line for line in warnings)
    assert all(line.startswith("otrain-infer-spark: ") for line in captured.err.splitlines())  # no Spark lines
    assert json.loads((output / PARQUET_MARKER).read_text())["command"] == "otrain-infer-spark"
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".partial")]

    packed = tmp_path / "packed"
    assert call_main(pack_main, "--cutouts", night, "--output", packed, "--recursive", "--cutout-size", 32) == 0
    assert counts.replace("skipped ", "").replace(" EDGE", " flagged EDGE") in capsys.readouterr().out
    from_parquet = tmp_path / "from_parquet.parquet"
    assert (
        call_main(spark_main, "--parquet", packed, "--model", model, "--output", from_parquet, "--master", MASTER) == 0
    )
    captured = capsys.readouterr()
    assert counts in captured.out
    assert len([line for line in captured.err.splitlines() if "warning: skipped:" in line]) == 2
    assert_same_results(read_parquet(from_parquet), expected)


@pytest.mark.slow
def test_registered_champion_scores_as_its_file(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import keras
    import mlflow
    from mlflow.tracking import MlflowClient

    from otrain.nets.model import load_model

    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("spark")
    model_file = trained / "tiny.keras"
    card = trained / "tiny.keras.card.json"
    data = json.loads(card.read_text())
    data["threshold"] = 0.37  # a card threshold otrain-infer-spark must find in the run's artifacts
    edited = tmp_path / "card" / "tiny.keras.card.json"
    edited.parent.mkdir()
    edited.write_text(json.dumps(data))
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(edited), artifact_path="training")
        saved = tmp_path / "mlflow_model"
        mlflow.keras.save_model(load_model(model_file), path=str(saved))
        mlflow.log_artifacts(str(saved), artifact_path="model")
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", "otrain-cnn")
    MlflowClient(uri).set_registered_model_alias("otrain-cnn", "champion", version.version)
    keras.backend.clear_session()

    cutouts = make_tree(tmp_path / "few", 6, 6, size=40)
    local_model = tmp_path / "model" / "tiny.keras"
    local_model.parent.mkdir()
    shutil.copy(model_file, local_model)
    shutil.copy(edited, local_model.with_name("tiny.keras.card.json"))
    table = tmp_path / "reference.dat"
    assert call_main(infer_main, "--cutouts", cutouts, "--model", local_model, "--recursive", "--output", table) == 0
    output = tmp_path / "champion.parquet"
    status = call_main(
        spark_main,
        "--cutouts",
        cutouts,
        "--model",
        "models:/otrain-cnn@champion",
        "--output",
        output,
        "--master",
        MASTER,
    )
    assert status == 0
    out = capsys.readouterr().out
    assert "real (P(real) > 0.37)" in out
    assert "scored with keras" in out  # mlflow.keras saved no ONNX twin: auto falls back to Keras
    assert_same_results(read_parquet(output), read_table(table))
    arguments = ("--cutouts", cutouts, "--model", "models:/otrain-cnn@champion", "--output", tmp_path / "never")
    assert call_main(spark_main, *arguments, "--backend", "onnx") == 1
    # Besides MLflow's log lines and its download progress bar, otrain says one line.
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("otrain-infer-spark:")]
    assert len(err) == 1, err
    # The twin is named in the MLflow model, not in the scratch folder it was downloaded to.
    twin = "models:/otrain-cnn@champion/data/model.onnx"
    assert err[0].startswith(f"otrain-infer-spark: error: --backend onnx: {twin} does not exist"), err
    assert "otrain-model-" not in err[0]
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_no_scorable_cutout_is_an_error_and_writes_nothing(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cutouts = tmp_path / "bad"
    cutouts.mkdir()
    (cutouts / "a.fits").write_bytes(b"junk")
    (cutouts / "b.fit").write_bytes(b"more junk")
    output = tmp_path / "out.parquet"
    status = call_main(
        spark_main, "--cutouts", cutouts, "--model", trained / "tiny.keras", "--output", output, "--master", MASTER
    )
    assert status == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("otrain-infer-spark: error: ")
    assert "no cutout could be scored (2 unreadable, 0 flagged EDGE)" in error
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bad"]


def test_bad_options_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cutouts = make_tree(tmp_path / "cutouts", 2, 0)
    model = tmp_path / "model.keras"
    model.write_bytes(b"")
    output = tmp_path / "out.parquet"
    base = ("--model", model, "--output", output)
    cases = {
        (*base,): "--cutouts, --parquet: give exactly one of them",
        (*base, "--cutouts", cutouts, "--parquet", cutouts): "--cutouts, --parquet: give exactly one of them",
        (*base, "--cutouts", tmp_path / "nowhere"): "--cutouts: folder",
        (*base, "--cutouts", cutouts, "--master", "local[two]"): "--master: must be local[*]",
        (*base, "--cutouts", cutouts, "--conf", "spark.executor.memory"): "--conf: must be KEY=VALUE",
        # Java itself would refuse it, saying only that its gateway exited.
        (*base, "--cutouts", cutouts, "--conf", "spark.driver.memory=lots"): (
            "--conf: spark.driver.memory must be a whole number and a unit k, m, g or t (4g, 512m), got 'lots'"
        ),
        (*base, "--cutouts", cutouts, "--threshold", "1.5"): "--threshold: must be a probability",
        (*base, "--cutouts", cutouts, "--prob-ratio", "0"): "--prob-ratio: must be a positive ratio",
        (*base, "--cutouts", cutouts, "--batch-size", "0"): "--batch-size: must be a positive whole number",
        (*base, "--cutouts", cutouts, "--planes", "DIFF", "DIFF"): "--planes: names a plane twice",
        (*base, "--cutouts", cutouts, "--table", tmp_path): "--table: ",
        ("--model", tmp_path / "missing.keras", "--output", output, "--cutouts", cutouts): "--model: file",
        ("--model", "models:/otrain-cnn", "--output", output, "--cutouts", cutouts): "--model: must be models:/",
        (*base, "--cutouts", cutouts, "--table", output / "t.dat"): "--table: ",
        ("--model", model, "--output", cutouts / "scores", "--cutouts", cutouts): "--output: ",
        ("--model", model, "--output", cutouts, "--parquet", cutouts): "--output: ",
    }
    for arguments, message in cases.items():
        assert call_main(spark_main, *arguments) == 2, arguments
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert err.startswith(f"otrain-infer-spark: error: {message}"), err
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    for extra in ((), ("--overwrite",)):  # --overwrite is no advice for a folder it never replaces
        assert call_main(spark_main, "--cutouts", cutouts, "--model", model, "--output", existing, *extra) == 2
        err = capsys.readouterr().err
        assert "exists and is not a Parquet folder written by otrain (it is never replaced" in err
        assert "pass --overwrite" not in err
    assert (existing / "keep.txt").read_text() == "mine"
    link = tmp_path / "link.parquet"
    link.symlink_to(existing)
    assert call_main(spark_main, "--cutouts", cutouts, "--model", model, "--output", link, "--overwrite") == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert not output.exists()


def test_pack_writes_rows_atomically_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cutouts = make_tree(tmp_path / "cutouts", 3, 2, size=24, edge_true=1)
    (cutouts / "true" / "broken.fits").write_bytes(b"broken")
    output = tmp_path / "packed"
    assert call_main(pack_main, "--cutouts", cutouts, "--output", output, "--recursive", "--cutout-size", 20) == 0
    assert "1 flagged EDGE, 1 unreadable" in capsys.readouterr().out
    rows = pyarrow_parquet.read_table(output).to_pylist()
    assert len(rows) == 6
    by_name = {Path(row["filename"]).relative_to(cutouts).as_posix(): row for row in rows}
    assert by_name["true/broken.fits"]["error"].startswith(
        f"{cutouts / 'true' / 'broken.fits'}: not a readable FITS file"
    )
    assert by_name["true/c0000.fits"]["edge"] is True
    assert by_name["true/c0000.fits"]["pixels"] is None
    assert by_name["false/c0000.fits"]["edge"] is False
    from otrain.data.cutouts import crop_center
    from otrain.io.cutouts import read_header, read_pixels

    path = cutouts / "true" / "c0001.fits"
    _, location = read_header(path)
    stored = np.frombuffer(by_name["true/c0001.fits"]["pixels"], dtype="<f4").reshape(
        by_name["true/c0001.fits"]["shape"]
    )
    np.testing.assert_array_equal(stored, crop_center(read_pixels(path, location), 20))
    assert by_name["true/c0001.fits"]["cand_ID"] == "10001"

    before = files_under(output)
    assert call_main(pack_main, "--cutouts", cutouts, "--output", output) == 2
    assert capsys.readouterr().err.strip().endswith("exists; pass --overwrite to replace it, or choose another path")
    assert files_under(output) == before
    assert call_main(pack_main, "--cutouts", cutouts / "false", "--output", output, "--overwrite") == 0
    assert len(pyarrow_parquet.read_table(output)) == 2
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    users_file = tmp_path / "notes.parquet"
    users_file.write_text("mine")
    for path in (foreign, users_file):
        for extra in ((), ("--overwrite",)):
            assert call_main(pack_main, "--cutouts", cutouts, "--output", path, *extra) == 2
            err = capsys.readouterr().err
            assert err.strip().endswith(
                f"--output: '{path}' exists and is not a Parquet folder written by otrain (it is never replaced, "
                "even with --overwrite); choose another path"
            ), err
    assert users_file.read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert call_main(pack_main, "--cutouts", empty, "--output", tmp_path / "never") == 1
    assert "no cutout files" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".partial")]


def test_help_imports_neither_pyspark_nor_tensorflow() -> None:
    printed, heavy = imported_by_help(["infer_spark", "pack"], ["pyspark", "tensorflow", "keras", "mlflow", "pyarrow"])
    assert heavy == []
    assert "usage: otrain-infer-spark --output PATH --model TEXT" in printed
    assert "usage: otrain-pack --cutouts PATH --output PATH" in printed


def test_an_unknown_registered_model_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    cutouts = make_tree(tmp_path / "cutouts", 1, 0)
    output = tmp_path / "out.parquet"
    status = call_main(spark_main, "--cutouts", cutouts, "--model", "models:/nothing@champion", "--output", output)
    assert status == 1
    # MLflow logs its own INFO lines when it creates the empty store; otrain says one line.
    err = [line for line in capsys.readouterr().err.splitlines() if " mlflow." not in line]
    assert len(err) == 1
    assert err[0].startswith(
        "otrain-infer-spark: error: --model models:/nothing@champion: cannot fetch it from sqlite:"
    )
    assert not output.exists()


@pytest.mark.parametrize("backend", ["keras", "onnx"])
def test_the_predict_batch_udf_path_scores_as_the_one_pass_path(
    night: Path, trained: Path, reference: Path, tmp_path: Path, backend: str
) -> None:
    """The alternative the benchmark times (decode, then pyspark's predict_batch_udf on the pixels)."""
    from otrain.options import InferSparkConfig
    from otrain.score.spark import infer_spark
    from otrain.score.spark_executor import predict_batch_scorer

    config = InferSparkConfig(
        cutouts=str(night),
        model=str(trained / "tiny.keras"),
        output=tmp_path / "udf.parquet",
        master=MASTER,
        backend=backend,
    )
    config.preflight()
    report = infer_spark(config, scorer=predict_batch_scorer)
    expected = read_table(reference)
    assert report.backend == backend
    assert report.n_scored == len(expected)
    assert len(report.bad_files) == 2
    assert_same_results(read_parquet(tmp_path / "udf.parquet"), expected)


@pytest.mark.slow
def test_options_and_relative_paths_give_otrain_infers_table(
    night: Path, trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--threshold, --prob-ratio, --planes, --conf, --overwrite; names as given, as otrain-infer writes them."""
    model = trained / "tiny.keras"
    monkeypatch.chdir(night.parent)
    options = ("--threshold", "0.3", "--prob-ratio", "2", "--planes", "DIFF")
    reference = tmp_path / "infer.dat"
    assert (
        call_main(infer_main, "--cutouts", "night", "--model", model, "--recursive", "--output", reference, *options)
        == 0
    )
    expected = read_table(reference)
    assert all(name.startswith("night/") for name in expected)
    output, table = tmp_path / "spark.parquet", tmp_path / "spark.dat"
    arguments = ("--cutouts", "night", "--model", model, "--output", output, "--table", table, *options)
    arguments += ("--master", MASTER, "--conf", "spark.sql.shuffle.partitions=3")
    assert call_main(spark_main, *arguments) == 0
    assert_same_results(read_table(table), expected)
    assert_same_results(read_parquet(output), expected)
    assert call_main(spark_main, *arguments, "--overwrite") == 0
    assert_same_results(read_parquet(output), expected)

    packed = tmp_path / "packed"
    assert (
        call_main(
            pack_main, "--cutouts", "night", "--output", packed, "--recursive", "--planes", "DIFF", "--workers", 1
        )
        == 0
    )
    from_parquet = tmp_path / "from_parquet.parquet"
    arguments = ("--parquet", packed, "--model", model, "--output", from_parquet, "--master", MASTER, *options)
    assert call_main(spark_main, *arguments) == 0
    assert_same_results(read_parquet(from_parquet), expected)


#: Runs each (command, arguments) of a JSON list in this one process, ending each run's output with its status.
_RUNS = (
    "import importlib, json, sys\n"
    "for command, arguments in json.loads(sys.argv[1]):\n"
    "    try:\n"
    "        importlib.import_module(f'otrain.cli.{command}').main(arguments)\n"
    "    except SystemExit as stop:\n"
    "        for stream in (sys.stdout, sys.stderr):\n"
    "            print(f'== exit {stop.code or 0}', file=stream, flush=True)\n"
)


def as_a_user(probe: Path) -> list[str]:
    """A command prefix under which chmod 000 keeps the command out, as it keeps out any user but root.

    Root reads every file: it runs with its capabilities to bypass file permissions dropped.
    """
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root without setpriv: no way to make a file unreadable")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search"]
    check = subprocess.run([*prefix, sys.executable, "-c", f"open({str(probe)!r}, 'rb')"], capture_output=True)
    if check.returncode == 0:
        pytest.skip("chmod 000 does not keep this process out of a file")
    return prefix


def split_runs(text: str) -> list[tuple[int, list[str]]]:
    """The exit status and the lines of each run of _RUNS in its standard output or error."""
    chunks = re.split(r"^== exit (-?\d+)\n", text, flags=re.MULTILINE)
    return [(int(chunks[index + 1]), chunks[index].splitlines()) for index in range(0, len(chunks) - 1, 2)]


@pytest.mark.slow
def test_files_and_settings_spark_cannot_use_are_named(trained: Path, tmp_path: Path) -> None:
    """An unreadable cutout is skipped, counted and listed as otrain-infer does; an unreadable folder and a
    setting that stops Java are one line naming the path or the setting, and write nothing."""
    night = make_tree(tmp_path / "night", 2, 2, size=40)
    unreadable = night / "true" / "c0001.fits"
    (night / "empty.fits").write_bytes(b"")  # Spark never reads an empty file
    shutil.copy(night / "true" / "c0000.fits", night / "100%41.fits")  # a name Spark writes with a %
    locked = make_tree(tmp_path / "locked", 1, 1, size=40)
    model = str(trained / "tiny.keras")  # with its ONNX twin: TensorFlow imported nowhere
    spark = ["--model", model, "--master", "local[1]"]
    runs = [
        ("infer_spark", ["--cutouts", str(night), *spark, "--output", str(tmp_path / "java.parquet"),
                         "--conf", "spark.driver.memory=1k"]),
        ("infer_spark", ["--cutouts", str(locked), *spark, "--output", str(tmp_path / "locked.parquet")]),
        ("infer", ["--cutouts", str(night), "--model", model, "--recursive", "--output", str(tmp_path / "ref.dat")]),
        ("infer_spark", ["--cutouts", str(night), *spark, "--output", str(tmp_path / "path.parquet")]),
        ("infer_spark", ["--cutouts", night.as_uri(), *spark, "--output", str(tmp_path / "uri.parquet")]),
    ]  # fmt: skip
    unreadable.chmod(0)
    (locked / "false").chmod(0)
    try:
        prefix = as_a_user(unreadable)
        result = subprocess.run(
            [*prefix, sys.executable, "-c", _RUNS, json.dumps(runs)], capture_output=True, text=True, cwd=ROOT
        )
    finally:
        unreadable.chmod(0o644)
        (locked / "false").chmod(0o755)
    outs = [lines for _, lines in split_runs(result.stdout)]
    errs = [lines for _, lines in split_runs(result.stderr)]
    assert [status for status, _ in split_runs(result.stderr)] == [1, 1, 0, 0, 0], result.stderr

    # Java would not start: the reason and the --conf settings given, in one line.
    assert len(errs[0]) == 1, errs[0]
    assert errs[0][0].startswith("otrain-infer-spark: error: Spark did not start (master local[1]): Java exited: ")
    assert errs[0][0].endswith("; --conf given: spark.driver.memory=1k")
    # A sub-folder Spark cannot list: the folder given, the one it could not list, and why.
    assert errs[1] == [
        f"otrain-infer-spark: error: {locked}: cannot list the cutouts "
        f"(AccessDeniedException: {locked / 'false'}: Permission denied)"
    ]
    assert not (tmp_path / "java.parquet").exists()
    assert not (tmp_path / "locked.parquet").exists()

    # The unreadable and the empty file: skipped, counted and listed in otrain-infer's own words.
    reference = [line.removeprefix("otrain-infer: ") for line in errs[2] if "warning: skipped:" in line]
    assert len(reference) == 2, errs[2]
    assert reference[1].startswith(f"warning: skipped: {unreadable}: cannot read the file"), reference
    assert [line.removeprefix("otrain-infer-spark: ") for line in errs[3]] == reference
    for out in outs[3:]:
        assert "scored 4 of 6 cutouts" in out[0], out
        assert "skipped 0 EDGE, 2 unreadable" in out[0], out
    expected = read_table(tmp_path / "ref.dat")
    assert_same_results(read_parquet(tmp_path / "path.parquet"), expected)
    # Given as a URI, the folder is read again through Spark's file systems: Hadoop's words.
    assert errs[4] == [
        errs[3][0],  # the empty file
        f"otrain-infer-spark: warning: skipped: {unreadable}: cannot read the file "
        f"(FileNotFoundException: {unreadable} (Permission denied))",
    ]
    assert_same_results(read_parquet(tmp_path / "uri.parquet"), expected)
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".partial")]


# ---------------------------------------------------------------------------------------------
# --backend: the ONNX twin scored by ONNX Runtime on the driver and the executors


#: Runs otrain-infer-spark's main, then says whether the driver imported TensorFlow.
_DRIVER_PROBE = (
    "import sys\n"
    "from otrain.cli.infer_spark import main\n"
    "try:\n"
    "    main(sys.argv[1:])\n"
    "except SystemExit as stop:\n"
    "    code = stop.code\n"
    "print('tensorflow imported:', 'tensorflow' in sys.modules)\n"
    "sys.exit(code)\n"
)


@pytest.mark.slow
def test_onnx_backend_scores_as_keras_and_as_otrain_infer_onnx(
    night: Path, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = trained / "tiny.keras"
    assert (trained / "tiny.onnx").is_file()
    onnx_table = tmp_path / "infer_onnx.dat"
    infer_arguments = ("--cutouts", night, "--model", model, "--recursive", "--output", onnx_table)
    assert call_main(infer_main, *infer_arguments, "--backend", "onnx") == 0
    expected = read_table(onnx_table)

    # auto, the default: the model has its twin, so ONNX Runtime scores and the driver never imports TensorFlow
    auto, auto_table = tmp_path / "auto.parquet", tmp_path / "auto.dat"
    arguments = ["--cutouts", night, "--model", model, "--output", auto, "--table", auto_table, "--master", MASTER]
    result = subprocess.run(
        [sys.executable, "-c", _DRIVER_PROBE, *map(str, arguments)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert "; scored with onnx" in result.stdout
    assert result.stdout.strip().endswith("tensorflow imported: False")
    assert_same_results(read_parquet(auto), expected)
    assert_same_results(read_table(auto_table), expected)

    capsys.readouterr()
    with_keras = tmp_path / "keras.parquet"
    arguments = ("--cutouts", night, "--model", model, "--output", with_keras, "--master", MASTER)
    assert call_main(spark_main, *arguments, "--backend", "keras") == 0
    assert "; scored with keras" in capsys.readouterr().out
    assert_same_results(read_parquet(with_keras), read_parquet(auto))  # P(real) to 1e-5


def test_onnx_backend_without_twin_is_one_line_and_exit_1(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cutouts = make_tree(tmp_path / "few", 2, 2, size=40)
    alone = tmp_path / "alone" / "tiny.keras"
    alone.parent.mkdir()
    shutil.copy(trained / "tiny.keras", alone)
    output = tmp_path / "out.parquet"
    arguments = ("--cutouts", cutouts, "--model", alone, "--output", output, "--master", MASTER)
    assert call_main(spark_main, *arguments, "--backend", "onnx") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"otrain-infer-spark: error: --backend onnx: {alone.with_suffix('.onnx')} does not exist")
    assert not output.exists()


@pytest.mark.slow
def test_the_executors_score_with_the_shipped_twin(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A twin that answers 0.75 for every cutout, stamped for the model: both Spark paths give 0.75, and
    the driver hashes the model file once per run (the backend is chosen once, then passed on)."""
    from otrain.options import InferSparkConfig
    from otrain.score.spark import infer_spark
    from otrain.score.spark_executor import predict_batch_scorer
    from otrain.score.twin import restamp_twin

    cutouts = make_tree(tmp_path / "few", 5, 5, size=40)
    model = tmp_path / "model" / "tiny.keras"
    model.parent.mkdir()
    shutil.copy(trained / "tiny.keras", model)
    restamp_twin(constant_twin(tmp_path / "constant.onnx", 0.75), model)
    hashed = file_hashes(monkeypatch)
    for scorer in (None, predict_batch_scorer):
        output = tmp_path / f"{'one_pass' if scorer is None else 'udf'}.parquet"
        config = InferSparkConfig(cutouts=str(cutouts), model=str(model), output=output, master=MASTER)
        config.preflight()
        hashed.clear()
        report = infer_spark(config, scorer=scorer)
        assert hashed == [model]
        assert (report.backend, report.n_scored) == ("onnx", 10)
        rows = read_parquet(output)
        assert len(rows) == 10
        np.testing.assert_allclose([row["label1"] for row in rows.values()], 0.75, atol=1e-7)


@pytest.mark.slow
def test_mlflow_model_of_otrain_train_scores_with_its_twin(
    trained: Path,
    tracking_uri: str,
    night: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """otrain-train logs data/model.onnx beside data/model.keras: the downloaded model scores with it."""
    run_id = json.loads((trained / "mlflow_run.json").read_text())["run_id"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    table = tmp_path / "infer.dat"
    arguments = ("--cutouts", night, "--model", trained / "tiny.keras", "--recursive", "--output", table)
    assert call_main(infer_main, *arguments, "--backend", "onnx") == 0
    capsys.readouterr()
    output = tmp_path / "run.parquet"
    arguments = ("--cutouts", night, "--model", f"runs:/{run_id}/model", "--output", output, "--master", MASTER)
    assert call_main(spark_main, *arguments, "--backend", "onnx") == 0
    assert "; scored with onnx" in capsys.readouterr().out
    assert_same_results(read_parquet(output), read_table(table))
