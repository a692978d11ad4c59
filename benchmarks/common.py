"""Helpers shared by the benchmarks: the cached simulated survey and process-tree memory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
RESULTS = HERE / "results"


def simulated_survey(
    folder: Path,
    n: int,
    seed: int,
    cutout_size: int = 64,
    mef_fraction: float | None = None,
    planes: Sequence[str] | None = None,
) -> Path:
    """Simulate ``n`` labelled cutouts into ``folder`` once; later runs reuse them.

    ``mef_fraction`` is otrain-simulate's ``--mef-fraction`` (None: its default), ``planes`` its
    ``--planes`` of the gmadet-style cutouts (None: its default, DIFF).
    """
    fraction = "" if mef_fraction is None else f"-{mef_fraction}"
    stacked = "" if planes is None else "-" + "-".join(planes)
    marker = folder / f".complete-{n}-{seed}-{cutout_size}{fraction}{stacked}"
    if not marker.exists():
        shutil.rmtree(folder, ignore_errors=True)
        command = [str(BIN / "otrain-simulate"), "--out", str(folder), "--n-true", str(n // 2)]
        command += ["--n-false", str(n - n // 2), "--n-night", "0", "--seed", str(seed)]
        command += ["--cutout-size", str(cutout_size)]
        if mef_fraction is not None:
            command += ["--mef-fraction", str(mef_fraction)]
        if planes is not None:
            command += ["--planes", *planes]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        marker.touch()
    return folder


def run_measured(command: list[str]) -> tuple[float, int]:
    """Run a command; return (seconds, peak summed RSS in bytes of its process tree)."""
    started = time.perf_counter()
    process = psutil.Popen(command, stdout=subprocess.DEVNULL, env={**os.environ, "OTRAIN_PROGRESS": "0"})
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            try:
                tree = [process, *process.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    status = process.wait()
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    if status != 0:
        raise SystemExit(f"{command[0]} failed with status {status}")
    return elapsed, peak
