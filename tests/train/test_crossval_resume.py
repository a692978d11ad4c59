"""What an interrupted cross-validation's folds hold and what a rerun does with them, without training.

The fold folders are laid out by hand as a training leaves them (its model and metrics, a
checkpoint, a few of its files); the record is the dictionary otrain-cross-validate writes. The
slow tests of test_crossval.py interrupt real cross-validations; these go through every pair of
record mark and folder content, and every refusal of :func:`check_output`, in milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from otrain.options import CROSSVAL_RECORD, CrossValidateConfig
from otrain.train.crossval_resume import (
    FINISHED,
    FOREIGN,
    KEEP,
    REPLACE,
    REPLACING,
    RESUME,
    STARTED,
    STARTING,
    TRAIN,
    FoldPlan,
    check_output,
    describe_folds,
    plan_folds,
)


def fold_folder(output: Path, fold: int) -> Path:
    return output / "CNN_training" / f"fold-{fold}"


def lay_out(output: Path, fold: int, kind: str) -> None:
    """Leave in fold ``fold``'s folder what a training leaves: ``kind`` is one of the folder kinds."""
    folder = fold_folder(output, fold)
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "finished":
        (folder / f"fold-{fold}.keras").write_bytes(b"model")
        (folder / "metrics.json").write_text("{}")
    elif kind == "partial":
        (folder / "history.csv").write_text("epoch,loss\n1,0.5\n")
    elif kind.startswith("interrupted"):
        checkpoint = folder / ".checkpoint"
        checkpoint.mkdir()
        if kind == "interrupted after 3":
            (checkpoint / "latest.json").write_text(json.dumps({"epochs_done": 3}))
        elif kind == "interrupted publishing":
            (checkpoint / "latest.json").write_text(json.dumps({"epochs_done": 5}))
            (checkpoint / "final").mkdir()
            (checkpoint / "final" / ".complete").write_text("")
        elif kind == "interrupted unreadable":
            (checkpoint / "latest.json").write_text('{"epochs_done": ')
    elif kind == "empty":
        (folder / ".otrain-train.lock").write_text("{}")  # what a failed fold leaves at most
    else:
        raise AssertionError(kind)


#: What each folder kind is called in messages (fold 1's).
STATES = {
    "finished": "finished",
    "partial": "partly written (no fold-1.keras or metrics.json)",
    "interrupted": "interrupted before its first epoch ended",
    "empty": "not started",
}

#: What --resume does with a fold, by its record mark (None: the record has no mark for it) and
#: what its folder holds; the module's docstring and the marks' comment are the rule.
ACTIONS = {
    (None, "empty"): TRAIN,
    (None, "interrupted"): FOREIGN,
    (None, "finished"): FOREIGN,
    (None, "partial"): FOREIGN,
    (STARTING, "empty"): TRAIN,
    (STARTING, "interrupted"): RESUME,
    (STARTING, "finished"): KEEP,
    (STARTING, "partial"): REPLACE,
    (STARTED, "empty"): TRAIN,
    (STARTED, "interrupted"): RESUME,
    (STARTED, "finished"): REPLACE,
    (STARTED, "partial"): REPLACE,
    (REPLACING, "empty"): TRAIN,
    (REPLACING, "interrupted"): REPLACE,
    (REPLACING, "finished"): REPLACE,
    (REPLACING, "partial"): REPLACE,
    (FINISHED, "empty"): TRAIN,
    (FINISHED, "interrupted"): FOREIGN,
    (FINISHED, "finished"): KEEP,
    (FINISHED, "partial"): REPLACE,
}


@pytest.mark.parametrize(("mark", "kind"), list(ACTIONS), ids=[f"{mark}-{kind}" for mark, kind in ACTIONS])
def test_what_resume_does_follows_the_mark_and_the_folder(tmp_path: Path, mark: str | None, kind: str) -> None:
    lay_out(tmp_path, 1, kind)
    record = {"options": {}, "folds": {} if mark is None else {"1": mark}}
    [plan] = plan_folds(tmp_path, 1, record)
    action = ACTIONS[(mark, kind)]
    state = STATES[kind]
    if action == REPLACE and mark in (REPLACING, STARTED):
        state = f"being replaced (the training there is {state})"
    elif action == FOREIGN:
        state = f"holding a training this cross-validation did not start ({state})"
    assert plan == FoldPlan(1, action, state)


@pytest.mark.parametrize("kind", ["interrupted", "finished", "partial", "empty"])
def test_without_a_record_every_training_is_foreign(tmp_path: Path, kind: str) -> None:
    lay_out(tmp_path, 1, kind)
    assert plan_folds(tmp_path, 1, None) == [FoldPlan(1, TRAIN if kind == "empty" else FOREIGN, STATES[kind])]


@pytest.mark.parametrize(
    ("kind", "state"),
    [
        ("interrupted", "interrupted before its first epoch ended"),
        ("interrupted after 3", "interrupted after epoch 3"),
        ("interrupted publishing", "interrupted after its last epoch, while its outputs were moved in"),
        ("interrupted unreadable", "interrupted (its checkpoint {pointer} cannot be read)"),
    ],
)
def test_an_interrupted_fold_says_how_far_it_got(tmp_path: Path, kind: str, state: str) -> None:
    lay_out(tmp_path, 1, kind)
    pointer = fold_folder(tmp_path, 1) / ".checkpoint" / "latest.json"
    assert plan_folds(tmp_path, 1, {"options": {}, "folds": {"1": STARTING}}) == [
        FoldPlan(1, RESUME, state.format(pointer=pointer))
    ]


def test_folds_in_the_same_state_are_named_together_in_the_order_they_first_come() -> None:
    plans = [
        FoldPlan(1, KEEP, "finished"),
        FoldPlan(2, RESUME, "interrupted after epoch 2"),
        FoldPlan(3, KEEP, "finished"),
        FoldPlan(4, TRAIN, "not started"),
        FoldPlan(5, TRAIN, "not started"),
    ]
    assert describe_folds(plans) == "folds 1, 3 finished; fold 2 interrupted after epoch 2; folds 4, 5 not started"
    assert describe_folds(plans[1:2]) == "fold 2 interrupted after epoch 2"


# ---------------------------------------------------------------------------------------------
# check_output: what a rerun with or without --resume and --overwrite says about --output.


def config(output: Path, folds: int = 3, **flags: bool) -> CrossValidateConfig:
    """Options as validated (the cube is not read by check_output)."""
    return CrossValidateConfig.model_construct(output=output, folds=folds, **flags)


def outcomes(output: Path, folds: int = 3) -> dict[str, str | None]:
    """The refusal of each way to rerun (None: it may start)."""
    said: dict[str, str | None] = {}
    for name, flags in (("plain", {}), ("resume", {"resume": True}), ("overwrite", {"overwrite": True})):
        try:
            check_output(config(output, folds, **flags))
            said[name] = None
        except ValueError as error:
            said[name] = str(error)
    return said


def write_record(output: Path, record: dict[str, Any] | str) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    path = output / CROSSVAL_RECORD
    path.write_text(record if isinstance(record, str) else json.dumps(record))
    return path


def test_an_empty_output_starts_and_has_nothing_to_resume(tmp_path: Path) -> None:
    out = tmp_path / "cv"
    assert outcomes(out) == {
        "plain": None,
        "resume": f"--resume: nothing to resume in {str(out)!r}: no interrupted cross-validation",
        "overwrite": None,
    }


def test_a_finished_cross_validation_is_replaced_only_with_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "cv"
    out.mkdir()
    (out / "cv_metrics.json").write_text("{}")
    lay_out(out, 1, "finished")
    assert outcomes(out) == {
        "plain": f"--output: {str(out)!r} already holds a cross-validation ({out / 'cv_metrics.json'}); pass "
        "--overwrite to replace it",
        "resume": f"--resume: nothing to resume in {str(out)!r}: it holds a finished cross-validation "
        f"({out / 'cv_metrics.json'}); pass --overwrite to run it again",
        "overwrite": None,
    }


def test_fold_trainings_without_a_record_cannot_be_resumed(tmp_path: Path) -> None:
    out = tmp_path / "cv"
    lay_out(out, 1, "finished")
    lay_out(out, 2, "interrupted after 3")
    refused = (
        f"--output: {str(out)!r} holds fold trainings (fold 1 finished; fold 2 interrupted after epoch 3) but no "
        f"record of the cross-validation that wrote them ({out / CROSSVAL_RECORD}), so they cannot be resumed; "
        "pass --overwrite to start again"
    )
    assert outcomes(out) == {"plain": refused, "resume": refused, "overwrite": None}


def test_an_unreadable_record_is_named(tmp_path: Path) -> None:
    out = tmp_path / "cv"
    path = write_record(out, "[1, 2")
    said = outcomes(out)
    assert said["plain"] is None  # nothing of a training there: a new one replaces the record
    assert said["resume"] is not None
    assert said["resume"].startswith(f"--resume: {path}: the record of the interrupted cross-validation cannot be read")
    assert said["resume"].endswith("; pass --overwrite to start again")
    assert said["overwrite"] is None
    lay_out(out, 2, "finished")
    said = outcomes(out)
    for name in ("plain", "resume"):
        assert said[name] is not None
        assert said[name].startswith(  # type: ignore[union-attr]
            f"--output: {str(out)!r} holds fold trainings (fold 2 finished) but {path}: the record"
        )
    assert said["overwrite"] is None


def test_a_record_whose_folds_never_started_leaves_nothing_to_resume(tmp_path: Path) -> None:
    out = tmp_path / "cv"
    write_record(out, {"options": {"folds": 3}, "folds": {}})
    assert outcomes(out) == {
        "plain": None,
        "resume": f"--resume: nothing to resume in {str(out)!r}: the interrupted cross-validation trained no fold",
        "overwrite": None,
    }


def test_an_interrupted_cross_validation_is_named_fold_by_fold_with_the_folds_it_was_run_with(tmp_path: Path) -> None:
    out = tmp_path / "cv"
    write_record(out, {"options": {"folds": 4}, "folds": {"1": FINISHED, "2": STARTING}})
    lay_out(out, 1, "finished")
    lay_out(out, 2, "interrupted after 3")
    assert outcomes(out, folds=2) == {
        "plain": f"--output: {str(out)!r} holds an interrupted cross-validation of 4 folds (fold 1 finished; fold 2 "
        "interrupted after epoch 3; folds 3, 4 not started); pass --resume to continue it (with the same options) "
        "or --overwrite to start again",
        "resume": None,
        "overwrite": None,
    }


def test_resume_refuses_fold_trainings_the_record_does_not_know(tmp_path: Path) -> None:
    out = tmp_path / "cv"
    write_record(out, {"options": {"folds": 3}, "folds": {"1": FINISHED}})
    lay_out(out, 1, "finished")
    lay_out(out, 2, "finished")
    said = outcomes(out)
    assert said["resume"] == (
        f"--resume: {str(fold_folder(out, 2))!r} holds a training the interrupted cross-validation did not start; "
        "move it away, or pass --overwrite to start again"
    )
    assert said["overwrite"] is None
    lay_out(out, 3, "partial")
    assert outcomes(out)["resume"] == (
        f"--resume: {str(fold_folder(out, 2))!r}, {str(fold_folder(out, 3))!r} hold trainings the interrupted "
        "cross-validation did not start; move them away, or pass --overwrite to start again"
    )
