"""Atomic file writes: write to a temporary file beside the target, then rename it into place.

An interrupted or failed write therefore never leaves a half-written file under the final
name, and an existing file is only replaced by a complete one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "write_text_atomic"]


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
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    temporary = staging / path.name
    try:
        yield temporary
        os.chmod(temporary, mode)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return ``path``."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)
    return path
