"""How fast Ctrl-C ends a training, against the length of one of its epochs.

Trains on a simulated 64x64 survey (otrain-train as a user runs it, no tracking), waits until
two epochs are checkpointed, sends SIGINT and times the exit; three times, median. The epoch's
own duration (between two checkpoints) is the baseline: the ratio says how much of an epoch a
user waits after Ctrl-C.
Run: ``.venv/bin/python benchmarks/bench_interrupt.py [--n 2000] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import time
from pathlib import Path

from common import BIN, RESULTS, simulated_survey


def epochs_done(pointer: Path) -> int:
    try:
        return int(json.loads(pointer.read_text())["epochs_done"])
    except (OSError, ValueError, KeyError):
        return 0


def wait_for_epochs(pointer: Path, epochs: int, process: subprocess.Popen[bytes]) -> None:
    while epochs_done(pointer) < epochs:
        if process.poll() is not None:
            raise SystemExit(f"otrain-train ended with status {process.returncode} before epoch {epochs}; see the log")
        time.sleep(0.05)


def one_interrupt(cube: Path, models: Path) -> tuple[float, float]:
    """Return (seconds from SIGINT to exit, seconds of one epoch)."""
    shutil.rmtree(models, ignore_errors=True)
    command = [str(BIN / "otrain-train"), "--cube", str(cube), "--model-path", str(models), "--model-name", "m"]
    command += ["--epochs", "1000", "--patience", "0", "--no-tracking", "--normalisation", "robust"]
    env = {**os.environ, "OTRAIN_PROGRESS": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    log = models.parent / "train.log"
    with open(log, "w") as stream:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stream, env=env)
    pointer = models / "CNN_training" / "m" / ".checkpoint" / "latest.json"
    wait_for_epochs(pointer, 1, process)
    first = time.perf_counter()
    wait_for_epochs(pointer, 2, process)
    epoch = time.perf_counter() - first
    interrupted = time.perf_counter()
    process.send_signal(signal.SIGINT)
    if process.wait() != 130:
        raise SystemExit(f"otrain-train ended with status {process.returncode}, not 130; see {log}")
    return time.perf_counter() - interrupted, epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="cutouts in the cube")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=RESULTS / "interrupt-data")
    arguments = parser.parse_args()
    survey = simulated_survey(arguments.data / "survey", arguments.n, seed=3)
    cube = arguments.data / "datacube" / "cube.npz"
    if not cube.exists():
        command = [
            str(BIN / "otrain-convert"),
            "--path",
            str(arguments.data),
            "--cube",
            "cube",
            "--cutouts",
            str(survey),
        ]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    runs = [one_interrupt(cube, arguments.data / "models") for _ in range(arguments.repeats)]
    exit_seconds = statistics.median(run[0] for run in runs)
    epoch_seconds = statistics.median(run[1] for run in runs)
    result = {
        "ctrl_c_to_exit_s": round(exit_seconds, 2),
        "epoch_s": round(epoch_seconds, 2),
        "exit_over_epoch": round(exit_seconds / epoch_seconds, 3),
        "n_cutouts": arguments.n,
        "repeats": arguments.repeats,
    }
    print(f"Ctrl-C to exit: {exit_seconds:.2f} s, {result['exit_over_epoch']:.1%} of an epoch of {epoch_seconds:.1f} s")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_interrupt.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {RESULTS / 'bench_interrupt.json'}")


if __name__ == "__main__":
    main()
