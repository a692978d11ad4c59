"""Output ownership: the marker file that says a folder is otrain's, written and read one way.

A command that replaces a folder it wrote before leaves a small JSON file in it, its marker,
and reads it back before replacing anything: a folder without its marker is the user's and is
never replaced. Each command keeps the file name and the JSON its earlier versions wrote, so
folders written by them stay recognised:

* otrain-simulate: :data:`SIMULATE_MARKER`, ``{"written_by": "otrain-simulate", <options>}``,
  indented;
* otrain-relabel: :data:`RELABEL_MARKER`, ``{"command": "otrain-relabel", ..., "files": {...}}``,
  indented;
* otrain-report: :data:`REPORT_MARKER`, ``{"page": ..., "files": [...]}``, indented; it names
  no command (its file name alone is the page's);
* otrain-pack and otrain-infer-spark: :data:`PARQUET_MARKER`, ``{"command": ..., <how>}`` on
  one line, keys sorted.

:func:`write_marker` writes a command's marker atomically; :func:`read_marker` returns its
content, or None when it is missing, unreadable, not a JSON object or another command's;
:func:`has_marker` only tells whether the file is there, which is all that the checks of
otrain-simulate and of the Parquet folders ask.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otrain.errors import DataError
from otrain.io.atomic import write_text_atomic
from otrain.io.jsonfile import json_object, read_json

__all__ = [
    "MARKERS",
    "PARQUET_MARKER",
    "RELABEL_MARKER",
    "REPORT_MARKER",
    "SIMULATE_MARKER",
    "Marker",
    "has_marker",
    "marker_path",
    "read_marker",
    "write_marker",
]

#: Written last into --out by otrain-simulate: proves the survey there is its own.
SIMULATE_MARKER = ".otrain-simulate.json"
#: Written at the root of every otrain-relabel output: proves the tree is its own, lists its files.
RELABEL_MARKER = "_otrain_relabel.json"
#: Written at the root of every folder otrain-report writes: proves the folder is its own.
REPORT_MARKER = "_otrain_report.json"
#: Written into every Parquet folder of otrain-pack and otrain-infer-spark: proves the folder is otrain's.
PARQUET_MARKER = "_otrain.json"


@dataclass(frozen=True)
class Marker:
    """How one command marks its output folder.

    Attributes
    ----------
    name : str
        The marker's file name, at the root of the folder.
    key : str or None
        The key whose value is the command's name (``"command"``, ``"written_by"``), or None
        when the marker names no command.
    compact : bool
        One line with sorted keys (True), or indented with the keys in the order given (False).
    """

    name: str
    key: str | None
    compact: bool = False


#: The marker of each command that writes one, by command.
MARKERS: dict[str, Marker] = {
    "otrain-simulate": Marker(SIMULATE_MARKER, "written_by"),
    "otrain-relabel": Marker(RELABEL_MARKER, "command"),
    "otrain-report": Marker(REPORT_MARKER, None),
    "otrain-pack": Marker(PARQUET_MARKER, "command", compact=True),
    "otrain-infer-spark": Marker(PARQUET_MARKER, "command", compact=True),
}


def _marker(command: str) -> Marker:
    try:
        return MARKERS[command]
    except KeyError:
        raise ValueError(f"{command!r} writes no marker (those that do: {', '.join(MARKERS)})") from None


def marker_path(folder: Path, command: str) -> Path:
    """Return where ``command`` keeps its marker in ``folder``.

    Parameters
    ----------
    folder : Path
        An output folder of ``command``.
    command : str
        A command of :data:`MARKERS` (``"otrain-relabel"``...).

    Returns
    -------
    Path
        ``folder`` joined with the marker's file name.

    Raises
    ------
    ValueError
        When ``command`` writes no marker.
    """
    return folder / _marker(command).name


def has_marker(folder: Path, command: str) -> bool:
    """Tell whether ``folder`` holds the marker file of ``command``, whatever it holds.

    Parameters
    ----------
    folder : Path
        The folder to look in.
    command : str
        A command of :data:`MARKERS`.

    Returns
    -------
    bool
        True when the marker is a file (a Parquet folder's marker is the same file for
        otrain-pack and otrain-infer-spark).
    """
    return marker_path(folder, command).is_file()


def write_marker(folder: Path, command: str, fields: dict[str, Any]) -> Path:
    """Write the marker of ``command`` into ``folder``, atomically.

    Parameters
    ----------
    folder : Path
        The output folder (or the staging folder that becomes it).
    command : str
        The command writing it, one of :data:`MARKERS`.
    fields : dict
        What the marker records besides the command's name (JSON values).

    Returns
    -------
    Path
        The marker file.

    Raises
    ------
    ValueError
        When ``command`` writes no marker.
    """
    marker = _marker(command)
    data = {marker.key: command, **fields} if marker.key is not None else dict(fields)
    text = json.dumps(data, sort_keys=True) if marker.compact else json.dumps(data, indent=2)
    return write_text_atomic(folder / marker.name, text + "\n")


def read_marker(folder: Path, command: str) -> dict[str, Any] | None:
    """Return the content of the marker of ``command`` in ``folder``, or None if it is not one.

    Parameters
    ----------
    folder : Path
        The folder to look in.
    command : str
        The command whose marker is expected, one of :data:`MARKERS`.

    Returns
    -------
    dict or None
        The marker's JSON object; None when the file is missing or unreadable, is not JSON, is
        another JSON value than an object, or names another command (for the markers that
        name one).
    """
    marker = _marker(command)
    try:
        data = read_json(folder / marker.name, "not a marker", parse=json_object)
    except DataError:
        return None
    if marker.key is not None and data.get(marker.key) != command:
        return None
    return data
