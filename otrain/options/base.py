"""The option mini-language: reusable option types and checks, :func:`option` and :class:`CommandConfig`.

Each command has one frozen pydantic model, a subclass of :class:`CommandConfig`, declared in
the module of its family (:mod:`otrain.options.data`, :mod:`~otrain.options.training`,
:mod:`~otrain.options.studies`, :mod:`~otrain.options.scoring`, :mod:`~otrain.options.judging`,
:mod:`~otrain.options.tracking`, :mod:`~otrain.options.pipeline`). The command-line layer passes the
user's keyword arguments straight into it, and ``params.yaml`` sections are checked against the
same models.

Validating a model checks values only, and never looks at the disk: a model can be built and
tested anywhere. Whatever needs the disk (files exist, a folder can be written, outputs are the
command's to replace, a lock is free, an omitted ``--threshold`` is the model card's) is the
command's pre-flight, :meth:`CommandConfig.preflight`, which :func:`otrain.cli.app.run_command`
runs once the options are valid and before the command's work; code that builds a model itself
runs it before handing the model to an action.

Option spellings follow the original O'TRAIN commands, including the odd ones (``--n_sections``,
``--n_random``, ``--cam_path``) and the documented aliases (``--frac_true``,
``--path-datacube``, ``--mag-lim``). Fire folds ``-`` and ``_`` in flag names, so every option
is accepted with either.
"""

from __future__ import annotations

import os
import re
import tempfile
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

from otrain.errors import DataError, OptionError
from otrain.io.card import card_threshold
from otrain.io.cutouts import FITS_SUFFIXES
from otrain.io.outputs import Output, check_outputs

__all__ = [
    "FITS_SUFFIXES",
    "MAX_LISTED_BAD_FILES",
    "CommandConfig",
    "CutoutSize",
    "DropoutRate",
    "ExistingFile",
    "ExistingFolder",
    "ExistingSource",
    "NonNegativeInt",
    "OnDisk",
    "OpenFraction",
    "Planes",
    "PositiveInt",
    "Probability",
    "Seed",
    "WritableFolder",
    "disk_problems",
    "option",
]

# --------------------------------------------------------------------------------------------
# Defaults that every family of commands shares.


#: Bad input files a command names one by one; the others are counted.
MAX_LISTED_BAD_FILES = 20


# --------------------------------------------------------------------------------------------
# Reusable checks. Each raises ValueError with a message that reads well after the option name.
# Those of paths look at the disk: the option types below mark them OnDisk, for the pre-flight.


def _existing_folder(path: Path) -> Path:
    if not path.exists():
        raise ValueError(f"folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise ValueError(f"{str(path)!r} is not a folder")
    return path


def _existing_source(path: Path) -> Path:
    """Accept a folder, or a file (a packet file or a tarball of them, recognised when read)."""
    if not path.exists():
        raise ValueError(f"folder {str(path)!r} does not exist")
    if not (path.is_dir() or path.is_file()):
        raise ValueError(f"{str(path)!r} is neither a folder nor a file")
    if path.is_file():
        from otrain.io.alerts import sniff_file

        if sniff_file(path) == "fits":
            raise ValueError(f"{str(path)!r} is a cutout file; give the folder that holds the cutouts")
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


class OnDisk:
    """Mark an option type whose check needs the disk: :meth:`CommandConfig.preflight` runs it, validation does not.

    Parameters
    ----------
    check : callable
        Takes the option's value (a path) and raises ``ValueError`` with a message that reads
        well after the option name.
    """

    def __init__(self, check: Callable[[Path], Path]) -> None:
        self.check = check

    def __repr__(self) -> str:
        return f"OnDisk({self.check.__name__})"


ExistingFolder = Annotated[Path, OnDisk(_existing_folder)]
ExistingFile = Annotated[Path, OnDisk(_existing_file)]
#: A folder of cutouts or packets, or one file of packets (an Avro file, a tarball).
ExistingSource = Annotated[Path, OnDisk(_existing_source)]
WritableFolder = Annotated[Path, OnDisk(_writable_folder)]
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
    """Base of every command's parameters: frozen, unknown options refused.

    Validation checks the values (each option's type and range, :meth:`check_option_rules`) and
    never looks at the disk; :meth:`preflight` then checks what the disk holds (:meth:`check_disk`).
    """

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

    def preflight(self) -> None:
        """Run the checks that need the disk, on valid options, before the command's work.

        First the paths of the option types marked :class:`OnDisk` (:data:`ExistingFile`,
        :data:`ExistingFolder`, :data:`WritableFolder`), option by option as declared, for the
        options given (a default is not checked); then the command's own checks
        (:meth:`check_disk`), which may also complete the options from the disk (an omitted
        ``--threshold`` becomes the model card's). :func:`otrain.cli.app.run_command` calls it once
        the options are valid; code that builds a model itself calls it before the command's action.

        Raises
        ------
        OptionError
            One line naming the option and the rule (for the paths, the first problem and how
            many more there are).
        """
        problems = []
        for name, field in type(self).model_fields.items():
            if name in self.model_fields_set:
                flag = self.flag_of(name)
                problems += [f"{flag}: {problem}" for _, problem in disk_problems(field, getattr(self, name))]
        if problems:
            more = len(problems) - 1
            raise OptionError(problems[0] + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""))
        try:
            self.check_disk()
        except ValueError as error:
            raise OptionError(str(error)) from None

    def check_disk(self) -> None:
        """Check what the disk holds for this command's options (run by :meth:`preflight`; the base class has none).

        Raises
        ------
        ValueError
            Naming the option and the rule (``--output: '...' exists; pass --overwrite ...``).
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


def disk_problems(field: FieldInfo, value: Any) -> list[tuple[tuple[int, ...], str]]:
    """Run the :class:`OnDisk` checks of an option's type on its value; return the problems.

    Parameters
    ----------
    field : pydantic.fields.FieldInfo
        The option's declaration (``model_fields[name]``).
    value : object
        Its validated value.

    Returns
    -------
    list of (tuple of int, str)
        Where each problem lies (the item's index in a tuple option, ``()`` for the value
        itself) and the message of the check, in the order validation would have met them.
    """
    hint = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    return list(_disk_problems(hint, value, ()))


def _disk_problems(hint: Any, value: Any, where: tuple[int, ...]) -> Iterator[tuple[tuple[int, ...], str]]:
    """Yield the problems the :class:`OnDisk` checks that ``hint`` declares find in ``value``.

    The checks of a tuple's type run on every item; those of an optional type on a value that is
    not None. A problem found by the checks of an item stops the checks of what contains it.
    """
    if value is None:
        return
    origin = typing.get_origin(hint)
    if origin is Annotated:
        inner, *marks = typing.get_args(hint)
        found = list(_disk_problems(inner, value, where))
        yield from found
        for mark in marks if not found else ():
            if isinstance(mark, OnDisk):
                try:
                    mark.check(value)
                except ValueError as error:
                    yield where, str(error)
                    return
    elif origin in (typing.Union, types.UnionType):
        for member in typing.get_args(hint):
            if member is not type(None):
                yield from _disk_problems(member, value, where)
    elif origin is tuple and isinstance(value, tuple):
        item = typing.get_args(hint)[0]
        for index, element in enumerate(value):
            yield from _disk_problems(item, element, (*where, index))


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
        # The options are frozen once validated; the pre-flight is where they are completed.
        object.__setattr__(config, "threshold", threshold)


def _check_outputs(config: CommandConfig, flag: str, planned: list[Output], inputs: list[Path]) -> None:
    check_outputs(
        planned, flag=flag, command=config.command, inputs=inputs, overwrite=bool(getattr(config, "overwrite", False))
    )
