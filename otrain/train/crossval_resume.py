"""An interrupted otrain-cross-validate: its record, what its folds hold, what ``--resume`` does.

While a cross-validation runs, ``<output>/.otrain-cross-validate.json`` (its record) holds its
options, its cube's hash, its MLflow parent run and, per fold, a mark written before the fold's
training writes anything (``starting``, or ``replacing`` what ``--overwrite`` replaces) and one
written when it has finished (before its model scores the fold). From the marks and what each
fold's folder holds (:func:`plan_folds`), a rerun says what is there and ``--resume`` decides,
per fold, to keep, resume, train, replace, or refuse a training the record does not know. The
whole run holds ``<output>/.otrain-cross-validate.lock`` (:func:`locked`).

Split from :mod:`otrain.train.crossval` (the folds, the trainings and the scores), which uses it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otrain.errors import DataError, OptionError
from otrain.io.atomic import write_json_atomic
from otrain.io.jsonfile import read_json
from otrain.io.layout import (
    CHECKPOINT_COMPLETE,
    CHECKPOINT_FOLDER,
    CHECKPOINT_POINTER,
    CHECKPOINT_STAGING,
    METRICS_FILE,
)
from otrain.io.locking import describe_holder, exclusive_lock, is_locked, read_holder
from otrain.options import (
    CROSSVAL_FILES,
    CROSSVAL_FOLD_NAME,
    CROSSVAL_LOCK,
    CROSSVAL_RECORD,
    CrossValidateConfig,
    TrainConfig,
)

__all__ = [
    "FINISHED",
    "FOREIGN",
    "KEEP",
    "REPLACE",
    "REPLACING",
    "RESUME",
    "STARTED",
    "STARTING",
    "TRAIN",
    "FoldPlan",
    "check_output",
    "check_record",
    "check_resumable",
    "describe_folds",
    "fold_config",
    "fold_is_empty",
    "forget_unstarted",
    "locked",
    "new_record",
    "parent_run_id",
    "plan_folds",
    "read_record",
    "write_record",
]

#: What --resume does with a fold: keep its finished training, resume its interrupted one,
#: train it (its folder holds no training), train it again in place of what its folder holds
#: (a training this cross-validation set out to replace, or a part of its own), or refuse: its
#: folder holds a training the record does not know, which only --overwrite replaces.
KEEP, RESUME, TRAIN, REPLACE, FOREIGN = "keep", "resume", "train", "replace", "foreign"
#: A fold's record entry, written before its training starts: "starting" when its folder held
#: no training (whatever training is there is then this cross-validation's), "replacing" when it
#: held one that --overwrite replaces; "started" once a replacing training has set up its own
#: checkpoint; "finished" once the training has finished (before its model scores the fold).
STARTING, REPLACING, STARTED, FINISHED = "starting", "replacing", "started", "finished"
#: Options that say how a cross-validation runs or where, not what it computes: a resumed
#: cross-validation may change them. Not --no-tracking: the folds' metrics go into the parent
#: run, which would miss those of the folds one session did not track.
_NOT_RECORDED = {"resume", "overwrite", "tracking_uri", "experiment", "cube", "output"}


@dataclass(frozen=True)
class FoldPlan:
    """What one fold's training folder holds, and what ``--resume`` does with it.

    Attributes
    ----------
    fold : int
        The fold (1-based).
    action : str
        ``"keep"``, ``"resume"``, ``"train"``, ``"replace"`` or ``"foreign"`` (see :data:`KEEP`).
    state : str
        What the folder holds, for messages ("finished", "interrupted after epoch 3", ...).
    """

    fold: int
    action: str
    state: str


def fold_config(output: Path, fold: int) -> TrainConfig:
    """Return fold ``fold``'s training options, unvalidated: only its paths are used."""
    return TrainConfig.model_construct(model_path=output, model_name=CROSSVAL_FOLD_NAME.format(fold=fold))


def _checkpoint_progress(checkpoint: Path) -> str:
    """How far the interrupted training whose checkpoint is ``checkpoint`` got."""
    if (checkpoint / CHECKPOINT_STAGING / CHECKPOINT_COMPLETE).is_file():
        return "after its last epoch, while its outputs were moved in"
    pointer = checkpoint / CHECKPOINT_POINTER
    if not pointer.is_file():
        return "before its first epoch ended"
    try:
        return f"after epoch {int(json.loads(pointer.read_text())['epochs_done'])}"
    except (OSError, ValueError, TypeError, KeyError):
        return f"(its checkpoint {pointer} cannot be read)"


def fold_is_empty(output: Path, fold: int) -> bool:
    """Tell whether fold ``fold``'s folder holds nothing of a training (or does not exist)."""
    return _folder_state(output, fold)[0] == "empty"


def _folder_state(output: Path, fold: int) -> tuple[str, str]:
    """Return what fold ``fold``'s folder holds: a kind and its description.

    The kinds: ``"interrupted"`` (a checkpoint), ``"finished"`` (the model and its metrics, no
    checkpoint), ``"partial"`` (files of a training without its model or metrics), ``"empty"``.
    """
    training = fold_config(output, fold)
    if (training.output_dir / CHECKPOINT_FOLDER).is_dir():
        return "interrupted", f"interrupted {_checkpoint_progress(training.output_dir / CHECKPOINT_FOLDER)}"
    if training.model_file.is_file() and (training.output_dir / METRICS_FILE).is_file():
        return "finished", "finished"
    if training.holds_training():
        return "partial", f"partly written (no {training.model_file.name} or metrics.json)"
    return "empty", "not started"


#: What --resume does with a fold, by its record entry and what its folder holds (the kinds of
#: :func:`_folder_state`). An empty folder is trained; any other pair is a training the record
#: does not know (:data:`FOREIGN`).
_ACTIONS = {
    (STARTING, "interrupted"): RESUME,
    (STARTING, "finished"): KEEP,
    (STARTING, "partial"): REPLACE,
    (STARTED, "interrupted"): RESUME,
    (STARTED, "finished"): REPLACE,  # a replacing training stopped (diverged) before it replaced these files
    (STARTED, "partial"): REPLACE,
    (REPLACING, "interrupted"): REPLACE,
    (REPLACING, "finished"): REPLACE,
    (REPLACING, "partial"): REPLACE,
    (FINISHED, "finished"): KEEP,
    (FINISHED, "partial"): REPLACE,
}


def plan_folds(output: Path, folds: int, record: dict[str, Any] | None) -> list[FoldPlan]:
    """Say what each fold's folder holds and what ``--resume`` does with it.

    Parameters
    ----------
    output : Path
        The cross-validation's --output.
    folds : int
        Its number of folds.
    record : dict or None
        Its record (the file ``CROSSVAL_RECORD``); None: none was found, and every
        training there is foreign.

    Returns
    -------
    list of FoldPlan
        One per fold, in order.
    """
    marks = (record or {}).get("folds", {})
    plans = []
    for fold in range(1, folds + 1):
        kind, state = _folder_state(output, fold)
        mark = marks.get(str(fold))
        action = TRAIN if kind == "empty" else _ACTIONS.get((mark, kind), FOREIGN)
        if action == REPLACE and mark in (REPLACING, STARTED):
            state = f"being replaced (the training there is {state})"
        elif action == FOREIGN and record is not None:
            state = f"holding a training this cross-validation did not start ({state})"
        plans.append(FoldPlan(fold, action, state))
    return plans


def describe_folds(plans: list[FoldPlan]) -> str:
    """Describe the folds by state.

    For example "folds 1, 2 finished; fold 3 interrupted after epoch 2; fold 4 not started".
    """
    groups: dict[str, list[int]] = {}
    for plan in plans:
        groups.setdefault(plan.state, []).append(plan.fold)
    return "; ".join(
        f"{'folds' if len(folds) > 1 else 'fold'} {', '.join(map(str, folds))} {state}"
        for state, folds in groups.items()
    )


def _record(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("options"), dict):
        raise ValueError("not a record of otrain-cross-validate")
    return data


def read_record(output: Path) -> dict[str, Any] | None:
    """Read the record of an unfinished cross-validation in ``output``; None when there is none.

    Raises
    ------
    DataError
        When the record cannot be read.
    """
    path = output / CROSSVAL_RECORD
    if not path.is_file():
        return None
    record = read_json(path, "the record of the interrupted cross-validation cannot be read", parse=_record)
    record.setdefault("folds", {})
    return record


def write_record(output: Path, record: dict[str, Any]) -> None:
    """Replace the record of the cross-validation in ``output``, atomically."""
    write_json_atomic(output / CROSSVAL_RECORD, record)


def check_resumable(config: CrossValidateConfig) -> None:
    """Refuse to start where a cross-validation is (finished or not), unless told what to do with it.

    A finished cross-validation (its scores and metrics, no record) is replaced only with
    ``--overwrite``; an interrupted one is continued with ``--resume`` or replaced with
    ``--overwrite``, and the message says what each fold holds. ``--resume`` needs an
    interrupted cross-validation and its record, and refuses a fold folder holding a training
    that record does not know (only ``--overwrite`` replaces it).

    Parameters
    ----------
    config : CrossValidateConfig
        Validated options.

    Raises
    ------
    ValueError
        With the option's flag and the rule, when refused; also while another
        otrain-cross-validate runs in ``--output``.
    """
    lock = config.output / CROSSVAL_LOCK
    if is_locked(lock):
        raise ValueError(
            f"--output: {str(config.output)!r} is in use by a running otrain-cross-validate "
            f"({describe_holder(read_holder(lock))}); wait for it to finish"
        )
    check_output(config)


def check_output(config: CrossValidateConfig) -> None:
    """:func:`check_resumable` but the lock: what is in ``--output``, and what the options say to do with it."""
    output = config.output
    try:
        record = read_record(output)
        unreadable = ""
    except DataError as error:
        record, unreadable = None, str(error)
    folds = int(record["options"].get("folds", config.folds)) if record else config.folds
    present = [output / name for name in CROSSVAL_FILES if (output / name).exists()]
    if present and record is None and not unreadable:
        if config.resume:
            raise ValueError(
                f"--resume: nothing to resume in {str(output)!r}: it holds a finished cross-validation ({present[0]}); "
                "pass --overwrite to run it again"
            )
        if not config.overwrite:
            raise ValueError(
                f"--output: {str(output)!r} already holds a cross-validation ({present[0]}); "
                "pass --overwrite to replace it"
            )
        return
    plans = plan_folds(output, folds, record)
    if record is None:
        held = [plan for plan in plans if plan.action != TRAIN]
        if held and not config.overwrite:
            why = unreadable or f"no record of the cross-validation that wrote them ({output / CROSSVAL_RECORD})"
            raise ValueError(
                f"--output: {str(output)!r} holds fold trainings ({describe_folds(held)}) but {why}, so they cannot "
                "be resumed; pass --overwrite to start again"
            )
        if config.resume and unreadable:
            raise ValueError(f"--resume: {unreadable}; pass --overwrite to start again")
        if config.resume:
            raise ValueError(f"--resume: nothing to resume in {str(output)!r}: no interrupted cross-validation")
        return
    if all(plan.action == TRAIN for plan in plans) and not present:
        if config.resume:
            raise ValueError(
                f"--resume: nothing to resume in {str(output)!r}: the interrupted cross-validation trained no fold"
            )
        return  # it stopped before its first fold: nothing of it is left but the record, which a new one replaces
    foreign = [plan for plan in plans if plan.action == FOREIGN]
    if config.resume and foreign:
        folders = ", ".join(repr(str(fold_config(output, plan.fold).output_dir)) for plan in foreign)
        raise ValueError(
            f"--resume: {folders} {'hold trainings' if len(foreign) > 1 else 'holds a training'} the interrupted "
            f"cross-validation did not start; move {'them' if len(foreign) > 1 else 'it'} away, or pass --overwrite "
            "to start again"
        )
    if not (config.resume or config.overwrite):
        raise ValueError(
            f"--output: {str(output)!r} holds an interrupted cross-validation of {folds} folds "
            f"({describe_folds(plans)}); pass --resume to continue it (with the same options) or --overwrite to "
            "start again"
        )


def new_record(config: CrossValidateConfig, data_hash: str) -> dict[str, Any]:
    """Return the record a cross-validation of ``config`` on a cube of ``data_hash`` starts with."""
    options = config.model_dump(mode="json", exclude=_NOT_RECORDED)
    if config.init_from is not None:  # the same file, however it is spelled or wherever it is resumed from
        options["init_from"] = str(config.init_from.resolve())
    return {"options": options, "data_hash": data_hash, "mlflow_run": None, "folds": {}}


def check_record(config: CrossValidateConfig, record: dict[str, Any], data_hash: str) -> None:
    """Refuse to resume with other options, or on another cube, than the interrupted cross-validation's."""
    expected = new_record(config, data_hash)
    saved = {**record["options"], "data_hash": record.get("data_hash")}
    wanted = {**expected["options"], "data_hash": data_hash}
    changed = sorted(key for key in wanted if key in saved and saved[key] != wanted[key])
    if changed:
        raise OptionError(
            f"--resume: the interrupted cross-validation used other values of {', '.join(changed)}; resume with the "
            "same ones or pass --overwrite to start again"
        )


def parent_run_id(config: CrossValidateConfig, record: dict[str, Any] | None, uri: str) -> str | None:
    """Return the MLflow parent run to reopen: the interrupted cross-validation's, when --resume finds one."""
    previous = (record or {}).get("mlflow_run")
    if not config.resume or not previous:
        return None
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(uri).get_run(previous["run_id"])
    except Exception:  # not found, or another store
        raise OptionError(
            f"--resume: the interrupted cross-validation's MLflow run {previous['run_id']} is not in {uri} (it was "
            f"started in {previous['tracking_uri']}); set MLFLOW_TRACKING_URI to that store, or pass --overwrite to "
            "start again"
        ) from None
    return str(previous["run_id"])


@contextmanager
def locked(output: Path) -> Iterator[None]:
    """Hold the lock of ``output``; then remove the folders taking it created, when left empty."""
    created = [folder for folder in (output, *output.parents) if not folder.exists()]
    try:
        with exclusive_lock(output / CROSSVAL_LOCK, f"the cross-validation in {output}"):
            yield
    finally:
        for folder in created:  # the deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty: the cross-validation wrote into it
                break


def forget_unstarted(config: CrossValidateConfig, record: dict[str, Any]) -> None:
    """After a failure or an interruption: remove the record when nothing of the run is left to resume.

    So a cross-validation that stopped before any fold's training wrote into its folder (a
    refused option, a cube that cannot be split, Ctrl-C while the first fold starts) leaves
    nothing behind, and the next one starts as if it had never been.
    """
    path = config.output / CROSSVAL_RECORD
    if path.is_file() and not record["folds"]:
        path.unlink()
