"""Validated parameters of every otrain command.

This module is the only place where the options' names, types, defaults and ranges live. Each
command has one frozen pydantic model; the command-line layer passes the user's keyword
arguments straight into it, and ``params.yaml`` sections are checked against the same models.

Option spellings follow the original O'TRAIN commands, including the odd ones (``--n_sections``,
``--n_random``, ``--cam_path``) and the documented aliases (``--frac_true``,
``--path-datacube``, ``--mag-lim``). Fire folds ``-`` and ``_`` in flag names, so every option
is accepted with either.

Why this module is still one file of 2,000 lines: it is to be split by issue 24 into an
``options/`` subpackage (the option mini-language and base class, one module per family of
commands, params.yaml validation), with the file-layout, card and model-URI rules moved to the
modules that own them. Every DVC stage depends on this file, so a split is one move, done once,
with the stages' dependency lists re-keyed and the whole suite run before and after; a partial
split now would be undone by that one.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator

from otrain.errors import DataError, OptionError
from otrain.io import outputs as formats
from otrain.io.card import card_threshold
from otrain.io.layout import (
    CARD_SUFFIX,
    CHECKPOINT_FOLDER,
    INT8_FILE,
    TEST_CUBE,
    TRAINING_FILES,
    TRAINING_LOCK,
    TRAININGS_FOLDER,
    card_file,
    int8_path,
    training_folder,
    twin_path,
)
from otrain.io.locking import is_locked
from otrain.io.outputs import Output, check_outputs, is_same_file
from otrain.options.uris import is_mlflow_uri, parse_model_uri

__all__ = [
    "COMMAND_CONFIGS",
    "PARAMS_SECTIONS",
    "PARITY_TOLERANCE",
    "SOURCE_SHA256",
    "CheckInferConfig",
    "CheckParamsConfig",
    "Cluster",
    "CommandConfig",
    "ConvertConfig",
    "CrossValidateConfig",
    "DiagnosticsConfig",
    "ExportConfig",
    "GradCamConfig",
    "InferConfig",
    "InferSparkConfig",
    "OptimiseDatasetSizeConfig",
    "PackConfig",
    "PlotResultsConfig",
    "PromoteConfig",
    "RelabelConfig",
    "ReportConfig",
    "ServeConfig",
    "SimulateConfig",
    "SummaryConfig",
    "TrainConfig",
    "TrainingOptions",
    "cluster_from_environment",
    "option",
    "relabel_output_files",
    "validate_params",
]

FITS_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz")

# --------------------------------------------------------------------------------------------
# Defaults that are not options of their own (the options' defaults are in the models below).

#: The O'TRAIN CNN's dropout rate and Adam learning rate (the original's; the training defaults).
DEFAULT_DROPOUT = 0.3
DEFAULT_LEARNING_RATE = 1e-3
#: The networks otrain-train builds, by --architecture: the original O'TRAIN CNN (the default),
#: and a small VGG-like network with batch normalisation for small real sets.
Architecture = Literal["otrain", "vgg"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
#: What scores cutouts: the Keras model, its ONNX twin or its int8 model with ONNX Runtime, or (auto) the best usable.
Backend = Literal["auto", "keras", "onnx", "int8"]
BACKENDS: tuple[str, ...] = get_args(Backend)
DEFAULT_ARCHITECTURE: Architecture = "otrain"
#: The vgg network: filters of the convolutions of each of its two blocks, the side of the grid
#: its last feature maps are average-pooled onto (whatever the cutout size), units of its dense layer.
VGG_FILTERS = (32, 64)
VGG_GRID = 4
VGG_DENSE_UNITS = 64
#: Momentum of its batch normalisation's moving averages: Keras' 0.99 needs hundreds of steps to
#: forget the initial statistics; a small set makes few steps (20 per epoch with --batch-size auto).
VGG_BN_MOMENTUM = 0.9
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
#: ``--batch-size auto``: the original's 1024, reduced so that an epoch has at least
#: AUTO_BATCH_MIN_STEPS gradient steps, never below AUTO_BATCH_MIN cutouts.
AUTO_BATCH_MAX = 1024
AUTO_BATCH_MIN = 16
AUTO_BATCH_MIN_STEPS = 20
#: Cutouts per prediction batch: scoring a cube, and otrain-infer's default --batch-size.
PREDICT_BATCH = 256
#: Cutouts per Grad-CAM batch (gradients need more memory than a prediction).
GRADCAM_BATCH = 64
#: Candidates shown in each Grad-CAM summary grid.
GRADCAM_GRID = 25
#: Radius, in FWHM of the candidate, of the disc where a useful map of a true positive lies
#: (otrain-grad-cam reports the share of the maps inside it).
CENTRE_RADIUS_FWHM = 2.0
#: Well-classified examples otrain-diagnostics exports per class, and the seed of their choice.
DIAGNOSTICS_EXAMPLES = 30
DIAGNOSTICS_SEED = 42
#: Bins of the reliability diagram and of the expected calibration error (equal widths in [0, 1]).
CALIBRATION_BINS = 10
#: otrain-plot-results: the upper end of its magnitude-error and magnitude bins (the original's).
BIN_LIMITS = {"errmag": 0.4, "mag": 25.0}
#: Bad input files a command names one by one; the others are counted.
MAX_LISTED_BAD_FILES = 20


# --------------------------------------------------------------------------------------------
# Reusable checks. Each raises ValueError with a message that reads well after the option name.


def _existing_folder(path: Path) -> Path:
    if not path.exists():
        raise ValueError(f"folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise ValueError(f"{str(path)!r} is not a folder")
    return path


def _existing_file(path: Path) -> Path:
    if not path.exists():
        raise ValueError(f"file {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not a file")
    return path


def _writable_folder(path: Path) -> Path:
    """Check that ``path`` is, or can be created as, a folder we can write into.

    Writing a throw-away temporary file is the only test that also holds for root, for
    read-only mounts and for pseudo file systems; it leaves nothing behind.
    """
    ancestor = path
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"cannot create folder {str(path)!r}: {str(ancestor)!r} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise ValueError(f"cannot write in {str(ancestor)!r} ({reason})") from None
    return path


def _probability(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"must be a probability in [0, 1], got {value}")
    return value


def _open_fraction(value: float) -> float:
    if not 0.0 < value < 1.0:
        raise ValueError(f"must be a fraction in (0, 1), got {value}")
    return value


def _dropout_rate(value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"must be a dropout rate in [0, 1), got {value}")
    return value


def _positive_float(value: float) -> float:
    if value <= 0:
        raise ValueError(f"must be positive, got {value}")
    return value


def _positive(value: int) -> int:
    if value <= 0:
        raise ValueError(f"must be a positive whole number, got {value}")
    return value


def _non_negative(value: int) -> int:
    if value < 0:
        raise ValueError(f"must be zero or a positive whole number, got {value}")
    return value


def _at_least_two(value: int) -> int:
    if value < 2:
        raise ValueError(f"must be at least 2, got {value}")
    return value


def _at_least_sixteen(value: int) -> int:
    if value < 16:
        raise ValueError(f"must be at least 16 pixels, got {value}")
    return value


def _positive_or_minus_one(value: int) -> int:
    if value <= 0 and value != -1:
        raise ValueError(f"must be a positive number of pixels, or -1 to keep the full size, got {value}")
    return value


def _frac_true(value: float) -> float:
    if value == -1:
        return value
    if not 0.0 < value < 1.0:
        raise ValueError(
            f"must be a fraction in (0, 1) (both classes are needed), or -1 to keep every cutout, got {value}"
        )
    return value


def _cube_name(value: str) -> str:
    name = value[: -len(".npz")] if value.endswith(".npz") else value
    if not name or name in {".", ".."} or "/" in name or os.sep in name:
        raise ValueError(f"must be a plain file name without folders, got {value!r}")
    return name


def _plane_name(value: str) -> str:
    name = value.strip().upper()
    if not re.fullmatch(r"[A-Z0-9_-]{1,68}", name):
        raise ValueError(f"must be plane names such as IMAGE TEMPLATE DIFF (letters, digits, _ or -), got {value!r}")
    return name


def _unique_planes(planes: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if planes is not None:
        if not planes:
            raise ValueError("needs at least one plane name")
        if len(set(planes)) != len(planes):
            raise ValueError(f"names a plane twice: {' '.join(planes)}")
    return planes


def _keyword_name(value: str) -> str:
    name = value.strip()
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,68}", name):
        raise ValueError(f"must be a FITS keyword name such as FILE (letters, digits, _ or -), got {value!r}")
    return name


ExistingFolder = Annotated[Path, AfterValidator(_existing_folder)]
ExistingFile = Annotated[Path, AfterValidator(_existing_file)]
WritableFolder = Annotated[Path, AfterValidator(_writable_folder)]
Probability = Annotated[float, AfterValidator(_probability)]
OpenFraction = Annotated[float, AfterValidator(_open_fraction)]
DropoutRate = Annotated[float, AfterValidator(_dropout_rate)]
PositiveInt = Annotated[int, AfterValidator(_positive)]
NonNegativeInt = Annotated[int, AfterValidator(_non_negative)]
CutoutSize = Annotated[int, AfterValidator(_positive_or_minus_one)]
Seed = Annotated[int, AfterValidator(_non_negative)]
#: Image planes by name, in channel order (IMAGE, TEMPLATE, DIFF...), upper-cased, each once.
Planes = Annotated[tuple[Annotated[str, AfterValidator(_plane_name)], ...] | None, AfterValidator(_unique_planes)]


def option(
    default: Any = ...,
    help: str = "",  # noqa: A002 - the natural name for an option's help text
    *,
    flag: str | None = None,
    aliases: tuple[str, ...] = (),
) -> Any:
    """Declare one command-line option.

    Parameters
    ----------
    default : object
        Default value; ``...`` makes the option required.
    help : str
        One-sentence description shown by ``--help``.
    flag : str, optional
        The spelling shown in help, when it is not ``--`` plus the field name with dashes
        (for example the original ``--n_random``).
    aliases : tuple of str
        Other accepted spellings, written as Python names (``frac_true``, ``path_datacube``).

    Returns
    -------
    pydantic.fields.FieldInfo
        The field declaration.
    """
    extra: dict[str, Any] = {"flag": flag, "aliases": list(aliases)}
    if aliases:
        return Field(default, description=help, validation_alias=AliasChoices(*aliases), json_schema_extra=extra)
    return Field(default, description=help, json_schema_extra=extra)


def _log_into_training_run() -> Any:
    """Declare the ``--no-tracking`` switch of the commands that log into a training's MLflow run."""
    return option(
        True, "Log into the training's MLflow run (mlflow_run.json beside the model); --no-tracking skips it."
    )


class CommandConfig(BaseModel):
    """Base of every command's parameters: frozen, unknown options refused."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        coerce_numbers_to_str=True,
        validate_by_name=True,
        validate_by_alias=True,
        validate_default=False,
        allow_inf_nan=False,
    )

    #: The console-script name, used in messages and help.
    command: ClassVar[str] = ""

    @classmethod
    def check_option_rules(cls, values: dict[str, Any]) -> None:
        """Check the rules that tie options together (no file is looked at).

        Shared by the command line and by ``params.yaml`` validation. The base class has none.

        Parameters
        ----------
        values : dict
            Every option of the command, by field name, as validated.

        Raises
        ------
        ValueError
            Naming the options (``--frac, --test-frac: ...``) and the rule.
        """

    def output_folders(self) -> list[Path]:
        """Folders this command may create: removed again, when left empty, if the command fails."""
        return []

    @classmethod
    def flag_of(cls, key: str) -> str:
        """Return the option spelling shown to users for a field name or alias.

        Parameters
        ----------
        key : str
            A field name or one of its aliases.

        Returns
        -------
        str
            For example ``--frac-true``.
        """
        for name, field in cls.model_fields.items():
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            if key == name or key in (extra.get("aliases") or []):
                return extra.get("flag") or "--" + name.replace("_", "-")
        return "--" + key.replace("_", "-")


# --------------------------------------------------------------------------------------------
# The commands.


#: What otrain-simulate writes into --out, and replaces only with --overwrite.
SIMULATE_OUTPUTS = ("true", "false", "night", "truth.csv")
#: Written last into --out by otrain-simulate: proves the survey there is its own.
SIMULATE_MARKER = ".otrain-simulate.json"


class SimulateConfig(CommandConfig):
    """Write the built-in synthetic survey: labelled true/false cutouts, a night of candidates.

    The survey is deterministic from --seed. Real candidates are point sources (Moffat PSF,
    varied seeing, sub-pixel offsets, magnitudes down to and below the detection limit,
    sometimes on a galaxy-subtraction residual); bogus ones are subtraction dipoles,
    PSF-mismatch rings, cosmic rays, hot pixels and bad columns, saturated-star residuals with
    bleed trails, noise peaks and masked edges. Outputs: <out>/true, <out>/false, <out>/night
    (with <out>/night/crossmatch.dat) and <out>/truth.csv.
    """

    command: ClassVar[str] = "otrain-simulate"

    out: WritableFolder = option(..., "Folder to write the survey into.")
    n_true: NonNegativeInt = option(1500, "Number of labelled real cutouts (true/).")
    n_false: NonNegativeInt = option(1500, "Number of labelled bogus cutouts (false/).")
    n_night: NonNegativeInt = option(300, "Number of unlabelled candidates of the simulated night (night/).")
    cutout_size: Annotated[int, AfterValidator(_at_least_sixteen)] = option(
        64, "Cutout width and height in pixels, at least 16 (gmadet uses 64)."
    )
    seed: Seed = option(42, "Seed of every random draw; the same seed gives the same files.")
    planes: Annotated[tuple[Literal["IMAGE", "TEMPLATE", "DIFF"], ...], AfterValidator(_unique_planes)] = option(
        ("DIFF",),
        "Planes of the gmadet-style cutouts (and the night), in file order: DIFF alone is a 2-D difference image; "
        "several (IMAGE TEMPLATE DIFF) make a (C, H, W) image. STDPipe-style cutouts always carry all three.",
    )
    mef_fraction: Probability = option(
        0.25, "Fraction of labelled cutouts written STDPipe-style (multi-extension, DIFF plane); the rest gmadet-style."
    )
    overwrite: bool = option(
        False, "Replace a survey that otrain-simulate wrote in --out (only the files it listed in truth.csv)."
    )
    workers: PositiveInt | None = option(None, "Worker processes for writing files (default: one per core).")

    @classmethod
    def check_option_rules(cls, values: dict[str, Any]) -> None:
        """At least one cutout must be asked for."""
        if values["n_true"] + values["n_false"] + values["n_night"] == 0:
            raise ValueError("--n-true, --n-false, --n-night: at least one must be positive")

    @model_validator(mode="after")
    def _refuse_to_overwrite(self) -> SimulateConfig:
        self.check_option_rules(self.__dict__)
        clashing = [name for name in SIMULATE_OUTPUTS if (self.out / name).exists()]
        if clashing and not self.overwrite:
            raise ValueError(
                f"--out: {str(self.out)!r} already holds a survey ({', '.join(clashing)}); "
                "pass --overwrite to replace it"
            )
        if clashing and not (self.out / SIMULATE_MARKER).is_file():
            raise ValueError(
                f"--out: {str(self.out)!r} holds {', '.join(clashing)} that otrain-simulate did not write; "
                "refusing to replace them, choose another folder"
            )
        return self

    def output_folders(self) -> list[Path]:
        """Return the survey folder."""
        return [self.out]


class ConvertConfig(CommandConfig):
    """Convert labelled cutouts (<cutouts>/true, <cutouts>/false) into one training datacube.

    Reads gmadet single-HDU and STDPipe multi-extension cutouts (.fits, .fit, .fits.gz),
    drops cutouts flagged EDGE, replaces non-finite pixels, centre-crops to --cutout-size, then
    balances the classes to --frac-true with a seeded random selection and writes
    <path>/datacube/<cube>.npz.
    """

    command: ClassVar[str] = "otrain-convert"

    path: WritableFolder = option(
        ..., "Base folder; the cube is written to <path>/datacube/<cube>.npz.", aliases=("path", "path_datacube")
    )
    cube: Annotated[str, AfterValidator(_cube_name)] = option(..., "Name of the datacube, without extension.")
    cutouts: ExistingFolder = option(..., "Folder holding the true/ and false/ sub-folders of labelled cutouts.")
    frac_true: Annotated[float, AfterValidator(_frac_true)] = option(
        0.5, "Fraction of real cutouts in the cube, in (0, 1); -1 keeps every cutout, unbalanced."
    )
    cutout_size: CutoutSize = option(-1, "Centre-crop every cutout to NxN pixels; -1 keeps the full size.")
    planes: Planes = option(
        None,
        "Image planes stacked as channels, in order: extensions of STDPipe cutouts (IMAGE TEMPLATE DIFF: "
        "science, reference, difference); a gmadet cutout gives its planes in file order and must hold as many. "
        "Default: DIFF of STDPipe cutouts, the whole image of gmadet ones (as O'TRAIN).",
    )
    group_keyword: Annotated[str, AfterValidator(_keyword_name)] | None = option(
        None,
        "Store this primary-header keyword's value per cutout as its group (for example FILE, the ZTF objectId in "
        "STDPipe cutouts of ZTF alerts), so that otrain-cross-validate keeps each group in one fold. A cutout "
        "without it is a bad file.",
    )
    seed: Seed = option(42, "Seed of the random balancing selection.")
    skip_bad_files: bool = option(False, "Skip unreadable or incomplete cutouts with a warning instead of failing.")
    overwrite: bool = option(False, "Replace an existing cube of the same name.")
    workers: PositiveInt | None = option(None, "Worker processes reading the files (default: one per core).")

    @model_validator(mode="after")
    def _check(self) -> ConvertConfig:
        try:
            _writable_folder(self.output_file.parent)
        except ValueError as error:
            raise ValueError(f"--path: {error}") from None
        if not self.overwrite and self.output_file.exists():
            raise ValueError(f"--cube: {str(self.output_file)!r} already exists; pass --overwrite to replace it")
        return self

    @property
    def output_file(self) -> Path:
        """The cube this conversion writes: ``<path>/datacube/<cube>.npz``."""
        return self.path / "datacube" / f"{self.cube}.npz"

    def output_folders(self) -> list[Path]:
        """Return the cube's folder."""
        return [self.output_file.parent]


#: Written at the root of every otrain-relabel output: proves the tree is its own, lists its files.
RELABEL_MARKER = "_otrain_relabel.json"
#: The label folders of an otrain-relabel output (those otrain-convert reads), by mark.
RELABEL_FOLDERS = {"real": "true", "bogus": "false"}


def relabel_output_files(folder: Path) -> set[str] | None:
    """Return what an otrain-relabel output folder holds by its marker, or None if it has no valid marker.

    Parameters
    ----------
    folder : Path
        An existing folder.

    Returns
    -------
    set of str or None
        The paths relative to ``folder`` (with ``/``) of the marker, the label folders and the
        files the marker lists in them; None when the marker is missing or is not one that
        otrain-relabel writes.
    """
    try:
        marker = json.loads((folder / RELABEL_MARKER).read_text(encoding="utf-8"))
        listed = marker["files"]
        if marker.get("command") != "otrain-relabel":
            return None
        names = {RELABEL_MARKER, *RELABEL_FOLDERS.values()}
        for label in RELABEL_FOLDERS.values():
            names |= {f"{label}/{name}" for name in listed.get(label, {})}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return names


def _held_files(folder: Path) -> list[str]:
    """Every entry below ``folder`` (folders and links included, links not followed), relative, sorted."""
    held = []
    for parent, folders, files in os.walk(folder):
        base = Path(parent).relative_to(folder)
        held += [(base / name).as_posix() for name in (*folders, *files)]
    return sorted(held)


class RelabelConfig(CommandConfig):
    """Turn the marks exported from a vetting page (a CSV) into a labelled tree <out>/true, <out>/false.

    Reads the columns cand_ID, file, mark and p_real (in any order; others are ignored): each
    file (relative to --cutouts) marked real goes to <out>/true, bogus to <out>/false, skip
    nowhere. A file marked skip and also real or bogus takes that label; a file marked both
    real and bogus is an error. --include adds the labelled cutouts of existing training
    folders (their true/ and false/), so that the vetted candidates join a training set. The
    tree is ready for otrain-convert --cutouts <out>; it is written all at once, with a
    _otrain_relabel.json record of what it holds, and replaces only an earlier otrain-relabel
    output. The cutouts themselves are never moved or changed.
    """

    command: ClassVar[str] = "otrain-relabel"

    marks: ExistingFile = option(..., "The marks CSV of the vetting page (its 'Export marks' button).")
    cutouts: ExistingFolder = option(
        ..., "Folder the marks' file names are relative to (the folder the vetting page was made from)."
    )
    out: Path = option(
        ...,
        "Folder to write <out>/true and <out>/false into: a new or empty folder, or an earlier otrain-relabel output "
        "(replaced whole).",
    )
    mode: Literal["copy", "symlink", "hardlink"] = option(
        "copy",
        "How each cutout gets into the tree: copy (bytes and times), symlink (absolute links to the originals) or "
        "hardlink (same file system only).",
    )
    include: tuple[ExistingFolder, ...] = option(
        (),
        "Also put the labelled cutouts of this folder (its true/ and false/ sub-folders, as otrain-convert reads "
        "them) into the tree, the same way (--mode); may be given several times.",
    )

    @model_validator(mode="after")
    def _check(self) -> RelabelConfig:
        out, cutouts = self.out.resolve(), self.cutouts.resolve()
        if out == cutouts or cutouts in out.parents:
            raise ValueError(f"--out: {str(self.out)!r} is --cutouts or inside it; choose another path")
        if out in cutouts.parents:
            raise ValueError(
                f"--out: {str(self.out)!r} holds --cutouts {str(self.cutouts)!r} and would be replaced whole; "
                "choose another path"
            )
        seen: dict[Path, Path] = {}
        for folder in self.include:
            resolved = folder.resolve()
            if resolved in seen:
                raise ValueError(f"--include: {str(folder)!r} is given twice (as {str(seen[resolved])!r})")
            seen[resolved] = folder
            for label in RELABEL_FOLDERS.values():
                if not (folder / label).is_dir():
                    raise ValueError(
                        f"--include: {folder / label}: folder of {label} cutouts does not exist "
                        f"(expected {folder}/true and {folder}/false)"
                    )
            if out == resolved or resolved in out.parents:
                raise ValueError(
                    f"--out: {str(self.out)!r} is --include {str(folder)!r} or inside it; choose another path"
                )
            if out in resolved.parents:
                raise ValueError(
                    f"--out: {str(self.out)!r} holds --include {str(folder)!r} and would be replaced whole; "
                    "choose another path"
                )
        if out in self.marks.resolve().parents:
            raise ValueError(
                f"--marks: {str(self.marks)!r} is inside --out, which is replaced whole; choose another --out"
            )
        not_ours = f"--out: {str(self.out)!r} exists and was not written by otrain-relabel; choose another path"
        if self.out.is_symlink() or (self.out.exists() and not self.out.is_dir()):
            raise ValueError(not_ours)
        if self.out.is_dir() and any(self.out.iterdir()):
            own = relabel_output_files(self.out)
            if own is None:
                raise ValueError(not_ours)
            foreign = [name for name in _held_files(self.out) if name not in own]
            if foreign:
                raise ValueError(
                    f"--out: {str(self.out)!r} was written by otrain-relabel but now also holds {foreign[0]!r}"
                    f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}, which replacing it would "
                    "delete; move them or choose another path"
                )
        try:
            _writable_folder(self.out.parent)
        except ValueError as error:
            raise ValueError(f"--out: {error}") from None
        return self

    def output_folders(self) -> list[Path]:
        """Return the output's parent folder."""
        return [self.out.parent]


def _model_name(value: str) -> str:
    if not value or "/" in value or os.sep in value or value in {".", ".."}:
        raise ValueError(f"must be a plain name without folders, got {value!r}")
    return value


def _batch_size(value: int | str) -> int | str:
    if value == "auto":
        return value
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"must be a positive whole number or 'auto', got {value!r}")
    return value


class TrainingOptions(CommandConfig):
    """Options shared by the commands that train models (otrain-train, dataset-size study)."""

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
    mixed_precision: bool = option(False, "Compute in float16 on GPUs (mixed_float16 policy).")
    tracking: bool = option(True, "Record the run in MLflow; --no-tracking turns it off.")
    tracking_uri: str | None = option(
        None, "MLflow tracking URI when MLFLOW_TRACKING_URI is not set (default: sqlite:///mlflow.db)."
    )
    experiment: str = option("otrain", "MLflow experiment name.")

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
    and test (--test-frac) sets. Early stopping watches a validation metric (--monitor); the
    validation set then calibrates P(real) (--calibration) and can choose the threshold
    (--target-fnr, --target-fpr). Every reported metric comes from the test set. Outputs go to
    <model-path>/CNN_training/<name>/: the model (<name>.keras, or <name>.h5 when --model-name
    ends in .h5) with its model card and its ONNX twin <name>.onnx (checked against the model on
    every cutout of the cube; beyond 10,000, on the validation and test sets and a seeded sample),
    validation_set/datacube/cube_validation.npz (one-hot labels, as the original),
    test_set/datacube/cube_test.npz, history.csv, the loss and accuracy curves, metrics.json and
    mlflow_run.json.
    """

    command: ClassVar[str] = "otrain-train"

    cube: ExistingFile = option(..., "Path to the datacube (.npz) written by otrain-convert.")
    model_path: WritableFolder = option(..., "Base folder; outputs go to <model-path>/CNN_training/<model-name>/.")
    model_name: Annotated[str, AfterValidator(_model_name)] = option(
        ..., "Name of the trained model; ending it in .h5 saves legacy HDF5 instead of .keras."
    )
    frac: OpenFraction = option(0.15, "Fraction of the cube used for validation (early stopping).")
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

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        self.check_option_rules(self.__dict__)
        folder = self.output_dir
        if self.init_from is not None and is_same_file(self.init_from, self.model_file):
            raise ValueError(
                f"--init-from: {str(self.init_from)!r} is the model this training writes; copy it elsewhere first"
            )
        if self.resume and self.overwrite:
            raise ValueError("--resume, --overwrite: give one or the other")
        if folder.resolve() in self.cube.resolve().parents:
            raise ValueError(
                f"--cube: {str(self.cube)!r} lies inside the training folder {str(folder)!r}, whose files a training "
                "replaces; move the cube out of it"
            )
        if is_locked(folder / TRAINING_LOCK):
            return self  # a training runs there now: otrain-train names it when it cannot take the lock
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
        return self

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


def _backend_option() -> Any:
    """Declare the ``--backend`` option of the commands that score cutouts."""
    return option(
        "auto",
        "What scores: onnx (the model's ONNX twin <stem>.onnx, with ONNX Runtime), int8 (its int8 model "
        "<stem>.int8.onnx, from otrain-export --quantize int8), keras (the Keras model), or auto: the int8 model when "
        "its card says it passed the gates, else the twin, when exported from this model file and onnxruntime is "
        "installed, else Keras.",
    )


class InferConfig(CommandConfig):
    """Score a folder of candidate cutouts with a trained model; writes infer_results.dat.

    Reads gmadet and STDPipe cutouts, centre-crops them to the model's input size, skips EDGE
    cutouts and unreadable files (counted and reported), and scores them chunk by chunk in
    threads while the next files are read, so memory does not grow with the number of files.
    The table has the original 13 columns (filename RA Dec originalFile Xpos Ypos mag magerr
    FWHM FWHMPSF cand_ID label0 label1), then 'real' (label1 > --threshold).
    """

    command: ClassVar[str] = "otrain-infer"

    cutouts: ExistingFolder = option(..., "Folder of candidate cutouts (*.fits, *.fit, *.fits.gz).")
    model: ExistingFile = option(..., "Trained model file (.keras or .h5, original O'TRAIN models included).")
    prob_ratio: float | None = option(
        None, "Prior re-weighting p' = p / (p + (1 - p) * r) of P(real); default: no re-weighting."
    )
    output: Path | None = option(
        None,
        "Output table (default: <cutouts>/infer_results.dat). An existing file is replaced only when it is a table "
        "otrain-infer wrote, or with --overwrite; never the model or a cutout.",
    )
    batch_size: PositiveInt = option(PREDICT_BATCH, "Cutouts scored per batch.")
    threshold: Probability | None = option(
        None,
        "Probability threshold of the 'real' column: real if label1 > threshold. Default: the model card's "
        "(chosen by otrain-train, for example with --target-fnr), 0.5 for a model without a card.",
    )
    planes: Planes = option(
        None,
        "Image planes to read, in channel order (see otrain-convert). Default: those the model was trained on "
        "(its card); for a model without a card, DIFF of STDPipe cutouts and the whole image of gmadet ones.",
    )
    recursive: bool = option(False, "Also score cutouts in sub-folders.")
    workers: PositiveInt | None = option(
        None,
        "Processes reading the files (default: one per four cores; 1 reads in this process while the network scores).",
    )
    overwrite: bool = option(False, "Replace an existing --output file that otrain-infer did not write.")
    backend: Backend = _backend_option()
    tracking: bool = _log_into_training_run()

    @classmethod
    def check_option_rules(cls, values: dict[str, Any]) -> None:
        """Check that the prior ratio, when given, is positive."""
        if values.get("prob_ratio") is not None and values["prob_ratio"] <= 0:
            raise ValueError(f"--prob-ratio: must be a positive ratio, got {values['prob_ratio']}")

    @model_validator(mode="after")
    def _check(self) -> InferConfig:
        _use_card_threshold(self, self.model)
        self.check_option_rules(self.__dict__)
        output = self.output_file
        if output.is_dir():
            raise ValueError(f"--output: {str(output)!r} is a folder; give a file name")
        try:
            _writable_folder(output.parent)
        except ValueError as error:
            raise ValueError(f"--output: {error}") from None
        if output.name.lower().endswith(FITS_SUFFIXES) and _is_under(output, self.cutouts, self.recursive):
            raise ValueError(f"--output: {str(output)!r} is a cutout being scored; choose another path")
        _check_outputs(
            self, "--output", [Output(output, "table", formats.INFER_COLUMNS)], [self.model, card_file(self.model)]
        )
        return self

    @property
    def output_file(self) -> Path:
        """Where the table goes."""
        return self.output if self.output is not None else self.cutouts / "infer_results.dat"

    def output_folders(self) -> list[Path]:
        """Return the table's folder."""
        return [self.output_file.parent]


#: Written into every Parquet folder of otrain-pack and otrain-infer-spark: proves the folder is otrain's.
PARQUET_MARKER = "_otrain.json"
#: The schemes of an MLflow model URI given as --model to otrain-infer-spark.
_SPARK_MASTER = re.compile(r"local(\[(\d+|\*)(,\d+)?\])?|yarn|(spark|k8s|mesos)://\S+")
_SPARK_CONF = re.compile(r"[A-Za-z0-9_.-]+=.*")
_JVM_SIZE = (re.compile(r"[0-9]+[kmgt]", re.IGNORECASE), "a whole number and a unit k, m, g or t (4g, 512m)")
_SPARK_SIZE = (re.compile(r"[0-9]+([kmgtp]b?|b)?", re.IGNORECASE), "a size such as 4g or 512m")
_POSITIVE = (re.compile(r"[1-9][0-9]*"), "a positive whole number")
#: Values of well-known Spark settings checked before Java starts (a bad spark.driver.memory stops the JVM
#: itself, with no word of which setting): the pattern and the rule.
_SPARK_CONF_RULES: dict[str, tuple[re.Pattern[str], str]] = {
    "spark.driver.memory": _JVM_SIZE,  # the JVM's -Xmx
    **dict.fromkeys(
        (
            "spark.executor.memory",
            "spark.driver.maxResultSize",
            "spark.executor.memoryOverhead",
            "spark.driver.memoryOverhead",
            "spark.executor.pyspark.memory",
        ),
        _SPARK_SIZE,
    ),
    **dict.fromkeys(("spark.executor.cores", "spark.driver.cores"), _POSITIVE),
}


def _has_scheme(text: str) -> bool:
    return re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", text) is not None and not re.match(r"[A-Za-z]:[\\/]", text)


def _parquet_output(config: CommandConfig, output: Path, inputs: Sequence[Path] = ()) -> None:
    """Refuse an existing --output folder unless --overwrite is given and the folder is otrain's Parquet.

    ``inputs`` are the command's input folders: the output may be neither one of them nor inside one.
    """
    for folder in inputs:
        if output.resolve() == folder.resolve() or folder.resolve() in output.resolve().parents:
            raise ValueError(
                f"--output: {str(output)!r} is the input {str(folder)!r} or inside it; choose another path"
            )
    if output.is_symlink():
        raise ValueError(f"--output: {str(output)!r} is a symbolic link; give the folder itself, or another path")
    if not output.exists():
        try:
            _writable_folder(output.parent)
        except ValueError as error:
            raise ValueError(f"--output: {error}") from None
        return
    # Whose it is first: --overwrite would not replace a user's file, so it is no advice then.
    if not output.is_dir() or not (output / PARQUET_MARKER).is_file():
        raise ValueError(
            f"--output: {str(output)!r} exists and is not a Parquet folder written by otrain (it is never replaced, "
            "even with --overwrite); choose another path"
        )
    if not getattr(config, "overwrite", False):
        raise ValueError(f"--output: {str(output)!r} exists; pass --overwrite to replace it, or choose another path")


class PackConfig(CommandConfig):
    """Pack a folder of candidate cutouts into Parquet files, for otrain-infer-spark --parquet.

    Each cutout becomes one row: the metadata columns of infer_results.dat (filename RA Dec
    originalFile Xpos Ypos mag magerr FWHM FWHMPSF cand_ID), its EDGE flag, and its planes as
    float32 pixels, centre-cropped to --cutout-size but otherwise raw (non-finite pixels are
    replaced when scoring, as otrain-infer does). An unreadable file becomes a row holding the
    error, so the scoring run counts and lists it. --output is a folder of part files.
    """

    command: ClassVar[str] = "otrain-pack"

    cutouts: ExistingFolder = option(..., "Folder of candidate cutouts (*.fits, *.fit, *.fits.gz).")
    output: Path = option(..., "Output folder of Parquet part files (appears complete or not at all).")
    planes: Planes = option(
        None,
        "Image planes to pack, in channel order (see otrain-convert). Default: DIFF of STDPipe cutouts and the "
        "whole image of gmadet ones; it must match the planes the scoring model takes.",
    )
    cutout_size: CutoutSize = option(
        -1, "Centre-crop size in pixels (at least the model's input size); -1 keeps the full cutouts."
    )
    recursive: bool = option(False, "Also pack cutouts in sub-folders.")
    workers: PositiveInt | None = option(None, "Worker processes reading the files (default: one per core).")
    overwrite: bool = option(False, "Replace an existing --output folder (only one otrain wrote).")

    @model_validator(mode="after")
    def _check(self) -> PackConfig:
        _parquet_output(self, self.output, [self.cutouts])
        return self

    def output_folders(self) -> list[Path]:
        """Return the output's parent folder."""
        return [self.output.parent]


class InferSparkConfig(CommandConfig):
    """Score candidate cutouts on Apache Spark; writes the results as Parquet (and infer_results.dat).

    Reads FITS cutouts from a folder or URI (every file below it, as otrain-infer --recursive,
    through Spark's binaryFile source; file:, hdfs:, s3a: ...), or the Parquet folder of
    otrain-pack, and scores them with the same reading, cropping, plane and EDGE rules as
    otrain-infer. The model (a .keras/.h5 file, or an MLflow URI such as
    models:/otrain-cnn@champion) is shipped to the executors and loaded once per Python worker: its
    ONNX twin, run by ONNX Runtime, when --backend chooses it, else the Keras model.
    The results have the columns of infer_results.dat; unreadable files are counted and listed.
    """

    command: ClassVar[str] = "otrain-infer-spark"

    output: Path = option(..., "Output folder of Parquet part files (appears complete or not at all).")
    model: str = option(
        ...,
        "Trained model: a .keras or .h5 file (original O'TRAIN models included), or an MLflow model URI "
        "(models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model), fetched from MLFLOW_TRACKING_URI.",
    )
    cutouts: str | None = option(
        None, "Folder or URI (file:, hdfs:, s3a: ...) of FITS cutouts, sub-folders included; or give --parquet."
    )
    parquet: ExistingFolder | None = option(None, "Parquet folder written by otrain-pack; or give --cutouts.")
    table: Path | None = option(
        None, "Also write the results as an infer_results.dat table (the format of otrain-infer) at this path."
    )
    master: str = option("local[*]", "Spark master: local[*], local[N], spark://HOST:PORT, yarn, k8s://...")
    conf: tuple[str, ...] = option((), "Spark settings KEY=VALUE passed to the session (spark.executor.memory=4g).")
    threshold: Probability | None = option(
        None, "Probability threshold of the 'real' column: real if label1 > threshold. Default: the model card's."
    )
    prob_ratio: float | None = option(
        None, "Prior re-weighting p' = p / (p + (1 - p) * r) of P(real); default: no re-weighting."
    )
    planes: Planes = option(None, "Image planes to read, in channel order. Default: those of the model card.")
    batch_size: PositiveInt = option(PREDICT_BATCH, "Cutouts scored per batch on each executor.")
    overwrite: bool = option(
        False, "Replace an existing --output folder (only one otrain wrote) and a --table otrain-infer did not write."
    )
    backend: Backend = _backend_option()

    @model_validator(mode="after")
    def _check(self) -> InferSparkConfig:
        if (self.cutouts is None) == (self.parquet is None):
            raise ValueError("--cutouts, --parquet: give exactly one of them")
        if self.cutouts is not None and not _has_scheme(self.cutouts):
            try:
                _existing_folder(Path(self.cutouts))
            except ValueError as error:
                raise ValueError(f"--cutouts: {error}") from None
        try:
            if is_mlflow_uri(self.model):
                _model_uri(self.model)
            else:
                _existing_file(Path(self.model))
        except ValueError as error:
            raise ValueError(f"--model: {error}") from None
        if not is_mlflow_uri(self.model):
            _use_card_threshold(self, Path(self.model))
        if not _SPARK_MASTER.fullmatch(self.master):
            raise ValueError(
                f"--master: must be local[*], local[N], spark://HOST:PORT, yarn, k8s://... or mesos://..., "
                f"got {self.master!r}"
            )
        for entry in self.conf:
            if not _SPARK_CONF.fullmatch(entry):
                raise ValueError(f"--conf: must be KEY=VALUE (spark.executor.memory=4g), got {entry!r}")
            key, value = entry.split("=", 1)
            pattern, rule = _SPARK_CONF_RULES.get(key, (None, ""))
            if pattern is not None and not pattern.fullmatch(value):
                raise ValueError(f"--conf: {key} must be {rule}, got {value!r}")
        InferConfig.check_option_rules(self.__dict__)
        local_inputs = [Path(self.cutouts)] if self.cutouts is not None and not _has_scheme(self.cutouts) else []
        _parquet_output(self, self.output, [*local_inputs, *([self.parquet] if self.parquet is not None else [])])
        if self.table is not None:
            if self.table.is_dir():
                raise ValueError(f"--table: {str(self.table)!r} is a folder; give a file name")
            if self.output.resolve() in self.table.resolve().parents:
                raise ValueError(
                    f"--table: {str(self.table)!r} is inside --output, which is replaced whole; put it beside"
                )
            inputs = [Path(self.model)] if not is_mlflow_uri(self.model) else []
            check_outputs(
                [Output(self.table, "table", formats.INFER_COLUMNS)],
                flag="--table",
                command="otrain-infer",
                inputs=inputs,
                overwrite=self.overwrite,
            )
        return self

    def output_folders(self) -> list[Path]:
        """Return the folders of the outputs."""
        return [self.output.parent] + ([self.table.parent] if self.table is not None else [])


def _use_card_threshold(config: CommandConfig, model_file: Path) -> None:
    """Fill an omitted --threshold with the model card's (see :func:`otrain.io.card.card_threshold`).

    Raises
    ------
    ValueError
        If the card cannot be read or its threshold is not a probability; the message names the card.
    """
    if getattr(config, "threshold", None) is None:
        try:
            threshold = card_threshold(model_file)
        except DataError as error:  # an option's file: reported as the option's error
            raise ValueError(str(error)) from None
        # The options are frozen once validated; this validator is where they are completed.
        object.__setattr__(config, "threshold", threshold)


def _is_under(path: Path, folder: Path, recursive: bool) -> bool:
    """Tell whether ``path`` lies in ``folder`` (or below it, when ``recursive``)."""
    parent, base = path.resolve().parent, folder.resolve()
    return parent == base or (recursive and base in parent.parents)


def _overwrite_option(command: str) -> Any:
    """Declare the ``--overwrite`` switch of a command that writes into a folder the user names."""
    return option(False, f"Replace existing output files that {command} did not write (its own are always replaced).")


def _check_outputs(config: CommandConfig, flag: str, planned: list[Output], inputs: list[Path]) -> None:
    check_outputs(
        planned, flag=flag, command=config.command, inputs=inputs, overwrite=bool(getattr(config, "overwrite", False))
    )


def _existing(folder: Path, pattern: str) -> list[Path]:
    """Return the files of ``folder`` matching ``pattern`` (the numbered images a command replaces)."""
    return sorted(folder.glob(pattern)) if folder.is_dir() else []


def _infer_table(path: Path) -> Path:
    """Return the table an --infer option names: the file itself, or infer_results.dat in the folder."""
    return path / "infer_results.dat" if path.is_dir() else path


#: <plots>/CheckInfer/: the original six figures, then otrain's tables.
CHECKINFER_FOLDER = "CheckInfer"
CHECKINFER_FIGURES = (
    "distrib_CNN_prob_sim.png",
    "distrib_CNN_prob_all.png",
    "distrib_CNNprob_all_and_sim.png",
    "fraction_per_bin.png",
    "distrib_FWHM_simulation.png",
    "distrib_FWHM_real_vs_sim.png",
)
CHECKINFER_MATCHES = "checkinfer_matches.csv"
CHECKINFER_SUMMARY = "checkinfer_summary.json"


class CheckInferConfig(CommandConfig):
    """Compare inference results with the injected sources of a crossmatch.dat."""

    command: ClassVar[str] = "otrain-checkinfer"

    plots: WritableFolder = option(..., "Base folder; figures go to <plots>/CheckInfer/.")
    crossmatch: Path = option(..., "Folder holding crossmatch.dat, or the file itself.")
    infer: Path = option(..., "Folder holding infer_results.dat, or the file itself.")
    maglim: tuple[float, ...] = option(
        (12.0, 18.0, 21.0), "Magnitudes splitting the magnitude range in the plots.", aliases=("maglim", "mag_lim")
    )
    cnn_problim: tuple[Probability, ...] = option(
        (0.1, 0.5, 0.7), "CNN probabilities splitting the results in the plots."
    )
    fwhm_ratio_lower: float = option(0.5, "Lower bound of FWHM / FWHM_PSF.")
    fwhm_ratio_upper: float = option(4.2, "Upper bound of FWHM / FWHM_PSF.")
    mlflow_run: Path | None = option(
        None, "mlflow_run.json of the training whose MLflow run gets this command's figures and counts."
    )
    overwrite: bool = _overwrite_option("otrain-checkinfer")
    tracking: bool = option(True, "Log into the run given by --mlflow-run; --no-tracking skips it.")

    @classmethod
    def check_option_rules(cls, values: dict[str, Any]) -> None:
        """Check that the FWHM-ratio bounds are ordered and the limits given in increasing order."""
        if values["fwhm_ratio_lower"] >= values["fwhm_ratio_upper"]:
            raise ValueError("--fwhm-ratio-lower: must be smaller than --fwhm-ratio-upper")
        for flag, limits in (("--maglim", values["maglim"]), ("--cnn-problim", values["cnn_problim"])):
            if not limits or list(limits) != sorted(set(limits)):
                raise ValueError(
                    f"{flag}: give one or more values in increasing order, got {' '.join(map(str, limits))}"
                )

    @model_validator(mode="after")
    def _check(self) -> CheckInferConfig:
        self.check_option_rules(self.__dict__)
        for flag, path in (("--crossmatch", self.crossmatch_file), ("--infer", self.infer_file)):
            if not path.is_file():
                raise ValueError(f"{flag}: {str(path)!r} does not exist (give the file or the folder holding it)")
        out = self.output_folder
        planned = [Output(out / name, "png") for name in CHECKINFER_FIGURES]
        planned.append(Output(out / CHECKINFER_MATCHES, "csv", formats.MATCHES_COLUMNS))
        planned.append(Output(out / CHECKINFER_SUMMARY, "json", formats.CHECKINFER_SUMMARY_KEYS))
        _check_outputs(self, "--plots", planned, [self.crossmatch_file, self.infer_file])
        return self

    @property
    def crossmatch_file(self) -> Path:
        """The crossmatch table: --crossmatch itself, or crossmatch.dat in that folder."""
        return self.crossmatch / "crossmatch.dat" if self.crossmatch.is_dir() else self.crossmatch

    @property
    def infer_file(self) -> Path:
        """The inference table: --infer itself, or infer_results.dat in that folder."""
        return _infer_table(self.infer)

    @property
    def output_folder(self) -> Path:
        """``<plots>/CheckInfer/``."""
        return self.plots / CHECKINFER_FOLDER

    def output_folders(self) -> list[Path]:
        """``<plots>/CheckInfer/``."""
        return [self.output_folder]


#: Written at the root of every folder otrain-report writes: proves the folder is its own.
REPORT_MARKER = "_otrain_report.json"


def _inside(path: Path, folder: Path) -> bool:
    """Tell whether ``path`` is ``folder`` or lies below it (links and relative spellings resolved)."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _not_written_by_report(folder: Path) -> str:
    """Name a file of ``folder`` that the page's marker does not list ("" when there is none).

    A folder otrain-report wrote is replaced whole: a file saved into it since (exported marks,
    notes) would be lost, so it is refused.
    """
    held = [name for name in _held_files(folder) if not (folder / name).is_dir() or (folder / name).is_symlink()]
    if not held:
        return ""
    try:
        listed = json.loads((folder / REPORT_MARKER).read_text()).get("files", [])
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return held[0]
    if not isinstance(listed, list):
        return held[0]
    own = {str(name) for name in listed} | {REPORT_MARKER}
    return next((name for name in held if name not in own), "")


class ReportConfig(CommandConfig):
    """Write a vetting page for a scored night: one self-contained HTML page to judge the candidates.

    The page (<output>/index.html, thumbnails in <output>/thumbs/) opens from disk with no network:
    a header with the model and the night, a histogram of P(real), and one row per scored
    candidate sorted by P(real), with thumbnails of the planes each file has (science,
    reference, difference), the Grad-CAM overlay of the model's input, P(real), magnitude,
    FWHM, position, file and candidate id. A threshold slider, a magnitude filter and sorting
    by any column; r (real), b (bogus), s (skip) mark the current row, the arrows move, marks
    stay in the browser, and a button downloads them as CSV for otrain-relabel.
    """

    command: ClassVar[str] = "otrain-report"

    infer: Path = option(..., "Scored night: infer_results.dat of otrain-infer, or the folder holding it.")
    cutouts: ExistingFolder = option(..., "Folder holding the scored cutouts (the table's files are found in it).")
    model: ExistingFile = option(..., "The model that scored them (.keras or .h5); its card fills the header.")
    output: Path = option(
        ...,
        "Folder for the page (index.html, thumbs/). A folder otrain-report wrote is replaced; any other "
        "non-empty folder is refused.",
    )
    threshold: Probability | None = option(
        None, "Where the threshold slider starts: real if P(real) > threshold. Default: the model card's (0.5)."
    )
    grad_cam: bool = option(True, "Grad-CAM overlay of every candidate; --no-grad-cam leaves it out (faster).")
    method: Literal["gradcam", "gradcam++"] = option(
        "gradcam++", "tf-keras-vis GradcamPlusPlus (default) or Gradcam for the overlays."
    )
    workers: PositiveInt | None = option(None, "Worker processes reading the files (default: one per core).")
    tracking: bool = option(
        True,
        "Look up the model's registry version and log the page into the training's MLflow run (mlflow_run.json "
        "beside the model); --no-tracking does neither.",
    )

    @model_validator(mode="after")
    def _check(self) -> ReportConfig:
        _use_card_threshold(self, self.model)
        if not self.infer_file.is_file():
            raise ValueError(
                f"--infer: {str(self.infer_file)!r} does not exist (give the file or the folder holding it)"
            )
        output = self.output
        if output.exists() or output.is_symlink():
            if not output.is_dir() or output.is_symlink():
                raise ValueError(f"--output: {str(output)!r} is not a folder; give a folder for the page")
            foreign = _not_written_by_report(output)
            if foreign:
                raise ValueError(
                    f"--output: {str(output)!r} exists and holds files otrain-report did not write ({foreign}); "
                    "choose another path"
                )
        for flag, source in (("--cutouts", self.cutouts), ("--infer", self.infer_file), ("--model", self.model)):
            if _inside(source, output):
                raise ValueError(f"--output: {str(output)!r} holds {flag} {str(source)!r}; choose another path")
        try:
            _writable_folder(output.parent)
        except ValueError as error:
            raise ValueError(f"--output: {error}") from None
        return self

    @property
    def infer_file(self) -> Path:
        """The inference table: --infer itself, or infer_results.dat in that folder."""
        return _infer_table(self.infer)

    def output_folders(self) -> list[Path]:
        """Return the page's parent folder (the page itself appears whole, renamed into place)."""
        return [self.output.parent]


#: The four outcomes of a decision, in the order the commands report them, and the class each
#: was given (the one Grad-CAM explains). Grad-CAM writes a folder and a summary grid per outcome.
OUTCOMES = {"TP": 1, "TN": 0, "FP": 1, "FN": 0}
#: Outcome -> folder of its exported cutouts, relative to --path-diagnostics (the original tree).
DIAGNOSTIC_FOLDERS = {
    "FP": Path("validation_set/misclassified/images_FP"),
    "FN": Path("validation_set/misclassified/images_FN"),
    "TP": Path("validation_set/well_classified/images_TP"),
    "TN": Path("validation_set/well_classified/images_TN"),
}


class DiagnosticsConfig(CommandConfig):
    """Score a validation cube and export the misclassified and well-classified cutouts."""

    command: ClassVar[str] = "otrain-diagnostics"

    path_cube_validation: ExistingFile = option(..., "Validation datacube (.npz).")
    model_path: ExistingFile = option(..., "Trained model file (.keras or .h5).")
    threshold: Probability | None = option(
        None, "Probability threshold: real if P(real) > threshold. Default: the model card's (0.5 without one)."
    )
    path_diagnostics: WritableFolder = option(Path("cnn_results"), "Folder for the exported cutouts of each outcome.")
    n_examples: NonNegativeInt = option(
        DIAGNOSTICS_EXAMPLES, "True positives and true negatives exported, each (every FP and FN is exported)."
    )
    seed: Seed = option(DIAGNOSTICS_SEED, "Seed of the random choice of exported true positives and negatives.")
    overwrite: bool = _overwrite_option("otrain-diagnostics")
    backend: Backend = _backend_option()
    tracking: bool = _log_into_training_run()

    @model_validator(mode="after")
    def _check(self) -> DiagnosticsConfig:
        _use_card_threshold(self, self.model_path)
        out = self.path_diagnostics
        planned = [
            Output(out / "diagnostics.json", "json", formats.DIAGNOSTICS_KEYS),
            Output(out / "threshold_table.csv", "csv", formats.THRESHOLD_TABLE_COLUMNS),
        ]
        for folder in DIAGNOSTIC_FOLDERS.values():
            planned += [Output(path, "png") for path in _existing(out / folder, "cutout_*.png")]
        _check_outputs(self, "--path-diagnostics", planned, [self.path_cube_validation, self.model_path])
        return self

    def output_folders(self) -> list[Path]:
        """--path-diagnostics and its export folders."""
        return [self.path_diagnostics / folder for folder in DIAGNOSTIC_FOLDERS.values()]


#: The six original figures, then otrain's reliability diagram, by stem: each is ``<stem>.png``
#: with the data behind it in ``<stem>.csv`` (these columns).
PLOT_FILES = {
    "errmag_ROC": formats.ROC_COLUMNS,
    "mag_ROC": formats.ROC_COLUMNS,
    "errmag_recall": formats.PR_COLUMNS,
    "mag_recall": formats.PR_COLUMNS,
    "model_F1_MCC": formats.THRESHOLD_TABLE_COLUMNS,
    "prob_distribution": formats.PROBABILITY_COLUMNS,
    "calibration": formats.CALIBRATION_COLUMNS,
}


class PlotResultsConfig(CommandConfig):
    """Draw the ROC, recall, F1-MCC and probability figures of a model on a validation cube."""

    command: ClassVar[str] = "otrain-plot-results"

    path_cube_validation: ExistingFile = option(..., "Validation datacube (.npz).")
    model_path: ExistingFile = option(..., "Trained model file (.keras or .h5).")
    path_plots: WritableFolder = option(..., "Folder for the figures.")
    threshold: Probability | None = option(
        None, "Probability threshold: real if P(real) > threshold. Default: the model card's (0.5 without one)."
    )
    overwrite: bool = _overwrite_option("otrain-plot-results")
    backend: Backend = _backend_option()
    tracking: bool = _log_into_training_run()

    @model_validator(mode="after")
    def _check(self) -> PlotResultsConfig:
        _use_card_threshold(self, self.model_path)
        out = self.path_plots
        planned = [Output(out / f"{stem}.png", "png") for stem in PLOT_FILES]
        planned += [Output(out / f"{stem}.csv", "csv", columns) for stem, columns in PLOT_FILES.items()]
        _check_outputs(self, "--path-plots", planned, [self.path_cube_validation, self.model_path])
        return self

    def output_folders(self) -> list[Path]:
        """--path-plots."""
        return [self.path_plots]


#: The dataset-size study's table and figures in --outdir, by --model-name.
STUDY_FILES = (
    "{name}_dataset_size.csv",
    "{name}_scores_dataset_size.png",
    "{name}_ecart_accuracy_size.png",
    "{name}_loss_dataset_size.png",
)


class OptimiseDatasetSizeConfig(TrainingOptions):
    """Train on nested subsets of increasing size to see how much data the model needs.

    One validation set and one test set are drawn (per class, with --seed) and kept for every
    size; the training pool is cut into --n_sections - 1 nested, stratified subsets of
    increasing size, the smallest holding at least 10 cutouts. Each size is a full otrain-train
    run, a child of one MLflow parent run, saved to
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
        table, *figures = (self.outdir / name.format(name=self.model_name) for name in STUDY_FILES)
        planned = [Output(table, "csv", formats.STUDY_COLUMNS), *(Output(path, "png") for path in figures)]
        _check_outputs(self, "--outdir", planned, [self.cube])
        return self

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
        # What --output holds (an interrupted or finished cross-validation) is checked by the
        # command itself (otrain.train.crossval_resume.check_resumable): this module stays free of its code.
        outputs = [
            Output(self.output / CROSSVAL_FILES[0], "csv", formats.OOF_COLUMNS),
            Output(self.output / CROSSVAL_FILES[1], "json", formats.CROSSVAL_KEYS),
        ]
        inputs = [self.cube] + ([self.init_from] if self.init_from is not None else [])
        _check_outputs(self, "--output", outputs, inputs)
        return self

    def output_folders(self) -> list[Path]:
        """--output and its folder of trainings."""
        return [self.output / TRAININGS_FOLDER]


class GradCamConfig(CommandConfig):
    """Show where the model looks: Grad-CAM maps of true/false positives and negatives."""

    command: ClassVar[str] = "otrain-grad-cam"

    cube: ExistingFile = option(..., "Datacube (.npz), usually the validation cube.")
    model_path: ExistingFile = option(..., "Trained model file (.keras or .h5).")
    cam_path: WritableFolder = option(Path("grad_cam"), "Folder for the Grad-CAM images.", flag="--cam_path")
    n_random: PositiveInt = option(
        30, "Number of randomly chosen well-classified candidates per class.", flag="--n_random"
    )
    threshold: Probability | None = option(
        None, "Probability threshold: real if P(real) > threshold. Default: the model card's (0.5 without one)."
    )
    method: Literal["gradcam", "gradcam++"] = option(
        "gradcam++",
        "tf-keras-vis GradcamPlusPlus (default) or Gradcam. On the demo model, Grad-CAM++ puts about half of each "
        "true positive's map on the candidate, plain Grad-CAM mostly on the cutout's border.",
    )
    seed: Seed = option(42, "Seed of the random choice of well-classified candidates.")
    overwrite: bool = _overwrite_option("otrain-grad-cam")
    tracking: bool = _log_into_training_run()

    @model_validator(mode="after")
    def _check(self) -> GradCamConfig:
        _use_card_threshold(self, self.model_path)
        planned = [Output(self.cam_path / f"{outcome}_summary.png", "png") for outcome in OUTCOMES]
        for outcome in OUTCOMES:
            planned += [Output(path, "png") for path in _existing(self.cam_path / outcome, "cutout_CAM_*.png")]
        _check_outputs(self, "--cam_path", planned, [self.cube, self.model_path])
        return self

    def output_folders(self) -> list[Path]:
        """--cam_path and its outcome folders."""
        return [self.cam_path / outcome for outcome in OUTCOMES]


#: Cutouts of the training cube that calibrate an int8 model's activation ranges, by default.
INT8_CALIBRATION_CUTOUTS = 512
#: The ONNX metadata key of every ONNX file otrain writes: the SHA-256 of the Keras file it is the twin of.
SOURCE_SHA256 = "otrain.source_sha256"
#: How far a model's ONNX twin may be from it, in machine epsilons of each cutout's logit scale
#: (otrain.score.backends.parity_allowance; docs/onnx.md says why 64).
PARITY_TOLERANCE = 64.0


def _parity_tolerance(value: float) -> float:
    """Check a parity tolerance: machine epsilons of the logit scale, at least 1 (not a probability)."""
    if value < 1:
        raise ValueError(f"must be at least 1 (machine epsilons of the logit scale, docs/onnx.md), got {value}")
    return value


class ExportConfig(CommandConfig):
    """Write the ONNX twin <stem>.onnx of a Keras model (original O'TRAIN .h5 models included).

    The twin (normalisation and calibration layers included) is checked against the Keras model
    on --cube before it is written: P(real) must agree as closely as float32 arithmetic allows
    (--tolerance, docs/onnx.md). The check is recorded in the model card (<model>.card.json,
    created for a model without one). otrain-infer and the other scoring commands then score
    with ONNX Runtime. With --quantize int8, an int8 model <stem>.int8.onnx is written too:
    ONNX Runtime's static quantisation, calibrated on a sample of the training cube; the card
    records how far its ROC AUC and its decisions at the card's threshold move on --cube, and
    --backend auto uses it only when both move by less than 0.002 in AUC and 0.5 % of
    decisions.
    """

    command: ClassVar[str] = "otrain-export"

    model: ExistingFile = option(..., "Trained model file (.keras or .h5, original O'TRAIN models included).")
    cube: ExistingFile | None = option(
        None,
        "Datacube (.npz) on which the twin must agree with the model (and on which int8 is judged). Default: the "
        "training's test set (test_set/datacube/cube_test.npz beside the model); without one, 256 seeded random "
        "cutouts (int8 then needs --cube).",
    )
    tolerance: Annotated[float, AfterValidator(_parity_tolerance)] = option(
        PARITY_TOLERANCE,
        "How far the twin's log-odds may be from the model's on each cutout of --cube, in machine epsilons (at least "
        "1; not a difference of P(real), as before; float32's, float16's for a --mixed-precision model) of the "
        "cutout's logit scale, the size of the terms its last layer sums (docs/onnx.md); the card records it.",
    )
    quantize: Literal["none", "int8"] = option("none", "Also write an int8 model <stem>.int8.onnx.")
    calibration_cube: ExistingFile | None = option(
        None,
        "Datacube whose cutouts calibrate the int8 model. Default: the training cube the model card names "
        "(its training rows), else --cube.",
    )
    calibration_size: PositiveInt = option(
        INT8_CALIBRATION_CUTOUTS,
        "Cutouts (a seeded sample, rounded down to whole batches of 64) that calibrate the int8 model.",
    )
    seed: Seed = option(42, "Seed of the calibration sample and of the random cutouts.")
    overwrite: bool = option(False, "Replace an existing <stem>.onnx or <stem>.int8.onnx that otrain did not write.")
    tracking: bool = _log_into_training_run()

    @model_validator(mode="after")
    def _check(self) -> ExportConfig:
        if self.model.suffix not in (".keras", ".h5", ".hdf5"):
            raise ValueError(f"--model: {str(self.model)!r} is not a Keras model file (.keras or .h5)")
        if self.quantize == "none":
            for name in ("calibration_cube", "calibration_size"):
                if name in self.model_fields_set:
                    raise ValueError(f"{self.flag_of(name)}: only with --quantize int8")
        planned = [Output(self.twin, "onnx", (SOURCE_SHA256,))]
        if self.quantize == "int8":
            planned.append(Output(self.int8_twin, "onnx", (SOURCE_SHA256,)))
        if self.calibration_cube is not None and self.calibration_cube.resolve() == self.check_cube.resolve():
            raise ValueError(
                f"--calibration-cube: {str(self.calibration_cube)!r} is the cube the int8 model is judged on; "
                "calibrate on training cutouts"
            )
        if self.quantize == "int8" and not self.check_cube.is_file():
            raise ValueError(
                f"--quantize: int8 is judged on a labelled cube and {str(self.model)!r} has no test set beside it "
                "(test_set/datacube/cube_test.npz); give --cube"
            )
        inputs = [self.model, *(path for path in (self.cube, self.calibration_cube) if path is not None)]
        _check_outputs(self, "--model", planned, inputs)
        return self

    @property
    def check_cube(self) -> Path:
        """The cube of the checks: --cube, else the training's test set beside the model (which may not exist)."""
        return self.cube if self.cube is not None else self.model.parent / TEST_CUBE

    @property
    def twin(self) -> Path:
        """The float ONNX twin: <stem>.onnx beside the model."""
        return twin_path(self.model)

    @property
    def int8_twin(self) -> Path:
        """The int8 model: <stem>.int8.onnx beside the model."""
        return int8_path(self.model)

    def output_folders(self) -> list[Path]:
        """Return the model's folder."""
        return [self.model.parent]


def _non_negative_float(value: float) -> float:
    if value < 0:
        raise ValueError(f"must be zero or positive, got {value}")
    return value


class PromoteConfig(CommandConfig):
    """Register a trained model in the MLflow registry and promote it if it is not worse.

    The new version gets its test metrics and the record of its split as version tags. It
    takes the alias 'champion' only when its --metric is at least the current champion's minus
    --tolerance (or when there is no champion yet), both scored on test rows that neither
    model trained on; otherwise, or when no such rows can be found, the alias stays and the
    reason is printed. The gate holds a lock, so two promotions at once compare in turn. The
    decision is written to --report (JSON, for dvc metrics).
    """

    command: ClassVar[str] = "otrain-promote"

    model_dir: ExistingFolder = option(..., "Training folder (<model-path>/CNN_training/<name>/) with mlflow_run.json.")
    registered_name: Annotated[str, AfterValidator(_model_name)] = option(
        "otrain-cnn", "Name of the model in the MLflow registry."
    )
    metric: Literal["mcc", "f1", "accuracy", "roc_auc", "average_precision"] = option(
        "mcc", "Metric compared on the test cube."
    )
    tolerance: Annotated[float, AfterValidator(_non_negative_float)] = option(
        0.005, "The new model may be worse than the champion by at most this much."
    )
    threshold: Probability = option(0.5, "Probability threshold of the comparison: real if P(real) > threshold.")
    alias: Annotated[str, AfterValidator(_model_name)] = option("champion", "Alias given to the promoted version.")
    report: Path | None = option(None, "Write the decision to this JSON file.")
    overwrite: bool = option(False, "Replace an existing --report file that otrain-promote did not write.")

    @model_validator(mode="after")
    def _check(self) -> PromoteConfig:
        if self.report is not None:
            inputs = sorted(path for path in self.model_dir.rglob("*") if path.is_file())
            _check_outputs(self, "--report", [Output(self.report, "json", formats.PROMOTION_KEYS)], inputs)
        return self

    def output_folders(self) -> list[Path]:
        """Return the report's folder."""
        return [self.report.parent] if self.report is not None else []


#: What otrain-serve serves by default, and the port of its server (MLflow's 5000 is often a tracking server's).
DEFAULT_SERVED_MODEL = "models:/otrain-cnn@champion"
DEFAULT_SERVE_PORT = 5001
_KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def _model_uri(value: str) -> str:
    uri = value.strip()
    if uri.lower().endswith(_KERAS_SUFFIXES):
        raise ValueError(
            f"{uri!r} is a Keras model file, not an MLflow model; serve a registered model "
            f"({DEFAULT_SERVED_MODEL}, see otrain-promote) or a training's runs:/<run id>/model"
        )
    if is_mlflow_uri(uri):
        parse_model_uri(uri)
    elif not uri:
        raise ValueError(f"must be an MLflow model URI such as {DEFAULT_SERVED_MODEL}")
    return uri


def _host(value: str) -> str:
    import ipaddress

    host = value.strip()
    try:
        ipaddress.ip_address(host)
    except ValueError:
        label = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
        if len(host) > 253 or not re.fullmatch(rf"{label}(\.{label})*", host):
            raise ValueError(
                f"must be an IP address or a host name (127.0.0.1, 0.0.0.0, localhost), got {value!r}"
            ) from None
    return host


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"must be a TCP port in [1, 65535], got {value}")
    return value


class ServeConfig(CommandConfig):
    """Serve an MLflow model (by default the registered champion) over HTTP with MLflow's scoring server.

    Checks that the model exists (a registry alias is resolved to its version, which is what gets
    served), then runs 'mlflow models serve' in this environment (--env-manager local), with the
    tracking URI of the other commands (MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here).
    POST {"inputs": [cutouts as (H, W, C) nested lists]} to http://HOST:PORT/invocations; the
    answer is {"predictions": [[P(bogus), P(real)], ...]}. GET /ping answers 200 once the model is
    loaded. With --print-request, prints the JSON body for the given cutout files instead
    (centre-cropped to the model's input, its planes, as otrain-infer reads them) and exits.
    """

    command: ClassVar[str] = "otrain-serve"

    model: Annotated[str, AfterValidator(_model_uri)] = option(
        DEFAULT_SERVED_MODEL,
        "MLflow model URI: models:/<name>@<alias>, models:/<name>/<version>, runs:/<run id>/model, or an MLflow "
        "model folder. A plain .keras/.h5 file is refused (log it by training, or register it).",
    )
    host: Annotated[str, AfterValidator(_host)] = option(
        "127.0.0.1", "Interface the server listens on (0.0.0.0: every interface, as in a container)."
    )
    port: Annotated[int, AfterValidator(_port)] = option(DEFAULT_SERVE_PORT, "TCP port the server listens on.")
    workers: PositiveInt = option(1, "Server worker processes; each loads its own copy of the model.")
    print_request: tuple[ExistingFile, ...] | None = option(
        None,
        "Print the request body scoring these cutout files (.fits) and exit, instead of serving.",
    )


#: What otrain-check-params writes into --stamp: always the same, so that the stages that depend
#: on the stamp rerun only when their own parameters or code change.
PARAMS_STAMP = "params.yaml checked against the options of every otrain command\n"


class CheckParamsConfig(CommandConfig):
    """Check a pipeline's params.yaml against the options of every otrain command.

    Every section must name a command, every key one of its options, every value must be valid,
    and options that go together must agree (for example train.frac + train.test_frac < 1).
    In the pipeline this is the first stage: a mistake stops dvc repro before any stage, and
    DVC has not yet removed any output. With --stamp, a file of constant content is written when
    the parameters are valid (the other stages depend on it).
    """

    command: ClassVar[str] = "otrain-check-params"

    params: ExistingFile = option(Path("params.yaml"), "The parameters file.")
    stamp: Path | None = option(None, "Write this file (always the same text) when the parameters are valid.")

    @model_validator(mode="after")
    def _check(self) -> CheckParamsConfig:
        if self.stamp is not None:
            if self.stamp.is_dir():
                raise ValueError(f"--stamp: {str(self.stamp)!r} is a folder")
            if self.stamp.exists() and self.stamp.read_bytes() != PARAMS_STAMP.encode():
                raise ValueError(f"--stamp: {str(self.stamp)!r} exists and was not written by {self.command}")
            if is_same_file(self.stamp, self.params):
                raise ValueError(f"--stamp: {str(self.stamp)!r} is the parameters file")
        return self


class SummaryConfig(CommandConfig):
    """Summarise a pipeline run: the test metrics, the promotion gate's decision, the champion.

    Reads the reports the pipeline (dvc.yaml) wrote: the diagnostics of the test set and the
    promotion decision. Prints a short text (what make demo ends with), or appends the same as
    Markdown tables to --markdown (the retraining workflow passes $GITHUB_STEP_SUMMARY).
    """

    command: ClassVar[str] = "otrain-summary"

    diagnostics: ExistingFile = option(
        Path("reports/diagnostics/diagnostics.json"), "The test set's diagnostics.json (otrain-diagnostics)."
    )
    promotion: ExistingFile = option(Path("reports/promotion.json"), "The promotion report (otrain-promote --report).")
    markdown: Path | None = option(None, "Append a Markdown report to this file instead of printing.")
    title: str = option("otrain retraining", "Heading of the Markdown report.")

    @model_validator(mode="after")
    def _check(self) -> SummaryConfig:
        if self.markdown is not None:
            if self.markdown.is_dir():
                raise ValueError(f"--markdown: {str(self.markdown)!r} is a folder")
            if is_same_file(self.markdown, self.diagnostics) or is_same_file(self.markdown, self.promotion):
                raise ValueError(f"--markdown: {str(self.markdown)!r} is one of the reports it summarises")
        return self


#: Options that dvc.yaml sets itself (paths and names of the pipeline's files): params.yaml
#: sections hold only the tunable ones.
PIPELINE_FIXED = {
    "simulate": {"out", "overwrite", "workers", "planes"},
    "convert": {"path", "cube", "cutouts", "overwrite", "workers", "skip_bad_files", "planes"},
    "train": {"cube", "model_path", "resume", "overwrite"},
    "infer": {"cutouts", "model", "output", "workers", "recursive", "overwrite"},
    "checkinfer": {"plots", "crossmatch", "infer", "mlflow_run", "overwrite"},
    "diagnostics": {"path_cube_validation", "model_path", "path_diagnostics", "overwrite"},
    "plot_results": {"path_cube_validation", "model_path", "path_plots", "overwrite"},
    "grad_cam": {"cube", "model_path", "cam_path", "overwrite"},
    "optimise_dataset_size": {"cube", "model_path", "outdir", "overwrite"},
    "promote": {"model_dir", "report", "overwrite"},
    "report": {"infer", "cutouts", "model", "output", "workers"},
}
#: params.yaml sections that dvc.yaml passes to several commands: section -> (its options, the
#: commands that take them). ``images.planes`` makes the survey and reads the cube with the same
#: planes: ``dvc exp run -S 'images.planes=[IMAGE,TEMPLATE,DIFF]'`` trains on triplets.
SHARED_SECTIONS: dict[str, tuple[tuple[str, ...], tuple[type[CommandConfig], ...]]] = {
    "images": (("planes",), (SimulateConfig, ConvertConfig)),
}
#: params.yaml section -> the command whose options it holds.
PARAMS_SECTIONS: dict[str, type[CommandConfig]] = {
    "simulate": SimulateConfig,
    "convert": ConvertConfig,
    "train": TrainConfig,
    "infer": InferConfig,
    "checkinfer": CheckInferConfig,
    "diagnostics": DiagnosticsConfig,
    "plot_results": PlotResultsConfig,
    "grad_cam": GradCamConfig,
    "optimise_dataset_size": OptimiseDatasetSizeConfig,
    "promote": PromoteConfig,
    "report": ReportConfig,
}


def _params_key(section: str) -> Callable[[re.Match[str]], str]:
    """Return a ``re.sub`` replacement spelling ``--frac-true`` as ``<section>.frac_true``."""
    return lambda match: f"{section}.{match[1].replace('-', '_')}"


def validate_params(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Check a params.yaml mapping against the commands' models; return the validated sections.

    Each section may hold the tunable options of its command (not the pipeline's paths, which
    dvc.yaml sets); unknown sections, unknown keys, bad values and options that break a rule
    together (for example ``train.frac`` + ``train.test_frac`` >= 1) raise ``ValueError``
    naming the section and the keys. Shared sections (:data:`SHARED_SECTIONS`) must suit every
    command that takes them.
    """
    unknown = set(params) - set(PARAMS_SECTIONS) - set(SHARED_SECTIONS)
    if unknown:
        raise ValueError(f"params.yaml: unknown section(s) {', '.join(sorted(unknown))}")
    validated: dict[str, dict[str, Any]] = {}
    for section, values in params.items():
        if section in SHARED_SECTIONS:
            names, commands = SHARED_SECTIONS[section]
            for command in commands:  # the values must suit every command that takes them
                validated[section] = _validate_section(section, values, command, set(command.model_fields) - set(names))
            continue
        validated[section] = _validate_section(section, values, PARAMS_SECTIONS[section], PIPELINE_FIXED[section])
    return validated


def _validate_section(section: str, values: Any, model: type[CommandConfig], excluded: set[str]) -> dict[str, Any]:
    """Validate one params.yaml section against the options of ``model`` not in ``excluded``."""
    from pydantic import ValidationError, create_model

    fields = {name: (field.annotation, field) for name, field in model.model_fields.items() if name not in excluded}
    for name, field in model.model_fields.items():
        if name in fields and field.metadata:
            fields[name] = (Annotated[(field.annotation, *field.metadata)], field)
    section_model = create_model(
        f"{model.__name__}Params",
        __config__=ConfigDict(extra="forbid", coerce_numbers_to_str=True, allow_inf_nan=False),
        **fields,
    )
    if values is not None and not isinstance(values, dict):
        raise ValueError(f"params.yaml: {section}: must be a mapping of option names to values")
    try:
        checked = section_model.model_validate(values or {})
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise ValueError(f"params.yaml: {section}.{where}: {str(first['msg']).removeprefix('Value error, ')}") from None
    if section not in SHARED_SECTIONS:
        try:
            model.check_option_rules(checked.model_dump())
        except ValueError as error:
            # The rules name command-line flags; here the keys are section.option.
            message = re.sub(r"--([a-z][\w-]*)", _params_key(section), str(error))
            raise ValueError(f"params.yaml: {message}") from None
    return checked.model_dump(mode="json")


#: Every command's config model, in the order of the original documentation.
COMMAND_CONFIGS: tuple[type[CommandConfig], ...] = (
    SimulateConfig,
    ConvertConfig,
    TrainConfig,
    ExportConfig,
    InferConfig,
    CheckInferConfig,
    DiagnosticsConfig,
    PlotResultsConfig,
    OptimiseDatasetSizeConfig,
    GradCamConfig,
    PromoteConfig,
    CheckParamsConfig,
    SummaryConfig,
    CrossValidateConfig,
    ServeConfig,
    PackConfig,
    InferSparkConfig,
    ReportConfig,
    RelabelConfig,
)
