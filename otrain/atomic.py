"""Atomic file writes: write to a temporary file beside the target, then rename it into place.

An interrupted or failed write therefore never leaves a half-written file under the final
name, and an existing file is only replaced by a complete one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "write_text_atomic"]


@contextmanager
def atomic_path(path: Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    Parameters
    ----------
    path : Path
        The final file; its folder is created when missing.
    mode : int
        Permissions of the final file.

    Yields
    ------
    Path
        An empty temporary file with the same suffix as ``path``, to be written by the caller
        (it may also be deleted and re-created, as some writers insist on doing).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return ``path``."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)
    return path
