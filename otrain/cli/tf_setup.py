"""TensorFlow for the commands: imported once, quietly, at the log level the user chose, and only when needed."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from otrain.score.backends import BackendChoice

__all__ = ["choose_scorer", "filter_native_logs", "prepare_tensorflow"]


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


def choose_scorer(model_file: Path, backend: str) -> BackendChoice:
    """Choose what scores for a command, once (:func:`otrain.score.backends.choose_backend`).

    TensorFlow is set up (:func:`prepare_tensorflow`) only when the Keras model scores: ONNX
    Runtime scores without it, and the command then never imports it.

    Parameters
    ----------
    model_file : Path
        The Keras model the command was given.
    backend : str
        The command's ``--backend``.

    Returns
    -------
    BackendChoice
        What the command passes on to everything that scores.
    """
    from otrain.score.backends import choose_backend

    choice = choose_backend(model_file, backend)
    if choice.backend == "keras":
        prepare_tensorflow()
    return choice
