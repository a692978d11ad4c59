"""Reading the JSON files otrain writes (checkpoints, records, reports, run files), errors in one line.

A JSON file that cannot be read, is not JSON or is not what it should be is one problem for the
user: :func:`read_json` says so in one line that names the file, ``<file>: <problem> (<why>)``,
with advice after a semicolon when there is some. (Model cards have their own reader,
:func:`otrain.io.card.read_card`.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from otrain.errors import DataError, first_line

__all__ = ["json_object", "read_json"]

T = TypeVar("T")


def json_object(data: Any) -> dict[str, Any]:
    """Return ``data`` when it is a JSON object; for :func:`read_json`'s ``parse``.

    Raises
    ------
    ValueError
        When it is another JSON value (a list, a number...).
    """
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _why(error: Exception) -> str:
    if isinstance(error, KeyError) and error.args:
        return f"no {error.args[0]!r}"
    return first_line(error)


def read_json(path: Path, problem: str, *, parse: Callable[[Any], T] = lambda data: data, advice: str = "") -> T:
    """Read a JSON file and return what ``parse`` makes of its content.

    Parameters
    ----------
    path : Path
        The file (UTF-8 JSON).
    problem : str
        What the message says is wrong, after the file's name: ``the checkpoint cannot be read``,
        ``not a readable JSON report``...
    parse : callable, optional
        Turns the parsed JSON into what the caller needs (the value itself by default); a
        ``ValueError``, ``TypeError`` or ``KeyError`` it raises is the file's problem.
    advice : str, optional
        What to do about it, appended after a semicolon.

    Returns
    -------
    object
        What ``parse`` returns.

    Raises
    ------
    DataError
        ``<path>: <problem> (<why>)[; <advice>]``, where ``why`` is the first line of the error
        (``no 'key'`` for a missing key).
    """
    try:
        return parse(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise DataError(f"{path}: {problem} ({_why(error)})" + (f"; {advice}" if advice else "")) from None
