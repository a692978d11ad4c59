"""Grouped cross-validation: groups in the cube (otrain-convert --group-keyword), otrain-cross-validate."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from conftest import call_main, refused_init_sources, write_gmadet, write_stdpipe
from helpers import epochs_printed, history_epochs, tracking_at
from numpy.testing import assert_allclose, assert_array_equal

from otrain.cli.convert import main as convert_main
from otrain.cli.cross_validate import main as cross_validate_main
from otrain.data.datacube import Datacube
from otrain.errors import DataError
from otrain.io.locking import exclusive_lock, hostname

FOLDS = 3


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def columns(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "cube": rng.normal(size=(n, 8, 8, 1)).astype(np.float32),
        "labels": np.array([1, 0] * (n // 2), dtype=np.int64),
        "mags": np.linspace(15, 20, n),
        "errmags": np.linspace(0.01, 0.2, n),
        "filters": np.array(["r"] * n),
        "fwhms": np.full(n, 2.5),
        "candids": np.arange(100, 100 + n),
    }


# ---------------------------------------------------------------------------------------------
# The cube's groups


def test_groups_round_trip_and_a_cube_without_groups_keeps_its_hash(tmp_path: Path) -> None:
    plain = Datacube(**columns(6), planes=("DIFF",))
    # The hash this cube had before cubes could hold groups: cubes without groups keep theirs.
    assert plain.content_hash() == "bcddb144ff17aa2fb523b3a863759c988c4ebf78adf4fc084d5dc1c2ccb28386"
    plain.save(tmp_path / "plain.npz")
    assert "groups" not in np.load(tmp_path / "plain.npz").files
    assert Datacube.load(tmp_path / "plain.npz").groups is None

    groups = np.array(["ZTF21aaa", "ZTF21aaa", "ZTF21bbb", "ZTF21ccc", "ZTF21bbb", "ZTF21ddd"])
    grouped = Datacube(**columns(6), planes=("DIFF",), groups=groups)
    assert grouped.content_hash() != plain.content_hash()
    loaded = Datacube.load(grouped.save(tmp_path / "grouped.npz"))
    assert_array_equal(loaded.groups, groups)
    assert loaded.content_hash() == grouped.content_hash()
    rows = np.array([4, 0, 2])
    assert_array_equal(loaded.subset(rows).groups, ["ZTF21bbb", "ZTF21aaa", "ZTF21bbb"])
    assert_array_equal(Datacube.load(loaded.subset(rows).save(tmp_path / "sub.npz")).groups, groups[rows])
    other = Datacube(**columns(6), planes=("DIFF",), groups=np.roll(groups, 1))
    assert other.content_hash() != grouped.content_hash()

    with pytest.raises(ValueError, match=r"groups must be text of shape \(6,\)"):
        Datacube(**columns(6), groups=groups[:5])
    arrays = dict(np.load(tmp_path / "grouped.npz"))
    np.savez(tmp_path / "bad.npz", **{**arrays, "groups": np.arange(6)})
    with pytest.raises(DataError, match=r"bad\.npz: 'groups' must hold one text per cutout \(6\)"):
        Datacube.load(tmp_path / "bad.npz")


def test_convert_stores_the_group_keyword_and_skips_files_without_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = tmp_path / "cutouts"
    expected = {}
    for index in range(6):
        candid = 100 + index
        expected[candid] = f"ZTF24obj{index // 2}"
        write_gmadet(tree / "true" / f"g{index}.fits", CANDID=candid, FILE=expected[candid])
    for index in range(4):
        candid = 200 + index
        expected[candid] = f"ZTF24obj{index}"  # objects with real and bogus alerts
        # STDPipe files hold their metadata (FILE too) in the primary header.
        write_stdpipe(tree / "false" / f"s{index}.fits", NAME=str(candid), FILE=expected[candid])
    write_gmadet(tree / "true" / "nofile.fits", CANDID=300, FILE=None)
    write_stdpipe(tree / "false" / "nofile.fits", NAME="301")
    write_stdpipe(tree / "false" / "blank.fits", NAME="302", FILE="  ")
    write_gmadet(tree / "true" / "edge.fits", CANDID=303, FILE=None, EDGE="True")  # EDGE: dropped before
    common = ("--path", tmp_path, "--cutouts", tree, "--frac-true", "-1", "--group-keyword", "FILE")

    assert call_main(convert_main, *common, "--cube", "strict") == 1
    err = capsys.readouterr().err
    assert "3 bad cutouts, the first:" in err
    assert f"{tree / 'true' / 'nofile.fits'}: missing keyword FILE (needed for --group-keyword)" in err
    assert not (tmp_path / "datacube" / "strict.npz").exists()

    assert call_main(convert_main, *common, "--cube", "grouped", "--skip-bad-files") == 0
    captured = capsys.readouterr()
    assert "true:  8 files, 6 kept; rejected: 1 EDGE, 1 bad" in captured.out
    assert "false: 6 files, 4 kept; rejected: 0 EDGE, 2 bad" in captured.out
    assert "groups: 4 distinct values of FILE" in captured.out
    assert f"skipped: {tree / 'false' / 'blank.fits'}: missing keyword FILE" in captured.err
    cube = Datacube.load(tmp_path / "datacube" / "grouped.npz")
    assert {int(candid): str(group) for candid, group in zip(cube.candids, cube.groups, strict=True)} == expected
    assert cube.group_keyword == "FILE"
    assert cube.subset(np.array([1, 0])).group_keyword == "FILE"

    assert call_main(convert_main, "--path", tmp_path, "--cutouts", tree, "--cube", "plain", "--skip-bad-files") == 0
    assert Datacube.load(tmp_path / "datacube" / "plain.npz").groups is None


# ---------------------------------------------------------------------------------------------
# otrain-cross-validate


def learnable_cube(path: Path, *, grouped: bool, n_objects: int = 30, per_object: int = 3) -> Path:
    """Objects of several alerts each, most of one class, some of both; real alerts show a source."""
    rng = np.random.default_rng(1)
    n = n_objects * per_object
    groups = np.repeat([f"obj{index:03d}" for index in range(n_objects)], per_object)
    object_class = rng.permutation(np.arange(n_objects) % 2)
    labels = np.repeat(object_class, per_object)
    labels[::7] = 1 - labels[::7]  # some objects have alerts of both classes
    y, x = np.mgrid[:16, :16]
    source = np.exp(-((x - 7.5) ** 2 + (y - 7.5) ** 2) / (2 * 1.5**2))
    pixels = rng.normal(0, 1, (n, 16, 16)) + 6 * labels[:, None, None] * source
    cube = Datacube(
        **{**columns(n), "cube": pixels[..., None].astype(np.float32), "labels": labels.astype(np.int64)},
        planes=("DIFF",),
        groups=groups if grouped else None,
    )
    return cube.save(path)


@pytest.fixture(scope="module")
def crossval(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """One tracked 3-fold cross-validation of a grouped cube: (cube, output folder, tracking URI)."""
    root = tmp_path_factory.mktemp("crossval")
    cube = learnable_cube(root / "grouped.npz", grouped=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with tracking_at(uri):
        status = call_main(
            cross_validate_main,
            *("--cube", cube, "--folds", FOLDS, "--output", root / "cv", "--epochs", "2", "--patience", "0"),
            *("--normalisation", "robust", "--frac", "0.2", "--experiment", "cv"),
        )
    assert status == 0
    return cube, root / "cv", uri


def test_no_group_is_in_two_folds(crossval: tuple[Path, Path, str]) -> None:
    cube_file, out, _ = crossval
    rows = read_csv(out / "oof_scores.csv")
    folds_of_group: dict[str, set[int]] = defaultdict(set)
    for row in rows:
        folds_of_group[row["group"]].add(int(row["fold"]))
    assert all(len(folds) == 1 for folds in folds_of_group.values()), folds_of_group
    assert {fold for folds in folds_of_group.values() for fold in folds} == set(range(1, FOLDS + 1))
    cube = Datacube.load(cube_file)
    assert [row["group"] for row in rows] == list(cube.groups)  # the cube's own groups, row by row
    for fold in range(1, FOLDS + 1):
        folder = out / "CNN_training" / f"fold-{fold}"
        test = Datacube.load(folder / "test_set" / "datacube" / "cube_test.npz")
        validation = Datacube.load(folder / "validation_set" / "datacube" / "cube_validation.npz")
        assert set(test.groups) == {group for group, folds in folds_of_group.items() if folds == {fold}}
        assert not set(validation.groups) & set(test.groups)
        assert validation.n_real > 0
        assert validation.n_bogus > 0


def test_every_cutout_has_one_out_of_fold_score_from_the_model_that_did_not_train_on_it(
    crossval: tuple[Path, Path, str],
) -> None:
    from otrain.nets.model import load_model

    cube_file, out, _ = crossval
    cube = Datacube.load(cube_file)
    rows = read_csv(out / "oof_scores.csv")
    assert [int(row["index"]) for row in rows] == list(range(len(cube)))
    assert [int(row["label"]) for row in rows] == list(cube.labels)
    assert [int(row["candid"]) for row in rows] == list(cube.candids)
    folds = np.array([int(row["fold"]) for row in rows])
    p_real = np.array([float(row["p_real"]) for row in rows])
    assert np.all((p_real >= 0) & (p_real <= 1))
    for fold in range(1, FOLDS + 1):
        folder = out / "CNN_training" / f"fold-{fold}"
        members = np.flatnonzero(folds == fold)
        model = load_model(folder / f"fold-{fold}.keras")
        assert_allclose(p_real[members], model.predict(cube.cube[members], verbose=0)[:, 1], rtol=1e-5, atol=1e-6)
        card = json.loads((folder / f"fold-{fold}.keras.card.json").read_text())
        assert card["split_sizes"]["test"] == len(members)
        assert {float(rows[index]["threshold"]) for index in members} == {card["threshold"]}
        assert sum(card["split_sizes"].values()) == len(cube)


def test_metrics_per_fold_their_spread_and_pooled(crossval: tuple[Path, Path, str]) -> None:
    from sklearn.metrics import roc_auc_score

    from otrain.metrics.evaluation import threshold_for_fnr

    _, out, _ = crossval
    report = json.loads((out / "cv_metrics.json").read_text())
    rows = read_csv(out / "oof_scores.csv")
    assert report["folds"] == FOLDS
    assert report["grouped"] is True
    assert report["n_groups"] == 30
    assert [row["fold"] for row in report["per_fold"]] == list(range(1, FOLDS + 1))
    for name in ("roc_auc", "average_precision", "accuracy", "mcc", "expected_calibration_error"):
        values = [row[name] for row in report["per_fold"]]
        assert report["mean"][name] == pytest.approx(sum(values) / FOLDS)
        assert report["std"][name] == pytest.approx(np.std(values, ddof=1))
    # Wiring: the pooled figure is that of the CSV's scores, the per-fold one that of the fold's rows.
    labels = [int(row["label"]) for row in rows]
    p_real = [float(row["p_real"]) for row in rows]
    assert report["pooled"]["roc_auc"] == pytest.approx(roc_auc_score(labels, p_real))
    # The FPR at 1 % FNR is the exact operating point of those scores, counted (not a 0.01 grid's).
    at_fnr = threshold_for_fnr(labels, p_real, 0.01)
    bogus = np.asarray(p_real)[np.asarray(labels) == 0]
    assert report["pooled"]["fpr_at_fnr_1pc"] == pytest.approx(np.mean(bogus > at_fnr))
    first = [(label, p) for label, p, row in zip(labels, p_real, rows, strict=True) if row["fold"] == "1"]
    assert report["per_fold"][0]["roc_auc"] == pytest.approx(roc_auc_score(*zip(*first, strict=True)))
    assert report["per_fold"][0]["n_test"] == len(first)
    assert report["pooled"]["roc_auc"] > 0.8  # a source anyone can see: the folds did learn
    thresholds = np.array([float(row["threshold"]) for row in rows])
    decided = np.asarray(p_real) > thresholds
    assert report["pooled"]["accuracy"] == pytest.approx(np.mean(decided == np.asarray(labels, dtype=bool)))


def test_one_parent_run_with_a_child_run_per_fold(crossval: tuple[Path, Path, str]) -> None:
    from mlflow.tracking import MlflowClient

    _, out, uri = crossval
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("cv")
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(run.info.run_name for run in children) == [f"fold-{fold}" for fold in range(1, FOLDS + 1)]
    assert len(runs) == FOLDS + 1
    report = json.loads((out / "cv_metrics.json").read_text())
    assert parent.data.metrics["mean_roc_auc"] == pytest.approx(report["mean"]["roc_auc"])
    assert parent.data.metrics["std_mcc"] == pytest.approx(report["std"]["mcc"])
    assert parent.data.metrics["pooled_roc_auc"] == pytest.approx(report["pooled"]["roc_auc"])
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id, "cross_validation")}
    assert artifacts == {"cross_validation/oof_scores.csv", "cross_validation/cv_metrics.json"}
    for child in children:
        run_file = json.loads((out / "CNN_training" / child.info.run_name / "mlflow_run.json").read_text())
        assert run_file["run_id"] == child.info.run_id


def test_a_cube_without_groups_has_one_group_per_cutout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cube = learnable_cube(tmp_path / "plain.npz", grouped=False, n_objects=12)
    out = tmp_path / "cv"
    status = call_main(
        cross_validate_main,
        *("--cube", cube, "--folds", "2", "--output", out, "--epochs", "1", "--no-tracking"),
    )
    assert status == 0
    captured = capsys.readouterr()
    assert "records no groups (otrain-convert --group-keyword): each cutout is its own group" in captured.err
    # No --threshold: each fold's own, here the default.
    assert "(real if P(real) > the fold's threshold: 0.5 (fold 1), 0.5 (fold 2); " in captured.out
    assert "None" not in captured.out
    rows = read_csv(out / "oof_scores.csv")
    assert [row["group"] for row in rows] == [str(index) for index in range(36)]
    assert sorted({row["fold"] for row in rows}) == ["1", "2"]
    assert json.loads((out / "cv_metrics.json").read_text())["grouped"] is False


def test_group_keyword_requires_the_cubes_groups_of_that_keyword(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = learnable_cube(tmp_path / "plain.npz", grouped=False, n_objects=12)
    grouped = Datacube.load(learnable_cube(tmp_path / "grouped.npz", grouped=True, n_objects=12))
    by_file = Datacube(**{**grouped.__dict__, "group_keyword": "FILE"}).save(tmp_path / "by_file.npz")
    common = ("--folds", "2", "--epochs", "1", "--no-tracking", "--group-keyword", "FILE")
    assert call_main(cross_validate_main, "--cube", plain, "--output", tmp_path / "a", *common) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        f"{plain}: the cube records no groups; convert the cutouts with otrain-convert --group-keyword FILE"
    )
    assert len(err.splitlines()) == 1
    other = ("--folds", "2", "--epochs", "1", "--no-tracking", "--group-keyword", "OBJECT")
    assert call_main(cross_validate_main, "--cube", by_file, "--output", tmp_path / "b", *other) == 1
    assert "the cube's groups are values of FILE, not OBJECT" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert not (tmp_path / "b").exists()
    assert call_main(cross_validate_main, "--cube", by_file, "--output", tmp_path / "c", *common) == 0
    assert json.loads((tmp_path / "c" / "cv_metrics.json").read_text())["grouped"] is True


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--folds", "1"), "--folds: must be at least 2, got 1"),
        (("--test-frac", "0.2"), "--test-frac: not used by otrain-cross-validate: each fold is in turn the test set"),
        (
            ("--folds", "21"),
            "--folds: 21 folds need at least 21 groups of each class; {cube} has 23 holding real cutouts and 20 "
            "holding bogus ones; give at most 20",
        ),
        (("--resume",), "--resume: nothing to resume in '{out}': no interrupted cross-validation"),
        (("--resume", "--overwrite"), "--resume, --overwrite: give one or the other"),
    ],
    ids=["one-fold", "test-frac", "more-folds-than-groups", "nothing-to-resume", "resume-and-overwrite"],
)
def test_bad_options_are_one_line_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: tuple[str, ...], message: str
) -> None:
    cube = learnable_cube(tmp_path / "c.npz", grouped=True, n_objects=30)
    written = Datacube.load(cube)  # the figures the message names: objects with real and with bogus alerts
    assert (len(set(written.groups[written.labels == 1])), len(set(written.groups[written.labels == 0]))) == (23, 20)
    out = tmp_path / "out" / "cv"
    assert call_main(cross_validate_main, "--cube", cube, "--output", out, "--no-tracking", *options) == 2
    err = capsys.readouterr().err
    assert err == f"otrain-cross-validate: error: {message.format(cube=cube, out=out)}\n"
    assert not (tmp_path / "out").exists()


def test_resume_names_an_unreadable_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cube = learnable_cube(tmp_path / "c.npz", grouped=True, n_objects=12)
    record = tmp_path / "cv" / ".otrain-cross-validate.json"
    record.parent.mkdir()
    record.write_text("{")
    options = ("--cube", cube, "--output", tmp_path / "cv", "--folds", "2", "--no-tracking", "--resume")
    assert call_main(cross_validate_main, *options) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"otrain-cross-validate: error: --resume: {record}: the record of the interrupted cross-validation cannot be "
        "read ("
    )
    assert err.endswith("); pass --overwrite to start again\n")
    assert len(err.splitlines()) == 1
    assert record.read_text() == "{"


def test_an_earlier_cross_validation_is_replaced_only_with_overwrite(
    crossval: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    cube, out, _ = crossval
    before = (out / "oof_scores.csv").read_bytes()
    assert call_main(cross_validate_main, "--cube", cube, "--output", out, "--folds", FOLDS, "--no-tracking") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"otrain-cross-validate: error: --output: '{out}' already holds a cross-validation")
    assert err.rstrip().endswith("pass --overwrite to replace it")
    assert call_main(cross_validate_main, "--cube", cube, "--output", out, "--folds", FOLDS, "--resume") == 2
    assert capsys.readouterr().err == (
        f"otrain-cross-validate: error: --resume: nothing to resume in '{out}': it holds a finished "
        f"cross-validation ({out / 'oof_scores.csv'}); pass --overwrite to run it again\n"
    )
    assert (out / "oof_scores.csv").read_bytes() == before


def test_without_threshold_the_summary_gives_each_folds_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cube = learnable_cube(tmp_path / "c.npz", grouped=True, n_objects=12)
    out = tmp_path / "cv"
    options = ("--folds", "2", "--epochs", "1", "--no-tracking", "--target-fnr", "0.2")
    assert call_main(cross_validate_main, "--cube", cube, "--output", out, *options) == 0
    printed = capsys.readouterr().out
    per_fold = json.loads((out / "cv_metrics.json").read_text())["per_fold"]
    used = ", ".join(f"{row['threshold']:.6g} (fold {row['fold']})" for row in per_fold)
    assert f"(real if P(real) > the fold's threshold: {used}; std over folds with ddof=1; " in printed
    assert "None" not in printed


def test_a_refused_init_from_writes_nothing_and_the_corrected_command_needs_no_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every model the folds cannot start from is refused before the first fold: no fold folder, no record."""
    cube = learnable_cube(tmp_path / "c.npz", grouped=True, n_objects=12)
    out = tmp_path / "out" / "cv"
    options = ("--cube", cube, "--output", out, "--folds", "2", "--epochs", "1", "--no-tracking")
    for source, message in refused_init_sources(tmp_path / "sources", (16, 16, 1), ("DIFF",)):
        assert call_main(cross_validate_main, *options, "--init-from", source) == 1, source
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1] == f"otrain-cross-validate: error: {message}"
        assert not (tmp_path / "out").exists(), f"{source}: {sorted((tmp_path / 'out').rglob('*'))}"
    assert call_main(cross_validate_main, *options) == 0
    assert (out / "cv_metrics.json").is_file()


#: otrain-cross-validate, sent Ctrl-C (a real SIGINT) once fold 2 has checkpointed its first epoch.
CTRL_C_IN_FOLD_2 = """
import os, signal, sys
import otrain.train.checkpoint
save = otrain.train.checkpoint.Checkpoint.save
def save_then_ctrl_c(self, *args, **kwargs):
    save(self, *args, **kwargs)
    if self.folder.parent.name == "fold-2" and self.epochs_done == 1:
        os.kill(os.getpid(), signal.SIGINT)
otrain.train.checkpoint.Checkpoint.save = save_then_ctrl_c
from otrain.cli.cross_validate import main
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_an_interrupted_cross_validation_says_what_is_there_and_resume_keeps_the_finished_folds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow.tracking import MlflowClient

    cube = learnable_cube(tmp_path / "c.npz", grouped=True)
    out = tmp_path / "cv"
    folds = out / "CNN_training"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    options = [
        *("--cube", str(cube), "--folds", "3", "--output", str(out), "--epochs", "3", "--patience", "0"),
        *("--normalisation", "robust", "--frac", "0.2", "--experiment", "cv"),
    ]
    interrupted = subprocess.run(
        [sys.executable, "-c", CTRL_C_IN_FOLD_2, *options],
        capture_output=True,
        text=True,
        env={**os.environ, "OTRAIN_PROGRESS": "0"},
    )
    assert interrupted.returncode == 130, interrupted.stderr
    assert interrupted.stderr.strip().splitlines()[-1] == "otrain-cross-validate: error: interrupted"
    assert epochs_printed(interrupted.stdout) == [1, 2, 3, 1]
    kept = folds / "fold-1" / "fold-1.keras"
    before = kept.stat()
    assert json.loads((folds / "fold-2" / ".checkpoint" / "latest.json").read_text())["epochs_done"] == 1
    fold_2_run = json.loads((folds / "fold-2" / ".checkpoint" / "mlflow_run.json").read_text())["run_id"]
    assert not (folds / "fold-3").exists()
    assert not (out / "oof_scores.csv").exists()
    record = out / ".otrain-cross-validate.json"
    parent_run = json.loads(record.read_text())["mlflow_run"]["run_id"]
    client = MlflowClient(uri)
    assert client.get_run(parent_run).info.status == "KILLED"

    # Run again as if nothing were there: refused, and told what is there and what to do.
    assert call_main(cross_validate_main, *options) == 2
    assert capsys.readouterr().err == (
        f"otrain-cross-validate: error: --output: '{out}' holds an interrupted cross-validation of 3 folds (fold 1 "
        "finished; fold 2 interrupted after epoch 1; fold 3 not started); pass --resume to continue it (with the "
        "same options) or --overwrite to start again\n"
    )
    # Resumed with other options: refused before anything is written.
    saved = record.read_bytes()
    assert call_main(cross_validate_main, *options, "--resume", "--dropout", "0.1") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "otrain-cross-validate: error: --resume: the interrupted cross-validation used other values of dropout; "
        "resume with the same ones or pass --overwrite to start again"
    )
    # Nor untracked: the parent run would miss the metrics of the folds trained now.
    assert call_main(cross_validate_main, *options, "--resume", "--no-tracking") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "otrain-cross-validate: error: --resume: the interrupted cross-validation used other values of tracking; "
        "resume with the same ones or pass --overwrite to start again"
    )
    assert record.read_bytes() == saved

    assert call_main(cross_validate_main, *options, "--resume") == 0
    printed = capsys.readouterr().out
    assert (
        f"resuming the cross-validation in {out}: fold 1 finished; fold 2 interrupted after epoch 1; fold 3 not started"
    ) in printed
    assert next(line for line in printed.splitlines() if line.startswith("--- fold 1 ")).endswith(
        "(finished before: kept)"
    )
    assert "epoch 1 of 3 had finished" in printed
    assert epochs_printed(printed) == [2, 3, 1, 2, 3]  # fold 1 is not trained again, fold 2 goes on
    after = kept.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert history_epochs(folds / "fold-2") == [1, 2, 3]
    assert not record.exists()
    assert not (folds / "fold-2" / ".checkpoint").exists()
    report = json.loads((out / "cv_metrics.json").read_text())
    assert [row["fold"] for row in report["per_fold"]] == [1, 2, 3]
    assert [row["epochs_run"] for row in report["per_fold"]] == [3, 3, 3]
    rows = read_csv(out / "oof_scores.csv")
    assert sorted({row["fold"] for row in rows}) == ["1", "2", "3"]
    assert all(0 <= float(row["p_real"]) <= 1 for row in rows)
    # One parent run, resumed, with the three folds' runs; fold 2's is the one it started.
    experiment = client.get_experiment_by_name("cv")
    runs = client.search_runs([experiment.experiment_id])
    assert [run.info.run_id for run in runs if "mlflow.parentRunId" not in run.data.tags] == [parent_run]
    children = {run.info.run_name: run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent_run}
    assert sorted(children) == ["fold-1", "fold-2", "fold-3"]
    assert children["fold-2"].info.run_id == fold_2_run
    assert {run.info.status for run in runs} == {"FINISHED"}
    history = client.get_metric_history(parent_run, "fold_roc_auc")
    assert sorted(metric.step for metric in history) == [1, 2, 3]  # the kept fold is logged once


def test_fold_trainings_without_a_record_are_named_and_an_empty_fold_folder_blocks_nothing(
    crossval: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from otrain.options import CrossValidateConfig

    cube, out, _ = crossval
    # The folds of a cross-validation interrupted by an older otrain, which kept no record.
    older = tmp_path / "older"
    shutil.copytree(out / "CNN_training", older / "CNN_training")
    for extra in ((), ("--resume",)):
        options = ("--cube", cube, "--output", older, "--folds", FOLDS, "--no-tracking", *extra)
        assert call_main(cross_validate_main, *options) == 2
        assert capsys.readouterr().err == (
            f"otrain-cross-validate: error: --output: '{older}' holds fold trainings (folds 1, 2, 3 finished) but no "
            f"record of the cross-validation that wrote them ({older / '.otrain-cross-validate.json'}), so they "
            "cannot be resumed; pass --overwrite to start again\n"
        )
    # What a failed fold leaves at most: its folder, with the lock file of a killed training.
    empty = tmp_path / "empty"
    (empty / "CNN_training" / "fold-1").mkdir(parents=True)
    (empty / "CNN_training" / "fold-1" / ".otrain-train.lock").write_text("{}")
    assert CrossValidateConfig(cube=cube, output=empty, folds=FOLDS).output == empty


#: otrain-cross-validate sent Ctrl-C (a real SIGINT) at $CTRL_C_AT: "set-up", once fold 1's
#: checkpoint holds its options, before its training is tracked or runs; "scoring", once fold 1
#: has finished, as its model is loaded to score its fold.
CTRL_C_IN_FOLD_1 = """
import os, signal, sys
from pathlib import Path
import otrain.nets.model, otrain.train.training
if os.environ["CTRL_C_AT"] == "set-up":
    write = otrain.train.training.write_text_atomic
    def write_then_ctrl_c(path, *args, **kwargs):
        written = write(path, *args, **kwargs)
        if Path(path).name == "options.json" and Path(path).parent.parent.name == "fold-1":
            os.kill(os.getpid(), signal.SIGINT)
        return written
    otrain.train.training.write_text_atomic = write_then_ctrl_c
else:
    load = otrain.nets.model.load_model
    def ctrl_c_then_load(path, *args, **kwargs):
        if Path(path).parent.name == "fold-1":
            os.kill(os.getpid(), signal.SIGINT)
        return load(path, *args, **kwargs)
    otrain.nets.model.load_model = ctrl_c_then_load
from otrain.cli.cross_validate import main
main(sys.argv[1:])
"""


def interrupt_fold_1(at: str, options: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run otrain-cross-validate in a process of its own, sent Ctrl-C at ``at`` (see CTRL_C_IN_FOLD_1)."""
    interrupted = subprocess.run(
        [sys.executable, "-c", CTRL_C_IN_FOLD_1, *options],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "OTRAIN_PROGRESS": "0", "CTRL_C_AT": at},
    )
    assert interrupted.returncode == 130, interrupted.stderr
    assert interrupted.stderr.strip().splitlines()[-1] == "otrain-cross-validate: error: interrupted"
    return interrupted


@pytest.mark.slow
def test_ctrl_c_as_a_fold_sets_up_its_training_leaves_it_to_resume_and_resume_replaces_no_other_training(
    crossval: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from otrain.nets.model import build_model, save_model

    cube = learnable_cube(tmp_path / "c.npz", grouped=True, n_objects=12)
    out = tmp_path / "cv"
    fold_1, fold_2 = out / "CNN_training" / "fold-1", out / "CNN_training" / "fold-2"
    options = [*("--cube", str(cube), "--folds", "2", "--output", str(out), "--epochs", "1", "--no-tracking")]
    # Started with --init-from relative to its folder, resumed below with the file's absolute path.
    source = save_model(build_model((16, 16, 1)), tmp_path / "init.keras")
    interrupt_fold_1("set-up", [*options, "--init-from", source.name], cwd=tmp_path)
    options += ["--init-from", str(source)]
    record = out / ".otrain-cross-validate.json"
    assert json.loads(record.read_text())["folds"] == {"1": "starting"}  # written before fold 1's folder
    assert (fold_1 / ".checkpoint" / "options.json").is_file()
    # While another otrain-cross-validate runs there (its lock, held here), neither is it named
    # as interrupted nor does --resume start.
    saved = record.read_bytes()
    with exclusive_lock(out / ".otrain-cross-validate.lock", "a cross-validation"):
        for extra in ((), ("--resume",)):
            assert call_main(cross_validate_main, *options, *extra) == 2
            err = capsys.readouterr().err
            assert err.startswith(
                f"otrain-cross-validate: error: --output: '{out}' is in use by a running otrain-cross-validate (PID "
                f"{os.getpid()} on host {hostname()}, started "
            )
            assert err.endswith(" UTC); wait for it to finish\n")
    # --overwrite refused before its first fold (fold 1's folder in use) leaves the record as it was.
    with exclusive_lock(fold_1 / ".otrain-train.lock", "a training"):
        assert call_main(cross_validate_main, *options, "--overwrite") == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"otrain-cross-validate: error: the training folder {fold_1} is in use by PID ")
    assert record.read_bytes() == saved
    assert call_main(cross_validate_main, *options) == 2
    assert capsys.readouterr().err == (
        f"otrain-cross-validate: error: --output: '{out}' holds an interrupted cross-validation of 2 folds (fold 1 "
        "interrupted before its first epoch ended; fold 2 not started); pass --resume to continue it (with the same "
        "options) or --overwrite to start again\n"
    )
    # A training the record does not know, in fold 2's folder: --resume leaves it alone.
    shutil.copytree(crossval[1] / "CNN_training" / "fold-2", fold_2)
    assert call_main(cross_validate_main, *options, "--resume") == 2
    assert capsys.readouterr().err == (
        f"otrain-cross-validate: error: --resume: '{fold_2}' holds a training the interrupted cross-validation did "
        "not start; move it away, or pass --overwrite to start again\n"
    )
    assert (fold_2 / "fold-2.keras").read_bytes() == (
        crossval[1] / "CNN_training" / "fold-2" / "fold-2.keras"
    ).read_bytes()
    shutil.rmtree(fold_2)

    assert call_main(cross_validate_main, *options, "--resume") == 0
    printed = capsys.readouterr().out
    assert (
        f"resuming the cross-validation in {out}: fold 1 interrupted before its first epoch ended; fold 2 not started"
        in printed
    )
    assert "no epoch had finished, starting from epoch 1" in printed
    assert epochs_printed(printed) == [1, 1]
    assert not record.exists()
    assert [row["fold"] for row in json.loads((out / "cv_metrics.json").read_text())["per_fold"]] == [1, 2]


@pytest.mark.slow
def test_ctrl_c_as_a_finished_fold_is_scored_keeps_it_finished(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cube = learnable_cube(tmp_path / "c.npz", grouped=True, n_objects=12)
    out = tmp_path / "cv"
    options = [*("--cube", str(cube), "--folds", "2", "--output", str(out), "--epochs", "1", "--no-tracking")]
    interrupt_fold_1("scoring", options)
    assert json.loads((out / ".otrain-cross-validate.json").read_text())["folds"] == {"1": "finished"}
    kept = (out / "CNN_training" / "fold-1" / "fold-1.keras").stat()
    assert call_main(cross_validate_main, *options) == 2
    assert "(fold 1 finished; fold 2 not started); pass --resume" in capsys.readouterr().err
    assert call_main(cross_validate_main, *options, "--resume") == 0
    printed = capsys.readouterr().out
    assert next(line for line in printed.splitlines() if line.startswith("--- fold 1 ")).endswith(
        "(finished before: kept)"
    )
    assert epochs_printed(printed) == [1]  # fold 2's only
    after = (out / "CNN_training" / "fold-1" / "fold-1.keras").stat()
    assert (after.st_ino, after.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)


def test_what_resume_does_with_each_fold_follows_the_record(crossval: tuple[Path, Path, str], tmp_path: Path) -> None:
    """An --overwrite stopped in fold 3: its record marks the earlier trainings it replaces."""
    from otrain.train.crossval_resume import FOREIGN, KEEP, REPLACE, RESUME, TRAIN, describe_folds, plan_folds

    folder = tmp_path / "cv"
    shutil.copytree(crossval[1] / "CNN_training", folder / "CNN_training")
    (folder / "CNN_training" / "fold-3" / ".checkpoint").mkdir()
    marks = {"1": "finished", "2": "replacing", "3": "started"}
    plans = plan_folds(folder, 4, {"options": {}, "folds": marks})
    assert [plan.action for plan in plans] == [KEEP, REPLACE, RESUME, TRAIN]
    assert describe_folds(plans) == (
        "fold 1 finished; fold 2 being replaced (the training there is finished); fold 3 interrupted before its first "
        "epoch ended; fold 4 not started"
    )
    # Without its marks, the trainings are foreign: --resume leaves them alone.
    plans = plan_folds(folder, 3, {"options": {}, "folds": {"1": "finished"}})
    assert [plan.action for plan in plans] == [KEEP, FOREIGN, FOREIGN]
    assert plans[1].state == "holding a training this cross-validation did not start (finished)"
