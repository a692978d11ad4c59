"""What every otrain command does around its own work: parse, validate, report, exit.

A command is a config model (:mod:`otrain.config`) plus an action taking the validated config.
:func:`run_command` parses argv with Fire, validates the keyword arguments with the model,
turns every expected failure into one line on standard error with the right exit status,
and prints generated help for ``-h``/``--help`` without importing anything heavy.

Exit status: 0 success, 1 bad data or failed work, 2 bad options, 130 interrupted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import fire
from pydantic import ValidationError

from otrain.config import CommandConfig
from otrain.errors import OtrainError

__all__ = [
    "EXIT_BAD_DATA",
    "EXIT_BAD_OPTION",
    "filter_native_logs",
    "parse_options",
    "prepare_tensorflow",
    "render_help",
    "run_command",
]

EXIT_BAD_DATA = 1
EXIT_BAD_OPTION = 2
EXIT_INTERRUPTED = 130


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


def _type_label(annotation: Any) -> str:
    annotation, _ = _strip_optional(annotation)
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "{" + ",".join(str(value) for value in typing.get_args(annotation)) + "}"
    if origin in (typing.Union, types.UnionType):
        return "|".join(_type_label(member) for member in typing.get_args(annotation))
    if origin in (tuple, list):
        item = _type_label(typing.get_args(annotation)[0])
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
    would read it as an option named ``-tracking``), and an option given without its value is
    an error rather than Fire's ``True``.
    """
    negated = _negated_flags(config)
    result: list[str] = []
    index = 0
    while index < len(argv):
        token = negated.get(argv[index], argv[index])
        index += 1
        flag, has_inline, inline = token.partition("=")
        found = _field_for(config, flag[2:]) if flag.startswith("--") else None
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
            result += [flag, "[" + ",".join(repr(value) for value in values) + "]"]
        else:
            result += [flag, repr(values[0])]
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
    usage = " ".join(f"{config.flag_of(name)} {_type_label(config.model_fields[name].annotation)}" for name in required)
    lines = [f"usage: {config.command} {usage} [options]".replace("  ", " "), ""]
    lines += [line.strip() for line in (config.__doc__ or "").strip().splitlines()]
    lines += ["", "options:"]
    ordered = sorted(config.model_fields.items(), key=lambda item: not item[1].is_required())
    for name, field in ordered:
        label = _type_label(field.annotation)
        flags = ", ".join(_flags(config, name))
        if label == "" and field.default is True:
            flags = "--no-" + flags.removeprefix("--")
        head = f"  {flags} {label}".rstrip()
        if field.is_required():
            detail = "required"
        elif label == "":
            detail = "flag; default: off" if not field.default else "flag; default: on, this turns it off"
        elif field.default is None:
            detail = "default: none"
        elif isinstance(field.default, tuple):
            detail = "default: " + " ".join(f"{value:g}" for value in field.default)
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


# Run in a child process: reads what the block writes to file descriptor 2 and passes on every
# line except absl's notice and the C++ log records below the level in argv[1]. A record starts
# with absl's prefix "I0123 12:34:56.789012  42 file.cc:7] " (with "00:00:<seconds since 1970>"
# before absl is initialised) or TensorFlow's own "2025-09-17 14:44:05.157831: I file.cc:32] ".
# A child keeps working after its parent dies, so a fatal error written just before an abort
# still shows.
_LOG_FILTER = r"""
import re, sys
level = int(sys.argv[1])
record = re.compile(rb"(?:([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ |\d{4}-\d\d-\d\d [\d:.]+: ([IWEF]) )[^ \]]+:\d+\] ")
notice = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    found = record.match(line)
    severity = "IWEF".index((found[1] or found[2]).decode()) if found else 1 if line.startswith(notice) else 3
    if severity >= min(level, 3):
        out.write(line)
        out.flush()
"""


@contextlib.contextmanager
def filter_native_logs(min_level: int) -> Iterator[None]:
    """Drop C++ log lines below ``min_level`` that native code writes to standard error in the block.

    TensorFlow's shared libraries log through absl while they load, before TensorFlow applies
    ``TF_CPP_MIN_LOG_LEVEL``: "oneDNN custom operations are on" on every CPU run, and on GPU
    machines "Unable to register cuDNN factory" and the like at error level. They write to the
    file descriptor, under Python, so this filters there. Everything else written in the block
    passes unchanged and in order, fatal (``F``) records included.

    Parameters
    ----------
    min_level : int
        Lowest severity shown: 0 info, 1 warning, 2 error, 3 fatal only (``TF_CPP_MIN_LOG_LEVEL``).
    """
    try:
        os.fstat(2)
    except OSError:  # no standard error at all: nothing to filter
        yield
        return
    if not sys.executable:  # an embedded interpreter: no Python to run the filter with
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()
    read_end, write_end = os.pipe()
    child = subprocess.Popen([sys.executable, "-I", "-S", "-c", _LOG_FILTER, str(min_level)], stdin=read_end, stdout=2)
    os.close(read_end)
    saved = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the child reads to its end and exits
        os.close(saved)
        child.wait()


def prepare_tensorflow() -> None:
    """Set up TensorFlow for a command and import it, without its C++ start-up noise.

    ``TF_CPP_MIN_LOG_LEVEL`` defaults to 3 (fatal errors only; a value set by the user is kept),
    and the lines TensorFlow logs while it loads obey it too (see :func:`filter_native_logs`).
    Every command that uses TensorFlow calls this before importing it.
    """
    level = os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules:
        return
    try:
        min_level = int(level)
    except ValueError:
        min_level = 0
    with filter_native_logs(min_level):
        import tensorflow  # noqa: F401


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
        Does the work given the validated config; raises :class:`~otrain.errors.OtrainError`
        for expected failures.
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
