"""Atomic file writes: write to a temporary file beside the target, then rename it into place.

An interrupted or failed write therefore never leaves a half-written file under the final
name, and an existing file is only replaced by a complete one. The hidden staging folder of a
write is named after its process (``.<name>.<pid>@<host>.<random>.partial``), so that the
next write of the same file removes what a killed process left behind, and never what a live
one is still writing.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from otrain.io.locking import hostname, process_is_alive

__all__ = [
    "atomic_folder",
    "atomic_path",
    "glob_escape",
    "jsonable",
    "remove_stale_staging",
    "write_json_atomic",
    "write_text_atomic",
]

logger = logging.getLogger("otrain")

_STAGING = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<pid>\d+)@(?P<host>[^/]+)\.)?[a-z0-9_]{8}\.partial$")
#: A staging folder this old is removed whoever made it: no write takes a day.
_ABANDONED_AFTER_SECONDS = 24 * 3600


def _is_stale(entry: Path, name: str) -> bool:
    match = _STAGING.match(entry.name)
    if match is None or match["name"] != name or not entry.is_dir():
        return False
    try:
        if time.time() - entry.stat().st_mtime > _ABANDONED_AFTER_SECONDS:
            return True
    except OSError:
        return False
    return match["pid"] is not None and match["host"] == hostname() and not process_is_alive(int(match["pid"]))


def remove_stale_staging(path: Path) -> int:
    """Remove the staging folders that dead processes left beside ``path``.

    Parameters
    ----------
    path : Path
        A file about to be written.

    Returns
    -------
    int
        How many folders were removed: those named after a process of this host that no longer
        runs, and any over a day old.
    """
    if not path.parent.is_dir():
        return 0
    removed = 0
    for entry in path.parent.glob(f".{glob_escape(path.name)}.*.partial"):
        if _is_stale(entry, path.name):
            shutil.rmtree(entry, ignore_errors=True)
            logger.info("removed %s, left behind by an interrupted run", entry)
            removed += 1
    return removed


def glob_escape(text: str) -> str:
    """Escape the characters that :meth:`pathlib.Path.glob` treats as wildcards.

    Parameters
    ----------
    text : str
        A file name.

    Returns
    -------
    str
        The name as a glob pattern that matches only itself.
    """
    return re.sub(r"([*?\[])", r"[\1]", text)


@contextmanager
def atomic_path(path: Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path for ``path``; on success it is synced and renamed onto ``path``.

    The temporary file lives in a hidden folder beside the target (same file system, so the
    rename is atomic) and keeps the target's name, so writers that choose the format from the
    suffix (Keras, Matplotlib) work, and a left-over after a hard kill never matches a glob
    such as ``*.npz`` in the target's folder.

    Parameters
    ----------
    path : Path
        The final file; its folder is created when missing.
    mode : int
        Permissions of the final file.

    Yields
    ------
    Path
        Where the caller writes; it does not exist yet.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(path)
    owner = f"{os.getpid()}@{hostname()}"
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.{owner}.", suffix=".partial", dir=path.parent))
    temporary = staging / path.name
    try:
        yield temporary
        os.chmod(temporary, mode)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Yield a temporary folder for ``path``; on success it replaces ``path`` (a folder) at once.

    Like :func:`atomic_path`, for an output made of several files (Parquet part files). An
    existing folder at ``path`` is moved into the staging folder, the new one renamed into
    place, and only then is the old one removed; on failure ``path`` is left as it was.

    Parameters
    ----------
    path : Path
        The final folder; its parent is created when missing. The caller decides whether an
        existing one may be replaced.

    Yields
    ------
    Path
        An empty folder on the same file system, to be filled by the caller.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(path)
    owner = f"{os.getpid()}@{hostname()}"
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.{owner}.", suffix=".partial", dir=path.parent))
    temporary = staging / path.name
    temporary.mkdir()
    try:
        yield temporary
        for written in temporary.rglob("*"):
            if written.is_file():
                with open(written, "rb") as stream:
                    os.fsync(stream.fileno())
        old = staging / f"{path.name}.old"
        if path.is_dir() and not path.is_symlink():
            os.replace(path, old)
        try:
            os.replace(temporary, path)
        except OSError:
            if old.exists():
                os.replace(old, path)  # put the previous output back before the staging folder goes
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return ``path``."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)
    return path


def jsonable(value: Any) -> Any:
    """Return ``value`` as JSON can hold it: NaN as None, paths as text, NumPy scalars as Python ones."""
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None  # JSON has no NaN
    return value


def write_json_atomic(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` (see :func:`jsonable`) as sorted, indented JSON, atomically."""
    return write_text_atomic(path, json.dumps(jsonable(data), indent=2, sort_keys=True) + "\n")
