"""Options of the commands that study trainings: otrain-optimise-dataset-size and otrain-cross-validate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, model_validator

from otrain.io import outputs as formats
from otrain.io.layout import TRAININGS_FOLDER
from otrain.io.outputs import Output
from otrain.options.base import (
    ExistingFile,
    OpenFraction,
    Probability,
    WritableFolder,
    _at_least_two,
    _check_outputs,
    _model_name,
    option,
)
from otrain.options.training import _SPLIT_BY_HELP, SplitBy, TrainingOptions

__all__ = [
    "CROSSVAL_FILES",
    "CROSSVAL_FOLD_NAME",
    "CROSSVAL_LOCK",
    "CROSSVAL_RECORD",
    "STUDY_FILES",
    "CrossValidateConfig",
    "OptimiseDatasetSizeConfig",
]


#: The dataset-size study's table and figures in --outdir, by --model-name.
STUDY_FILES = (
    "{name}_dataset_size.csv",
    "{name}_scores_dataset_size.png",
    "{name}_ecart_accuracy_size.png",
    "{name}_loss_dataset_size.png",
)


class OptimiseDatasetSizeConfig(TrainingOptions):
    """Train on nested subsets of increasing size to see how much data the model needs.

    One validation set and one test set are drawn (per class, with --seed, by whole groups as
    --split-by says) and kept for every size; the training pool is cut into --n_sections - 1
    nested, stratified subsets of increasing size, the smallest holding at least 10 cutouts.
    Each size is a full otrain-train run, a child of one MLflow parent run, saved to
    <model-path>/CNN_training/<model-name>_size_<size>/. The table
    <outdir>/<model-name>_dataset_size.csv and three figures go to --outdir.
    """

    command: ClassVar[str] = "otrain-optimise-dataset-size"

    cube: ExistingFile = option(..., "Path to the datacube (.npz).")
    model_path: WritableFolder = option(..., "Base folder for the models of each size.")
    model_name: Annotated[str, AfterValidator(_model_name)] = option(..., "Base name of the models.")
    n_sections: Annotated[int, AfterValidator(_at_least_two)] = option(
        20,
        "Number of sections the training pool is divided into (at least 2; at most one per 10 training cutouts).",
        flag="--n_sections",
    )
    outdir: WritableFolder = option(..., "Folder for the figures and the table.")
    frac: OpenFraction = option(0.15, "Fraction of the cube used for validation (early stopping).")
    split_by: SplitBy = option("auto", _SPLIT_BY_HELP)
    threshold: Probability | None = option(
        None,
        "Probability threshold of the test metrics and the card: real if P(real) > threshold. Default 0.5, or "
        "the one --target-fnr or --target-fpr chooses.",
    )
    overwrite: bool = option(
        False,
        "Replace the trainings of an earlier study with the same name (their own files only), and files in "
        "--outdir that otrain did not write.",
    )

    @model_validator(mode="after")
    def _check(self) -> OptimiseDatasetSizeConfig:
        self.check_option_rules(self.__dict__)
        return self

    def check_disk(self) -> None:
        """Check that the table and figures in --outdir are the study's to replace."""
        table, *figures = (self.outdir / name.format(name=self.model_name) for name in STUDY_FILES)
        planned = [Output(table, "csv", formats.STUDY_COLUMNS), *(Output(path, "png") for path in figures)]
        _check_outputs(self, "--outdir", planned, [self.cube])

    def output_folders(self) -> list[Path]:
        """--outdir and the models' folder."""
        return [self.outdir, self.model_path / TRAININGS_FOLDER]


#: What otrain-cross-validate writes into --output, besides one training per fold.
CROSSVAL_FILES = ("oof_scores.csv", "cv_metrics.json")
#: In --output while a cross-validation runs (removed when it has finished): its options, for --resume.
CROSSVAL_RECORD = ".otrain-cross-validate.json"
#: In --output while a cross-validation runs: the lock file that keeps a second one out.
CROSSVAL_LOCK = ".otrain-cross-validate.lock"
#: Name of the training of fold k (1-based): <output>/CNN_training/fold-<k>/.
CROSSVAL_FOLD_NAME = "fold-{fold}"


class CrossValidateConfig(TrainingOptions):
    """Judge the training options by grouped, stratified K-fold cross-validation on one cube.

    The cube's groups (otrain-convert --group-keyword, for example the ZTF objectId) are split
    into --folds folds with the same class mix (scikit-learn's StratifiedGroupKFold, shuffled
    with --seed); a cube without groups counts each cutout as its own group. Fold k is the test
    set of training k; its validation set (early stopping) is a grouped, stratified share of
    about --frac of the other folds, and the rest trains. Every cutout is scored once, by the
    model that never saw its group. Outputs in --output: oof_scores.csv (one row per cutout:
    index in the cube, candid, group, label, fold, P(real), the fold's threshold), cv_metrics.json (metrics of each
    fold, their mean and sample standard deviation, and the metrics of all out-of-fold scores
    pooled), and each fold's training in <output>/CNN_training/fold-<k>/. Tracked as one MLflow
    parent run (the mean and spread, the two files) with one child run per fold. An interrupted
    cross-validation goes on with --resume: the folds that finished are kept, the interrupted one
    resumes from its last finished epoch.
    """

    command: ClassVar[str] = "otrain-cross-validate"

    cube: ExistingFile = option(..., "Path to the datacube (.npz) written by otrain-convert.")
    folds: Annotated[int, AfterValidator(_at_least_two)] = option(
        5, "Number of folds, at least 2 and at most the number of groups holding each class."
    )
    output: WritableFolder = option(..., "Folder for the scores, the metrics and the fold trainings.")
    frac: OpenFraction = option(
        0.15, "Fraction of the other folds used for validation (early stopping), drawn by groups and classes."
    )
    threshold: Probability | None = option(
        None,
        "Probability threshold of the metrics: real if P(real) > threshold. Default 0.5, or the one each fold's "
        "training chooses with --target-fnr or --target-fpr.",
    )
    test_frac: OpenFraction | None = option(None, "Not used: each fold is in turn the test set.")
    group_keyword: str | None = option(
        None,
        "Require the cube's groups to be the values of this header keyword (for example FILE, the ZTF objectId), "
        "as otrain-convert --group-keyword stored them; without it, the cube's groups whatever their keyword, or "
        "one group per cutout for a cube without groups.",
    )
    init_from: ExistingFile | None = option(
        None, "Start every fold from the weights of this trained model (see otrain-train --init-from)."
    )
    resume: bool = option(
        False,
        "Continue an interrupted cross-validation, with the same options (--no-tracking too): the folds that "
        "finished are kept, the interrupted one goes on from its last finished epoch, the others are trained.",
    )
    overwrite: bool = option(False, "Replace a cross-validation in --output (its files and fold trainings).")

    @classmethod
    def check_option_rules(cls, values: dict[str, Any]) -> None:
        """Check the training options' rules, and refuse --test-frac (each fold is the test set)."""
        if values.get("test_frac") is not None:
            raise ValueError("--test-frac: not used by otrain-cross-validate: each fold is in turn the test set")
        super().check_option_rules({**values, "test_frac": 0.0})

    @model_validator(mode="after")
    def _check(self) -> CrossValidateConfig:
        self.check_option_rules(self.__dict__)
        if self.resume and self.overwrite:
            raise ValueError("--resume, --overwrite: give one or the other")
        return self

    def check_disk(self) -> None:
        """Check that the scores and metrics in --output are the command's to replace."""
        # What --output holds (an interrupted or finished cross-validation) is checked by the
        # command itself (otrain.train.crossval_resume.check_resumable): this module stays free of its code.
        outputs = [
            Output(self.output / CROSSVAL_FILES[0], "csv", formats.OOF_COLUMNS),
            Output(self.output / CROSSVAL_FILES[1], "json", formats.CROSSVAL_KEYS),
        ]
        inputs = [self.cube] + ([self.init_from] if self.init_from is not None else [])
        _check_outputs(self, "--output", outputs, inputs)

    def output_folders(self) -> list[Path]:
        """--output and its folder of trainings."""
        return [self.output / TRAININGS_FOLDER]
