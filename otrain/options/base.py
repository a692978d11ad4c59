"""The option mini-language: reusable option types and checks, :func:`option` and :class:`CommandConfig`.

Each command has one frozen pydantic model, a subclass of :class:`CommandConfig`, declared in
the module of its family (:mod:`otrain.options.data`, :mod:`~otrain.options.training`,
:mod:`~otrain.options.studies`, :mod:`~otrain.options.scoring`, :mod:`~otrain.options.judging`,
:mod:`~otrain.options.tracking`, :mod:`~otrain.options.pipeline`). The command-line layer passes the
user's keyword arguments straight into it, and ``params.yaml`` sections are checked against the
same models.

Option spellings follow the original O'TRAIN commands, including the odd ones (``--n_sections``,
``--n_random``, ``--cam_path``) and the documented aliases (``--frac_true``,
``--path-datacube``, ``--mag-lim``). Fire folds ``-`` and ``_`` in flag names, so every option
is accepted with either.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field

from otrain.io.outputs import Output, check_outputs
from otrain.options.layout import card_threshold

__all__ = [
    "FITS_SUFFIXES",
    "MAX_LISTED_BAD_FILES",
    "CommandConfig",
    "CutoutSize",
    "DropoutRate",
    "ExistingFile",
    "ExistingFolder",
    "NonNegativeInt",
    "OpenFraction",
    "Planes",
    "PositiveInt",
    "Probability",
    "Seed",
    "WritableFolder",
    "option",
]

# --------------------------------------------------------------------------------------------
# Defaults that every family of commands shares.


FITS_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz")
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
# Helpers of the command models' checks.


def _held_files(folder: Path) -> list[str]:
    """Every entry below ``folder`` (folders and links included, links not followed), relative, sorted."""
    held = []
    for parent, folders, files in os.walk(folder):
        base = Path(parent).relative_to(folder)
        held += [(base / name).as_posix() for name in (*folders, *files)]
    return sorted(held)


def _model_name(value: str) -> str:
    if not value or "/" in value or os.sep in value or value in {".", ".."}:
        raise ValueError(f"must be a plain name without folders, got {value!r}")
    return value


def _use_card_threshold(config: CommandConfig, model_file: Path) -> None:
    """Fill an omitted --threshold with the model card's (see :func:`card_threshold`)."""
    if getattr(config, "threshold", None) is None:
        # The options are frozen once validated; this validator is where they are completed.
        object.__setattr__(config, "threshold", card_threshold(model_file))


def _check_outputs(config: CommandConfig, flag: str, planned: list[Output], inputs: list[Path]) -> None:
    check_outputs(
        planned, flag=flag, command=config.command, inputs=inputs, overwrite=bool(getattr(config, "overwrite", False))
    )
