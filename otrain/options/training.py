"""Options of otrain-train: the training options every fitting command shares, the training's constants, TF_CONFIG.

The constants the option models validate against or quote in their help (the architectures,
the default dropout and learning rate, the learning-rate schedules and the plateau rule, the
``--batch-size auto`` rule, the monitored metrics) live here with them; the training code reads
them from here, so the help cannot drift from what the training does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from otrain.errors import OptionError
from otrain.io.layout import CARD_SUFFIX, CHECKPOINT_FOLDER, INT8_FILE, TRAINING_FILES, TRAINING_LOCK, training_folder
from otrain.io.locking import is_locked
from otrain.io.outputs import is_same_file
from otrain.options.base import (
    CommandConfig,
    DropoutRate,
    ExistingFile,
    NonNegativeInt,
    OpenFraction,
    PositiveInt,
    Probability,
    Seed,
    WritableFolder,
    _at_least_two,
    _model_name,
    _positive_float,
    option,
)
from otrain.options.recipes import RECIPES, Recipe, recipe_flags

__all__ = [
    "ARCHITECTURES",
    "AUTO_BATCH_MAX",
    "AUTO_BATCH_MIN",
    "AUTO_BATCH_MIN_STEPS",
    "DEFAULT_ARCHITECTURE",
    "DEFAULT_DROPOUT",
    "DEFAULT_LEARNING_RATE",
    "MONITOR_MODES",
    "PLATEAU_FACTOR",
    "PLATEAU_PATIENCE",
    "SPLIT_BY",
    "TRAINING_JOBS",
    "Architecture",
    "Cluster",
    "LrSchedule",
    "Monitor",
    "SplitBy",
    "TrainConfig",
    "TrainingOptions",
    "cluster_from_environment",
]

# --------------------------------------------------------------------------------------------
# Defaults that are not options of their own (the options' defaults are in the models below).


#: The O'TRAIN CNN's dropout rate and Adam learning rate (the original's; the training defaults).
DEFAULT_DROPOUT = 0.3
DEFAULT_LEARNING_RATE = 1e-3
#: The networks otrain-train builds, by --architecture: the original O'TRAIN CNN (the default),
#: and a small VGG-like network with batch normalisation for small real sets.
Architecture = Literal["otrain", "vgg"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
DEFAULT_ARCHITECTURE: Architecture = "otrain"
#: --lr-schedule: 'constant' (the original's Adam rate), 'plateau' (halved after PLATEAU_PATIENCE epochs
#: without a better --monitor value, and again every PLATEAU_PATIENCE epochs while none comes), 'cosine'
#: (Keras' CosineDecay from --learning-rate to zero over the --epochs planned).
LrSchedule = Literal["constant", "plateau", "cosine"]
PLATEAU_PATIENCE = 3
PLATEAU_FACTOR = 0.5
#: --monitor: the validation metric that early stopping and the best weights follow, and whether
#: lower or higher is better. The AUCs are those of P(real) for the real class (Keras' AUC metric).
Monitor = Literal["val_loss", "val_roc_auc", "val_pr_auc"]
MONITOR_MODES: dict[str, Literal["min", "max"]] = {"val_loss": "min", "val_roc_auc": "max", "val_pr_auc": "max"}
#: --split-by: 'group' keeps the cutouts of one group (the cube's groups, otrain-convert --group-keyword)
#: in one of the training, validation and test sets; 'row' splits cutout by cutout (the original);
#: 'auto' splits by group when the cube records groups, else by row.
SplitBy = Literal["auto", "group", "row"]
SPLIT_BY: tuple[str, ...] = get_args(SplitBy)
#: ``--batch-size auto``: the original's 1024, reduced so that an epoch has at least
#: AUTO_BATCH_MIN_STEPS gradient steps, never below AUTO_BATCH_MIN cutouts.
AUTO_BATCH_MAX = 1024
AUTO_BATCH_MIN = 16
AUTO_BATCH_MIN_STEPS = 20


_SPLIT_BY_HELP = (
    "How the cube is split into training, validation and test sets, each with the cube's class mix: 'group' "
    "keeps the cutouts of one group (one object: the cube's groups, from otrain-convert --group-keyword) in one "
    "set, so no object is both trained and tested on; 'row' splits cutout by cutout (the original); 'auto' "
    "splits by group when the cube records groups, else by row. A cube of one cutout per group is split as by row."
)


def _batch_size(value: int | str) -> int | str:
    if value == "auto":
        return value
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"must be a positive whole number or 'auto', got {value!r}")
    return value


class TrainingOptions(CommandConfig):
    """Options shared by the commands that train models (otrain-train, dataset-size study, cross-validation)."""

    recipe: Recipe = option(
        "original",
        "Fill the training options not given with a named set; options given still override it. 'original': "
        "the original's defaults. 'small-real', for a few hundred real, imbalanced cutouts (docs/own-survey.md): "
        f"{recipe_flags(RECIPES['small-real'])}; convert the cube for it with --frac-true -1 --planes IMAGE TEMPLATE "
        "DIFF --cutout-size 32.",
    )
    epochs: PositiveInt = option(10, "Maximum number of training epochs.")
    dropout: DropoutRate = option(DEFAULT_DROPOUT, "Rate of each of the three dropout layers (in either network).")
    batch_size: Annotated[Literal["auto"] | int, AfterValidator(_batch_size)] = option(
        "auto",
        f"Cutouts per gradient step. 'auto' is the original's {AUTO_BATCH_MAX} for large cubes, reduced so that an "
        f"epoch has at least {AUTO_BATCH_MIN_STEPS} steps on small ones (never below {AUTO_BATCH_MIN}).",
    )
    learning_rate: Annotated[float, AfterValidator(_positive_float)] = option(
        DEFAULT_LEARNING_RATE, "Adam learning rate."
    )
    test_frac: OpenFraction = option(0.15, "Fraction of the cube held out as the test set (metrics come from it).")
    seed: Seed = option(42, "Seed of the splits, the weights' initialisation and the augmentation.")
    patience: NonNegativeInt = option(
        5, "Stop after this many epochs without a better --monitor value and keep the best weights; 0 never stops."
    )
    monitor: Monitor = option(
        "val_loss",
        "Validation metric that early stopping and the best weights follow: 'val_loss' (the original), or the "
        "ROC or precision-recall AUC of the real class ('val_roc_auc', 'val_pr_auc'), steadier on imbalanced sets.",
    )
    lr_schedule: LrSchedule = option(
        "constant",
        f"Learning rate over the training: 'constant' (the original); 'plateau' halves it after {PLATEAU_PATIENCE} "
        "epochs without a better --monitor value (and again every "
        f"{PLATEAU_PATIENCE} while none comes); 'cosine' decays it to zero over --epochs (Keras' CosineDecay).",
    )
    augment: bool = option(False, "Augment the training set with random flips and 90-degree rotations.")
    class_weight: Literal["balanced", "none"] = option(
        "none",
        "'none' (the original) weights every cutout alike; 'balanced' weights each class by the inverse of its "
        "frequency. On real, imbalanced ZTF alerts 'balanced' ranked worse (docs/own-survey.md).",
    )
    architecture: Architecture = option(
        DEFAULT_ARCHITECTURE,
        "Network: 'otrain' is the original O'TRAIN CNN; 'vgg' a small VGG-like CNN with batch normalisation "
        "(two blocks of two 3x3 convolutions, about 130 000 weights), for small real sets.",
    )
    normalisation: Literal["none", "robust", "asinh"] = option(
        "none",
        "'none' feeds raw pixels (the original); 'robust' scales each cutout and plane by its median and MAD; "
        "'asinh' then takes the arcsinh (linear in the noise, logarithmic for bright stars and galaxies).",
    )
    calibration: Literal["temperature", "platt", "none"] = option(
        "temperature",
        "Calibrate P(real) on the validation set, inside the saved model: 'temperature' fits one temperature "
        "of the log-odds, 'platt' a temperature and an offset (also undoes the prior of --class-weight "
        "balanced), 'none' keeps the network's output (the original).",
    )
    target_fnr: OpenFraction | None = option(
        None,
        "Choose the threshold on the validation set so that at most this fraction of real cutouts is missed "
        "(for example 0.01); the card stores it and otrain-infer uses it. Excludes --threshold and --target-fpr.",
    )
    target_fpr: OpenFraction | None = option(
        None,
        "Choose the threshold on the validation set so that at most this fraction of bogus cutouts is kept; "
        "stored as with --target-fnr. Excludes --threshold and --target-fnr.",
    )
    tta: bool = option(
        False,
        "Test-time augmentation: the saved model scores each cutout as the mean log-odds of its 8 flips and "
        "rotations (built into the model and its ONNX twin, so every scorer uses it; the calibration and the "
        "threshold are fitted on those means). Scoring costs 8 times as much. Needs square cutouts.",
    )
    mixed_precision: bool = option(False, "Compute in float16 on GPUs (mixed_float16 policy).")
    tracking: bool = option(True, "Record the run in MLflow; --no-tracking turns it off.")
    tracking_uri: str | None = option(
        None, "MLflow tracking URI when MLFLOW_TRACKING_URI is not set (default: sqlite:///mlflow.db)."
    )
    experiment: str = option("otrain", "MLflow experiment name.")

    @model_validator(mode="before")
    @classmethod
    def _fill_from_recipe(cls, data: Any) -> Any:
        """Give the options the user left out the values of ``--recipe`` (an unknown name is the field's error)."""
        if not isinstance(data, dict) or not isinstance(data.get("recipe"), str):
            return data
        given = set(data)
        filled = {}
        for name, value in RECIPES.get(data["recipe"], {}).items():
            field = cls.model_fields.get(name)
            extra = field.json_schema_extra if field is not None and isinstance(field.json_schema_extra, dict) else {}
            if field is not None and not given & {name, *(extra.get("aliases") or [])}:
                filled[name] = value
        return {**data, **filled}

    def recipe_record(self) -> dict[str, Any]:
        """Return what the model card records of ``--recipe``: its name, its values, and those overridden.

        Returns
        -------
        dict
            ``name``; ``values``, the options the recipe sets; ``overridden``, the options among
            them given another value explicitly, with the value used.
        """
        values = RECIPES[self.recipe]
        used = self.model_dump(mode="json")
        overridden = {name: used[name] for name, value in values.items() if used.get(name) != value}
        return {"name": self.recipe, "values": dict(values), "overridden": overridden}

    @classmethod
    def check_option_rules(cls, values: dict[str, Any]) -> None:
        """Mixed precision needs scaled inputs; validation and test must leave data for training."""
        if values["mixed_precision"] and values["normalisation"] == "none":
            raise ValueError(
                "--mixed-precision: needs --normalisation robust or asinh (raw pixel values overflow float16 and "
                "training diverges to NaN)"
            )
        chosen = [name for name in ("threshold", "target_fnr", "target_fpr") if values.get(name) is not None]
        if len(chosen) > 1:
            flags = ", ".join("--" + name.replace("_", "-") for name in chosen)
            raise ValueError(f"{flags}: give one way of choosing the threshold, not {len(chosen)}")
        frac, test_frac = values["frac"], values["test_frac"]
        if frac + test_frac >= 1:
            raise ValueError(f"--frac, --test-frac: together must leave data for training, got {frac} + {test_frac}")


class TrainConfig(TrainingOptions):
    """Train the O'TRAIN CNN (or, with --architecture vgg, a small VGG-like CNN) on a datacube.

    The cube is split, per class and with --seed, into disjoint training, validation (--frac)
    and test (--test-frac) sets, by whole groups when the cube records them (--split-by); the
    model card records the candidate ids of the validation and test sets. Early stopping watches
    a validation metric (--monitor); the validation set then calibrates P(real) (--calibration)
    and can choose the threshold (--target-fnr, --target-fpr). Every reported metric comes from
    the test set. Outputs go to <model-path>/CNN_training/<name>/: the model (<name>.keras, or
    <name>.h5 when --model-name ends in .h5) with its model card and its ONNX twin <name>.onnx
    (checked against the model on every cutout of the cube; beyond 10,000, on the validation and
    test sets and a seeded sample), validation_set/datacube/cube_validation.npz (one-hot labels,
    as the original), test_set/datacube/cube_test.npz, history.csv, the loss and accuracy
    curves, metrics.json and mlflow_run.json.
    """

    command: ClassVar[str] = "otrain-train"

    cube: ExistingFile = option(..., "Path to the datacube (.npz) written by otrain-convert.")
    model_path: WritableFolder = option(..., "Base folder; outputs go to <model-path>/CNN_training/<model-name>/.")
    model_name: Annotated[str, AfterValidator(_model_name)] = option(
        ..., "Name of the trained model; ending it in .h5 saves legacy HDF5 instead of .keras."
    )
    frac: OpenFraction = option(0.15, "Fraction of the cube used for validation (early stopping).")
    split_by: SplitBy = option("auto", _SPLIT_BY_HELP)
    threshold: Probability | None = option(
        None,
        "Probability threshold of the test metrics and the card: real if P(real) > threshold. Default 0.5, or "
        "the one --target-fnr or --target-fpr chooses.",
    )
    resume: bool = option(False, "Continue an interrupted training of the same name from its last finished epoch.")
    overwrite: bool = option(
        False,
        "Replace an existing training of the same name: only the files a training writes are replaced, other "
        "files in its folder are kept.",
    )
    init_from: ExistingFile | None = option(
        None,
        "Start from the weights of this trained model (.keras or .h5) instead of random ones: fine-tuning, for "
        "example on real cutouts after the synthetic survey. Same network, input size and planes.",
    )
    folds: Annotated[int, AfterValidator(_at_least_two)] | None = option(
        None,
        "Train a cross-fitted ensemble of this many members (at least 2) instead of one model: the cutouts "
        "outside the test set are split into --folds grouped folds, each member trains on all folds but one for "
        "--epochs (no validation set, no early stopping; --init-from starts every member), and the members' "
        "out-of-fold scores fit --calibration and choose the threshold. The saved model averages the members "
        "(mean log-odds) and outputs a third column, the spread of their P(real). Not with --resume.",
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        self.check_option_rules(self.__dict__)
        if self.resume and self.overwrite:
            raise ValueError("--resume, --overwrite: give one or the other")
        if self.folds is not None and self.resume:
            raise ValueError("--folds, --resume: an ensemble's training cannot be resumed; pass --overwrite instead")
        if self.folds is not None and self.lr_schedule == "plateau":
            raise ValueError("--folds, --lr-schedule: plateau follows a validation loss, and an ensemble has none")
        return self

    def check_disk(self) -> None:
        """Check --init-from and --cube against the training folder, and what the folder holds.

        A folder that another training holds locked is left to otrain-train, which names that
        training when it cannot take the lock.
        """
        folder = self.output_dir
        if self.init_from is not None and is_same_file(self.init_from, self.model_file):
            raise ValueError(
                f"--init-from: {str(self.init_from)!r} is the model this training writes; copy it elsewhere first"
            )
        if folder.resolve() in self.cube.resolve().parents:
            raise ValueError(
                f"--cube: {str(self.cube)!r} lies inside the training folder {str(folder)!r}, whose files a training "
                "replaces; move the cube out of it"
            )
        if is_locked(folder / TRAINING_LOCK):
            return  # a training runs there now: otrain-train names it when it cannot take the lock
        interrupted = (folder / CHECKPOINT_FOLDER).is_dir()
        if self.resume and not interrupted:
            finished = (
                " (it holds a finished training; pass --overwrite to train again)" if self.holds_training() else ""
            )
            raise ValueError(f"--resume: nothing to resume in {str(folder)!r}: no interrupted training{finished}")
        if not (self.resume or self.overwrite) and interrupted:
            raise ValueError(
                f"--model-name: {str(folder)!r} holds an interrupted training; "
                "pass --resume to continue it or --overwrite to replace it"
            )
        if not (self.resume or self.overwrite) and self.holds_training():
            raise ValueError(f"--model-name: {str(folder)!r} already holds a training; pass --overwrite to replace it")

    def output_names(self) -> list[str]:
        """Return the files this training writes, relative to its folder."""
        return [self.model_file.name, self.model_file.name + CARD_SUFFIX] + [
            name.format(name=self.name) for name in TRAINING_FILES
        ]

    def any_training_names(self) -> list[str]:
        """Return the files any training of this name writes (``.keras`` or ``.h5``), relative to its folder."""
        models = [f"{self.name}{suffix}" for suffix in (".keras", ".h5")]
        return (
            models
            + [model + CARD_SUFFIX for model in models]
            + [INT8_FILE.format(name=self.name)]
            + [name.format(name=self.name) for name in TRAINING_FILES]
        )

    def holds_training(self) -> bool:
        """Tell whether the training folder holds files of an earlier training of this name."""
        return any((self.output_dir / name).exists() for name in self.any_training_names())

    def output_folders(self) -> list[Path]:
        """Return the training folder."""
        return [self.output_dir]

    @property
    def name(self) -> str:
        """The model name without a ``.h5``/``.keras`` suffix (names the folder and files)."""
        for suffix in (".h5", ".keras"):
            if self.model_name.endswith(suffix):
                return self.model_name[: -len(suffix)]
        return self.model_name

    @property
    def output_dir(self) -> Path:
        """``<model-path>/CNN_training/<name>/``."""
        return training_folder(self.model_path, self.name)

    @property
    def model_file(self) -> Path:
        """The model file: ``<name>.h5`` when asked, else ``<name>.keras``."""
        suffix = ".h5" if self.model_name.endswith(".h5") else ".keras"
        return self.output_dir / f"{self.name}{suffix}"


#: The jobs of a ``TF_CONFIG`` cluster that train with MultiWorkerMirroredStrategy (the chief is a
#: worker that also writes the outputs); parameter servers and evaluators are other strategies.
TRAINING_JOBS = ("chief", "worker")
_TF_CONFIG_SHAPE = 'expected {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}'


class _TfConfigTask(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["chief", "worker"]
    index: Annotated[int, Field(ge=0)]


class _TfConfig(BaseModel):
    """The part of ``TF_CONFIG`` otrain reads (TensorFlow's other keys, such as rpc_layer, are allowed)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    cluster: dict[Literal["chief", "worker"], list[Annotated[str, Field(pattern=r"^\S+:\d+$")]]]
    task: _TfConfigTask


class Cluster(BaseModel):
    """Where this process stands in a multi-worker training (``TF_CONFIG``).

    Attributes
    ----------
    workers : int
        Training processes in the cluster (chief included); 1 without ``TF_CONFIG``.
    task_type : str
        ``chief`` or ``worker``.
    index : int
        This task's index in its job.
    has_chief : bool
        The cluster names a chief task (else worker 0 is the chief).
    """

    model_config = ConfigDict(frozen=True)

    workers: int = 1
    task_type: Literal["chief", "worker"] = "worker"
    index: int = 0
    has_chief: bool = False

    @property
    def is_chief(self) -> bool:
        """Tell whether this process writes the outputs: the chief task, or worker 0 of a cluster without one."""
        return self.task_type == "chief" or (self.index == 0 and not self.has_chief)

    @property
    def task(self) -> str:
        """Name this task as TF_CONFIG does (``worker 1``)."""
        return f"{self.task_type} {self.index}"


def cluster_from_environment(environ: dict[str, str] | None = None) -> Cluster:
    """Read ``TF_CONFIG`` (TensorFlow's description of a multi-worker cluster).

    Parameters
    ----------
    environ : dict, optional
        The environment (default: ``os.environ``).

    Returns
    -------
    Cluster
        One worker when ``TF_CONFIG`` is unset or empty.

    Raises
    ------
    OptionError
        When ``TF_CONFIG`` is not JSON, not a cluster of chief and worker tasks with ``host:port``
        addresses, or does not list this task; the message names TF_CONFIG and the rule.
    """
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not text:
        return Cluster()
    try:
        data = json.loads(text)
    except ValueError as error:
        raise OptionError(f"TF_CONFIG: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise OptionError(f"TF_CONFIG: must be a JSON object, got {type(data).__name__} ({_TF_CONFIG_SHAPE})")
    if isinstance(data.get("cluster"), dict):
        others = sorted(job for job in data["cluster"] if job not in TRAINING_JOBS)
        if others:
            raise OptionError(
                f"TF_CONFIG: cluster jobs {', '.join(others)} are not supported; otrain-train trains with "
                "MultiWorkerMirroredStrategy, whose cluster holds only 'chief' and 'worker' tasks"
            )
    try:
        parsed = _TfConfig.model_validate(data)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "the value"
        raise OptionError(f"TF_CONFIG: {where}: {first['msg']} ({_TF_CONFIG_SHAPE})") from None
    task = parsed.task
    hosts = parsed.cluster.get(task.type, [])
    if task.index >= len(hosts):
        sizes = ", ".join(f"{len(addresses)} {job}" for job, addresses in parsed.cluster.items()) or "no task"
        raise OptionError(f"TF_CONFIG: this task ({task.type} {task.index}) is not in the cluster ({sizes})")
    if len(parsed.cluster.get("chief", [])) > 1:
        raise OptionError("TF_CONFIG: cluster.chief: a cluster has at most one chief")
    workers = sum(len(addresses) for addresses in parsed.cluster.values())
    return Cluster(workers=workers, task_type=task.type, index=task.index, has_chief="chief" in parsed.cluster)
