"""Exclusive locks between processes, and telling a dead process's left-overs from a live one's.

A lock is an ``fcntl.flock`` on a small file that records who holds it (PID, host, command,
start time). The kernel releases the lock when its holder dies, however it dies, so a lock file
left behind by a killed process is simply taken over by the next one; a lock held by a live
process makes the next one fail at once with one line naming the holder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from otrain.errors import DataError

__all__ = [
    "LockHeldError",
    "describe_holder",
    "exclusive_lock",
    "hostname",
    "is_locked",
    "process_is_alive",
    "read_holder",
]

logger = logging.getLogger("otrain")


class LockHeldError(DataError):
    """Another live process holds the lock (exit status 1)."""


def hostname() -> str:
    """Return this machine's host name, as recorded in lock files and staging folders."""
    return socket.gethostname() or "localhost"


def process_is_alive(pid: int) -> bool:
    """Tell whether a process with this PID exists on this machine.

    A PID that exists but belongs to another user counts as alive: the safe answer when the
    caller would otherwise delete that process's files.

    Parameters
    ----------
    pid : int
        The process id.

    Returns
    -------
    bool
        False only when no such process exists.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_holder(path: Path) -> dict[str, Any]:
    """Return who holds (or last held) the lock ``path``, as its file records; empty when unknown."""
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_holder(holder: dict[str, Any]) -> str:
    """Describe the holder recorded in a lock file.

    Parameters
    ----------
    holder : dict
        The lock file's contents (``pid``, ``host``, ``started``); may be empty.

    Returns
    -------
    str
        For example "PID 123 on host h, started 2026-11-28 08:00:00 UTC".
    """
    if not holder:
        return "another process"
    started = holder.get("started")
    when = time.strftime(", started %Y-%m-%d %H:%M:%S UTC", time.gmtime(started)) if started else ""
    return f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}{when}"


def _open(path: Path) -> tuple[int, bool]:
    """Open the lock file; read-only when it is another user's (flock works on either)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644), True
    except PermissionError:
        try:
            return os.open(path, os.O_RDONLY), False
        except OSError as error:
            raise DataError(f"{path}: cannot open the lock file ({error.strerror or error})") from None
    except OSError as error:
        raise DataError(f"{path}: cannot open the lock file ({error.strerror or error})") from None


def _try_lock(descriptor: int, path: Path) -> bool:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise DataError(f"{path}: cannot take the lock ({error.strerror or error})") from None
        return False
    return True


def is_locked(path: Path) -> bool:
    """Tell whether a live process holds the lock ``path`` (without taking it for long).

    Parameters
    ----------
    path : Path
        A lock file of :func:`exclusive_lock`.

    Returns
    -------
    bool
        True when another process holds it; False when nobody does or the file does not exist.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        if not _try_lock(descriptor, path):
            return True
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        return False
    finally:
        os.close(descriptor)


@contextmanager
def exclusive_lock(path: Path, what: str, wait: float = 0.0) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the duration of the block.

    Parameters
    ----------
    path : Path
        The lock file; its folder is created when missing. The file is removed on release.
    what : str
        What the lock protects, for the message (for example "the training folder models/x").
    wait : float
        Seconds to wait for a live holder to finish; 0 fails at once.

    Yields
    ------
    None
        While the lock is held.

    Raises
    ------
    LockHeldError
        When a live process holds the lock (after ``wait`` seconds); the message names it and
        the lock file.
    DataError
        When the lock file cannot be opened or locked at all.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    announced = False
    while True:
        descriptor, writable = _open(path)
        if not _try_lock(descriptor, path):
            os.close(descriptor)
            holder = describe_holder(read_holder(path))
            if time.monotonic() >= deadline:
                raise LockHeldError(f"{what} is in use by {holder}; wait for it to finish (lock file {path})")
            if not announced:
                logger.info("waiting for %s, which %s holds", what, holder)
                announced = True
            time.sleep(0.2)
            continue
        # The holder before us may have removed the file between our open and our lock: then we
        # hold a lock on a file nobody else can see, and must start again.
        try:
            same = os.fstat(descriptor).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(descriptor)
    try:
        stale = read_holder(path)
        if stale:
            logger.warning(
                "took over the lock of %s, which ended without releasing it (%s)", describe_holder(stale), path
            )
        if writable:
            record = {"pid": os.getpid(), "host": hostname(), "started": time.time(), "command": " ".join(sys.argv)}
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, (json.dumps(record) + "\n").encode(), 0)
        yield
    finally:
        # Remove the file while still holding the lock, so that no one can take a lock on it
        # between the removal and the release (see the inode check above).
        with contextlib.suppress(OSError):
            path.unlink()
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        os.close(descriptor)
