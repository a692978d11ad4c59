"""Progress: a bar in a terminal, plain lines now and then in a log, nothing with OTRAIN_PROGRESS=0."""

from __future__ import annotations

import fcntl
import itertools
import os
import pty
import re
import struct
import subprocess
import sys
import termios

# Three seconds of work in 300 steps through the progress helper, lines at most every 0.2 s.
WORK = r"""
import sys, time
import otrain.io.progress as progress
progress.LOG_EVERY_SECONDS = 0.2
with progress.progress_bar(300, "scoring") as bar:
    for _ in range(300):
        time.sleep(0.01)
        bar.update(1)
print("done", file=sys.stderr)
"""


def logged_work(progress: str = "1") -> str:
    """Run the work with standard error into a pipe; return what it wrote there, carriage returns kept."""
    env = {**os.environ, "OTRAIN_PROGRESS": progress}
    return subprocess.run([sys.executable, "-c", WORK], env=env, check=True, stderr=subprocess.PIPE).stderr.decode()


def test_in_a_log_progress_is_a_plain_line_per_tenth_and_one_at_the_end() -> None:
    stderr = logged_work()
    assert "\r" not in stderr
    lines = stderr.splitlines()
    assert lines[-1] == "done"
    line_shape = re.compile(r"scoring: +\d+% (\d+)/300 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+file/s\]")
    shown = [line_shape.fullmatch(line) for line in lines[:-1]]
    assert None not in shown, lines
    counts = [int(match[1]) for match in shown if match]
    assert 3 <= len(counts) <= 11  # now and then, not at every update
    assert counts[-1] == 300  # the end, once
    assert counts[-2] < 300
    assert all(later - earlier >= 30 for earlier, later in itertools.pairwise(counts[:-1]))  # a tenth apart


def test_in_a_terminal_progress_is_a_bar_updated_in_place() -> None:
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    with subprocess.Popen(
        [sys.executable, "-c", WORK], stderr=follower, env={**os.environ, "OTRAIN_PROGRESS": "1"}
    ) as process:
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closes with the process
                break
            if not chunk:
                break
            shown += chunk
    os.close(leader)
    assert process.returncode == 0
    text = shown.decode()
    updates = [part for part in text.split("\r") if part.startswith("scoring:")]
    assert len(updates) >= 2
    assert all("|" in update and "█" in update for update in updates)
    assert "300/300" in updates[-1]


def test_otrain_progress_0_hides_it() -> None:
    assert logged_work("0") == "done\n"
