"""What every otrain command does around its own work: parse, validate, report, exit.

A command is a config model (:mod:`otrain.options`) plus an action taking the validated config.
:func:`run_command` parses argv with Fire, validates the keyword arguments with the model, runs
the model's pre-flight (the checks that need the disk), turns every expected failure into one
line on standard error with the right exit status, and prints generated help for
``-h``/``--help`` without importing anything heavy.

Fire stays the parser (the commands are built on it), but used as is it would break the
original commands' interface, so this layer corrects five of its behaviours, and nothing more:

* **Values keep the text the user typed.** Fire evaluates values as Python literals:
  ``--cutouts 2024`` becomes an int, ``--cube 1_000`` the number 1000, ``--name 1e3`` a float.
  Each value is passed to Fire quoted, and pydantic does the typing. The one exception is
  ``None`` given to an option that may be unset: it unsets it, as DVC writes a ``null``
  parameter of ``params.yaml`` (``--target-fnr None``).
* **Several values after one option** (the original's ``--maglim 12 18 21``, argparse's
  ``nargs='+'``) are gathered into one list; Fire would take the first and reject the others.
  Such an option given several times (``--include a --include b``) gathers the values of
  every occurrence; Fire would keep the last.
* **``--no-x`` switches**: Fire understands ``--notracking``; the ``--no-tracking`` that DVC
  templating and users write it reads as ``_tracking=False``, an option that does not exist.
* **An option given without a value** is an error; Fire would silently make it ``True``.
* **Help and errors**: Fire's help describes the Python function, and its errors print a usage
  trace. Help is generated from the config model (every option, type, default), a stray
  positional argument or an invalid value is one line naming the option, exit status 2.

Exit status: 0 success, 1 bad data or failed work, 2 bad options, 130 interrupted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import fire
from pydantic import ValidationError

from otrain.errors import EXIT_BAD_OPTION, EXIT_INTERRUPTED, OtrainError
from otrain.options import CommandConfig

__all__ = ["parse_options", "render_help", "run_command", "type_label"]


class _CommandLineError(Exception):
    """A problem with the command line itself (stray positional arguments)."""


def _flags(config: type[CommandConfig], name: str) -> list[str]:
    field = config.model_fields[name]
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    shown = [config.flag_of(name)]
    for alias in extra.get("aliases") or []:
        spelled = "--" + alias.replace("_", "-")
        if alias != name and spelled not in shown:
            shown.append(spelled)
    return shown


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(members) == 1:
            return members[0], True
    return annotation, False


def type_label(annotation: Any) -> str:
    """Return how ``--help`` (and the command reference of the docs) names an option's type.

    Parameters
    ----------
    annotation : Any
        The option's annotation in its option model.

    Returns
    -------
    str
        ``INT``, ``FLOAT``, ``TEXT``, ``PATH``, ``{a,b}`` for a choice, ``X [X ...]`` for several
        values, ``A|B`` for either; empty for a switch.
    """
    annotation, _ = _strip_optional(annotation)
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "{" + ",".join(str(value) for value in typing.get_args(annotation)) + "}"
    if origin in (typing.Union, types.UnionType):
        return "|".join(type_label(member) for member in typing.get_args(annotation))
    if origin in (tuple, list):
        item = type_label(typing.get_args(annotation)[0])
        return f"{item} [{item} ...]"
    if annotation is bool:
        return ""
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return "PATH"
    return {int: "INT", float: "FLOAT", str: "TEXT"}.get(annotation, str(annotation).upper())


def _is_value(token: str) -> bool:
    if not token.startswith("-"):
        return True
    try:
        float(token)
    except ValueError:
        return False
    return True


def _negated_flags(config: type[CommandConfig]) -> dict[str, str]:
    """Map ``--no-x``/``--no_x`` of every switch to ``--x=False`` (DVC writes false switches so)."""
    negated = {}
    for name, field in config.model_fields.items():
        if field.annotation is bool:
            for spelled in (name, name.replace("_", "-")):
                negated[f"--no-{spelled}"] = negated[f"--no_{spelled}"] = f"--{name}=False"
    return negated


def _field_for(config: type[CommandConfig], flag: str) -> tuple[str, Any] | None:
    """Find the field an option spelling (``frac-true``, ``path_datacube``) refers to."""
    key = flag.replace("-", "_")
    for name, field in config.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if key == name or key in (extra.get("aliases") or []):
            return name, field
    return None


def _value_kind(field: Any) -> str:
    annotation, _ = _strip_optional(field.annotation)
    if annotation is bool:
        return "switch"
    if typing.get_origin(annotation) in (tuple, list):
        return "list"
    return "value"


def _normalise_argv(config: type[CommandConfig], argv: Sequence[str]) -> list[str]:
    """Prepare argv for Fire, so that every value reaches pydantic exactly as typed.

    Values are passed as quoted Python strings: Fire would otherwise read ``--cutouts 2024``
    as a number and ``--cube 1_000`` as 1000. ``--maglim 12 18 21`` (the original's
    nargs='+') becomes one list value, ``--no-tracking`` becomes ``--tracking=False`` (Fire
    would read it as ``_tracking=False``), and an option given without its value is
    an error rather than Fire's ``True``.
    """
    negated = _negated_flags(config)
    result: list[str] = []
    # A list option given several times: the values of every occurrence, placed at the first.
    lists: dict[str, tuple[int, list[str]]] = {}
    index = 0
    while index < len(argv):
        token = negated.get(argv[index], argv[index])
        index += 1
        flag, has_inline, inline = token.partition("=")
        found = _field_for(config, flag[2:]) if flag.startswith("--") else None
        if found is None and flag.startswith("--") and len(flag) > 2:
            # Named here as typed: Fire would read --no-x as the negation of an option "x".
            raise _CommandLineError(f"unknown option {flag} (see --help)")
        if found is None:
            result.append(token)
            continue
        name, field = found
        kind = _value_kind(field)
        if kind == "switch":
            result.append(token)
            continue
        values = [inline] if has_inline else []
        while not has_inline and index < len(argv) and _is_value(argv[index]):
            values.append(argv[index])
            index += 1
            if kind == "value":
                break
        if not values:
            raise _CommandLineError(f"{config.flag_of(name)}: needs a value (see --help)")
        if kind == "list":
            if name in lists:
                lists[name][1].extend(values)
            else:
                lists[name] = (len(result) + 1, values)
                result += [flag, ""]
        elif values[0] == "None" and _strip_optional(field.annotation)[1]:
            result += [flag, "None"]
        else:
            result += [flag, repr(values[0])]
    for position, values in lists.values():
        result[position] = "[" + ",".join(repr(value) for value in values) + "]"
    return result


def render_help(config: type[CommandConfig]) -> str:
    """Build the ``--help`` text of a command from its config model.

    Parameters
    ----------
    config : type
        The command's config model.

    Returns
    -------
    str
        Usage line, description and every option with its type, default and meaning.
    """
    required = [name for name, field in config.model_fields.items() if field.is_required()]
    usage = " ".join(f"{config.flag_of(name)} {type_label(config.model_fields[name].annotation)}" for name in required)
    lines = [f"usage: {config.command} {usage} [options]".replace("  ", " "), ""]
    lines += [line.strip() for line in (config.__doc__ or "").strip().splitlines()]
    lines += ["", "options:"]
    ordered = sorted(config.model_fields.items(), key=lambda item: not item[1].is_required())
    for name, field in ordered:
        label = type_label(field.annotation)
        flags = ", ".join(_flags(config, name))
        if label == "" and field.default is True:
            flags = "--no-" + flags.removeprefix("--")
        head = f"  {flags} {label}".rstrip()
        if field.is_required():
            detail = "required"
        elif label == "":
            detail = "flag; default: off" if not field.default else "flag; default: on, this turns it off"
        elif field.default is None or field.default == ():
            detail = "default: none"
        elif isinstance(field.default, tuple):
            detail = "default: " + " ".join(
                f"{value:g}" if isinstance(value, float) else str(value) for value in field.default
            )
        else:
            detail = f"default: {field.default}"
        lines.append(f"{head}  ({detail})")
        lines.append(f"      {field.description}")
    lines.append("  -h, --help  show this help and exit")
    lines.append("")
    lines.append("Options also accept '_' in place of '-' (for example --frac_true).")
    return "\n".join(lines)


def _describe_validation_error(config: type[CommandConfig], error: ValidationError) -> str:
    problems = error.errors(include_url=False)
    first = problems[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    location = first.get("loc") or ()
    if first["type"] == "extra_forbidden":
        text = f"unknown option --{str(location[0]).replace('_', '-')} (see --help)"
    elif first["type"] == "missing":
        text = f"{config.flag_of(str(location[0]))}: required option is missing"
    elif location:
        text = f"{config.flag_of(str(location[0]))}: {message}"
        if "got" not in message and first["type"] not in ("value_error", "assertion_error"):
            text += f" (got {first.get('input')!r})"
    else:
        text = message
    if len(problems) > 1:
        text += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    return text


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _missing_folders(folders: Sequence[Path]) -> list[Path]:
    """Return the folders (and their ancestors) that do not exist yet, deepest first."""
    missing: set[Path] = set()
    for folder in folders:
        path = Path(os.path.abspath(folder))
        while not path.exists() and path.parent != path:
            missing.add(path)
            path = path.parent
    return sorted(missing, key=lambda path: len(path.parts), reverse=True)


def _remove_empty(folders: Sequence[Path]) -> None:
    """Remove the folders a failed command created and left empty (deepest first); keep the rest."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _fail(command: str, message: str, status: int) -> NoReturn:
    print(f"{command}: error: {message}", file=sys.stderr)
    sys.exit(status)


class _CommandFormatter(logging.Formatter):
    def __init__(self, command: str) -> None:
        super().__init__()
        self.command = command

    def format(self, record: logging.LogRecord) -> str:
        return f"{self.command}: {record.levelname.lower()}: {record.getMessage()}"


def _configure_logging(command: str) -> None:
    logger = logging.getLogger("otrain")
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_CommandFormatter(command))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def parse_options(config: type[CommandConfig], argv: Sequence[str]) -> dict[str, Any]:
    """Parse ``argv`` with Fire into the keyword arguments a config model takes.

    Parameters
    ----------
    config : type
        The command's config model (used to gather multi-value options).
    argv : sequence of str
        Command-line arguments, without the program name.

    Returns
    -------
    dict
        Option names (with underscores) to values as Fire parsed them.
    """
    captured: dict[str, Any] = {}

    def command_line(*positional: Any, **options: Any) -> None:
        if positional:
            raise _CommandLineError(
                f"unexpected argument {positional[0]!r}: every option is given as --name value (see --help)"
            )
        captured.update(options)

    fire.Fire(command_line, command=_normalise_argv(config, argv), name=config.command)
    return captured


def run_command(
    config: type[CommandConfig], action: Callable[[Any], None], argv: Sequence[str] | None = None
) -> NoReturn:
    """Parse, validate and run one command, then exit with its status.

    Parameters
    ----------
    config : type
        The command's config model.
    action : callable
        Does the work given the validated config, once its pre-flight
        (:meth:`~otrain.options.base.CommandConfig.preflight`) has passed; raises
        :class:`~otrain.errors.OtrainError` for expected failures.
    argv : sequence of str, optional
        Arguments; defaults to ``sys.argv[1:]``.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    if any(token in ("-h", "--help") for token in arguments):
        try:
            print(render_help(config), flush=True)
        except BrokenPipeError:  # `--help | head`: the reader has had enough, which is no error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    try:
        options = parse_options(config, arguments)
    except _CommandLineError as error:
        _fail(config.command, str(error), EXIT_BAD_OPTION)
    except fire.core.FireExit as error:
        sys.exit(EXIT_BAD_OPTION if error.code else 0)
    try:
        validated = config.model_validate(options)
    except ValidationError as error:
        _fail(config.command, _describe_validation_error(config, error), EXIT_BAD_OPTION)
    try:
        validated.preflight()
    except OtrainError as error:
        _fail(config.command, str(error), error.exit_code)
    _configure_logging(config.command)
    # A pipeline that is stopped sends SIGTERM: unwind like Ctrl-C, so runs end KILLED and
    # temporary files are removed.
    signal.signal(signal.SIGTERM, _terminate)
    created = _missing_folders(validated.output_folders())
    try:
        action(validated)
    except OtrainError as error:
        _remove_empty(created)
        _fail(config.command, str(error), error.exit_code)
    except KeyboardInterrupt:
        _remove_empty(created)
        _fail(config.command, "interrupted", EXIT_INTERRUPTED)
    except BaseException:
        _remove_empty(created)
        raise
    sys.exit(0)
