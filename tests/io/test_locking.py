"""Locks between processes, and staging folders of dead processes: real processes, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from otrain.io.atomic import atomic_path, remove_stale_staging
from otrain.io.locking import LockHeldError, exclusive_lock, hostname

HOLDER = """
import sys, time
from pathlib import Path
from otrain.io.locking import exclusive_lock
with exclusive_lock(Path(sys.argv[1]), "the test resource"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    Path(sys.argv[1] + ".releasing").touch()  # still held: whoever gets the lock next sees this
"""


@contextmanager
def holder(lock: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``lock`` for ``seconds``; killed at the end if still running."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "held"
        yield process
    finally:
        process.kill()
        process.communicate()


def test_a_live_holder_is_named_and_the_lock_is_refused(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    with holder(lock, 600) as other:
        with pytest.raises(LockHeldError) as error, exclusive_lock(lock, "the test resource"):
            pass
        message = str(error.value)
        assert message.startswith(f"the test resource is in use by PID {other.pid} on host {hostname()}, started ")
        assert str(lock) in message
        assert "\n" not in message


def test_waiting_for_a_holder_that_finishes(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    with holder(lock, 2), exclusive_lock(lock, "the test resource", wait=600):
        assert Path(f"{lock}.releasing").exists(), "the lock is only granted once the holder has released it"
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists(), "a released lock leaves no file behind"


def test_the_lock_of_a_killed_holder_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lock = tmp_path / "x.lock"
    with holder(lock, 600) as other:
        other.kill()  # SIGKILL: no chance to release or remove anything
        other.wait()
        assert json.loads(lock.read_text())["pid"] == other.pid
        with caplog.at_level("WARNING", logger="otrain"), exclusive_lock(lock, "the test resource"):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"took over the lock of PID {other.pid}" in caplog.text


def test_atomic_writes_clean_up_after_dead_writers_only(tmp_path: Path) -> None:
    target = tmp_path / "table.dat"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".table.dat.{int(dead.stdout)}@{hostname()}.abcd1234.partial"
    alive = tmp_path / f".table.dat.{os.getpid()}@{hostname()}.abcd1234.partial"
    other = tmp_path / f".other.dat.{int(dead.stdout)}@{hostname()}.abcd1234.partial"
    elsewhere = tmp_path / ".table.dat.123@a-container-long-gone.abcd1234.partial"
    abandoned = tmp_path / ".table.dat.456@a-container-long-gone.efgh5678.partial"
    for folder in (stale, alive, other, elsewhere, abandoned):
        folder.mkdir()
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(abandoned, (two_days_ago, two_days_ago))
    with atomic_path(target) as temporary:
        temporary.write_text("complete")
    assert target.read_text() == "complete"
    assert not stale.exists()
    assert elsewhere.exists(), "another host's process cannot be checked: its recent folder stays"
    assert not abandoned.exists(), "a day-old staging folder is abandoned, whoever made it"
    assert alive.exists()
    assert other.exists()
    assert remove_stale_staging(tmp_path / "other.dat") == 1
