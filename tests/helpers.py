"""Shared helpers for tests that run real processes: loopback ports and servers, checkpointed epochs.

The fixtures and the FITS writers are in ``conftest.py``; the headless browser in ``browser.py``.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "ROOT",
    "epochs_printed",
    "free_port",
    "free_ports",
    "history_epochs",
    "imported_by_help",
    "page_data",
    "serving",
    "stop_group",
    "tracking_at",
    "wait_for_epochs",
    "wait_until_answers",
]

#: The checkout the tests run from.
ROOT = Path(__file__).resolve().parents[1]


def imported_by_help(commands: Sequence[str], modules: Sequence[str]) -> tuple[str, list[str]]:
    """Run ``--help`` of each command's entry point in a fresh interpreter.

    Parameters
    ----------
    commands : sequence of str
        Modules of :mod:`otrain.cli` (``"train"``, ``"serve"``, ...), run in this order.
    modules : sequence of str
        The heavy modules to look for (``"tensorflow"``, ``"mlflow"``, ...).

    Returns
    -------
    tuple
        What the commands printed, and which of ``modules`` they imported between them.
    """
    probe = (
        "import importlib, sys\n"
        f"for command in {list(commands)!r}:\n"
        "    try:\n"
        "        importlib.import_module('otrain.cli.' + command).main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print([name for name in {list(modules)!r} if name in sys.modules], file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    return result.stdout, ast.literal_eval(result.stderr.strip().splitlines()[-1])


def free_ports(count: int) -> list[int]:
    """Return ``count`` ports free on loopback now (held together while chosen, so that they differ)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def free_port() -> int:
    """Return a port free on loopback now."""
    return free_ports(1)[0]


def wait_until_answers(
    url: str, seconds: float, process: subprocess.Popen[str] | None = None, log: Path | None = None
) -> None:
    """Wait until ``url`` answers 200, however slow the machine (``seconds`` at most).

    Fails at once when ``process`` (the server, if the test started it) has ended; the message
    holds the end of ``log``, the server's output.
    """
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as response:
            if response.status == 200:
                return
        status = None if process is None else process.poll()
        if status is not None or time.monotonic() > deadline:
            why = f"the server ended (status {status})" if status is not None else f"no answer within {seconds:g} s"
            output = log.read_text(errors="replace")[-3000:] if log is not None and log.is_file() else ""
            pytest.fail(f"{url}: {why}\n{output}")
        time.sleep(1)


def stop_group(process: subprocess.Popen[str], grace: float = 60) -> None:
    """Stop a server started with ``start_new_session=True``: SIGTERM to its group, SIGKILL after ``grace`` s."""
    with contextlib.suppress(ProcessLookupError):  # already gone (it failed to start, say)
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def serving(
    command: Sequence[str], env: dict[str, str], port: int, ready: str, seconds: float, log: Path, grace: float
) -> Iterator[str]:
    """Run a server on ``127.0.0.1:port`` in a process group of its own, as a user starts it.

    Parameters
    ----------
    command : sequence of str
        The server's command line (it listens on ``port``), run with ``env``.
    env : dict
        Its environment.
    port : int
        The loopback port it listens on.
    ready : str
        The path that answers 200 once it serves (``/ping``, ``/health``).
    seconds : float
        How long it may take to answer, at the most.
    log : Path
        Receives its output (shown when it does not answer).
    grace : float
        Seconds it has to stop on SIGTERM before SIGKILL.

    Yields
    ------
    str
        Its URL (``http://127.0.0.1:<port>``); the server is stopped on exit.
    """
    with open(log, "w") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(url + ready, seconds, process, log)
        yield url
    finally:
        stop_group(process, grace)


@contextlib.contextmanager
def tracking_at(uri: str) -> Iterator[None]:
    """Set ``MLFLOW_TRACKING_URI`` as a user's shell would, for the block; then put it back as it was.

    For session and module fixtures, which cannot take ``monkeypatch``.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        yield


def wait_for_epochs(folder: Path, epochs: int, *processes: subprocess.Popen[str], seconds: float = 900) -> None:
    """Wait until the training in ``folder`` has checkpointed ``epochs`` epochs, however slow the machine.

    Parameters
    ----------
    folder : Path
        The training's output folder (``<model-path>/CNN_training/<name>``).
    epochs : int
        How many finished epochs its checkpoint must hold.
    *processes : subprocess.Popen
        The processes that train (or run the pipeline): the test fails as soon as one has ended.
    seconds : float
        How long to wait at the most.
    """
    pointer = folder / ".checkpoint" / "latest.json"
    deadline = time.monotonic() + seconds
    while not (pointer.is_file() and json.loads(pointer.read_text())["epochs_done"] >= epochs):
        if any(process.poll() is not None for process in processes):
            for process in processes:  # the others would wait for the one that ended
                if process.poll() is None:
                    process.kill()
            outputs = [process.communicate() for process in processes]
            pytest.fail(f"a process ended before {epochs} epochs were checkpointed in {folder}: {outputs}")
        assert time.monotonic() < deadline, f"fewer than {epochs} epochs checkpointed in {folder} after {seconds:g} s"
        time.sleep(0.2)


def history_epochs(folder: Path) -> list[int]:
    """The epochs of the training in ``folder``, as its history.csv lists them."""
    with open(folder / "history.csv", newline="") as stream:
        return [int(float(row["epoch"])) for row in csv.DictReader(stream)]


def epochs_printed(out: str) -> list[int]:
    """The epochs a training printed (its ``epoch N/M ...`` lines), in order."""
    return [int(line.split("/")[0].split()[1]) for line in out.splitlines() if line.startswith("epoch ")]


def page_data(output: Path) -> dict[str, Any]:
    """The data the page embeds (its rows, counts and header)."""
    text = (output / "index.html").read_text()
    found = re.search(r'<script id="otrain-data" type="application/json">(.*?)</script>', text, re.S)
    assert found is not None
    return json.loads(found.group(1).replace("<\\/", "</"))
