"""Two-worker training (MultiWorkerMirroredStrategy over loopback) against one worker, same cube.

Both runs are real ``otrain-train`` processes on the same cube with the same options and the
same global batch; the two workers get a ``TF_CONFIG`` naming two loopback ports. Throughput is
training cutouts per second of epoch time (the first epoch, which traces the graph, is left out);
the wall time includes importing TensorFlow and, for two workers, waiting for each other.

On one machine, two workers cannot be faster than one process: TensorFlow already spreads one
process over every core, and the two workers share the same cores. What the ratio shows is the
cost of the collective all-reduce of the gradients, every step, over loopback
(``overhead_ms_per_step``: the extra epoch time per gradient step). Across machines the workers
add cores; the all-reduce then crosses the network.

Run alone: ``.venv/bin/python benchmarks/scale_multi.py [--n 2000] [--epochs 3]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, simulated_survey

ROOT = Path(__file__).resolve().parents[1]
EPOCH_LINE = re.compile(r"^epoch (\d+)/\d+: .*\(([\d.]+) s\)$", re.MULTILINE)


def _command(name: str) -> list[str]:
    return [sys.executable, "-c", f"import sys; from otrain.cli.{name} import main; main(sys.argv[1:])"]


def _environment(tf_config: str | None = None) -> dict[str, str]:
    env = {**os.environ, "OTRAIN_PROGRESS": "0", "PYTHONPATH": str(ROOT)}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = tf_config
    return env


def _free_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def _train(work: Path, name: str, cube: Path, epochs: int, batch_size: int, workers: int) -> dict[str, float]:
    """Train with ``workers`` processes; return epoch throughput, wall time and the test metrics."""
    args = [
        *("--cube", str(cube), "--model-path", str(work / "models"), "--model-name", name, "--overwrite"),
        *("--epochs", str(epochs), "--batch-size", str(batch_size), "--patience", "0"),
        *("--normalisation", "robust", "--no-tracking"),
    ]
    ports = _free_ports(workers)
    configs: list[str | None] = [None]
    if workers > 1:
        hosts = [f"127.0.0.1:{port}" for port in ports]
        configs = [
            json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}})
            for index in range(workers)
        ]
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [*_command("train"), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_environment(config),
        )
        for config in configs
    ]
    try:
        outputs = [process.communicate() for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    wall = time.perf_counter() - started
    for process, (_, err) in zip(processes, outputs, strict=True):
        if process.returncode != 0:
            raise SystemExit(f"otrain-train ({workers} workers) failed with status {process.returncode}: {err}")
    folder = work / "models" / "CNN_training" / name
    card = json.loads((folder / f"{name}.keras.card.json").read_text())
    metrics = card["test_metrics"]
    seconds = [float(found[2]) for found in EPOCH_LINE.finditer(outputs[0][0])]
    timed = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
    n_train = card["split_sizes"]["train"]
    return {
        "workers": workers,
        "samples_per_s": n_train / timed,
        "epoch_s": timed,
        "steps_per_epoch": n_train // card["batch_size_used"],
        "wall_s": wall,
        "roc_auc": metrics["roc_auc"],
        "accuracy": metrics["accuracy"],
    }


def run(work: Path, n: int, epochs: int = 3, batch_size: int = 64) -> dict[str, object]:
    """Measure one worker, then two on loopback, on the same cube of ``n`` simulated cutouts.

    Parameters
    ----------
    work : Path
        Scratch folder (the survey is cached there between runs).
    n : int
        Labelled cutouts simulated.
    epochs : int
        Epochs per training (the first is not timed).
    batch_size : int
        Global batch of both runs.

    Returns
    -------
    dict
        Per run: samples/s, epoch and wall seconds, test ROC AUC and accuracy; the ratio of
        two-worker to one-worker throughput, and the extra milliseconds per gradient step.
    """
    work.mkdir(parents=True, exist_ok=True)
    survey = simulated_survey(work / "survey", n, seed=5)
    cube = work / "datacube" / "multi.npz"
    if not cube.is_file():
        command = [*_command("convert"), "--path", str(work), "--cube", "multi", "--cutouts", str(survey)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=_environment())
    one = _train(work, "one_worker", cube, epochs, batch_size, 1)
    two = _train(work, "two_workers", cube, epochs, batch_size, 2)
    return {
        "n": n,
        "epochs": epochs,
        "batch_size": batch_size,
        "cores": os.cpu_count(),
        "one_worker": one,
        "two_workers": two,
        "throughput_ratio": two["samples_per_s"] / one["samples_per_s"],
        "overhead_ms_per_step": 1000 * (two["epoch_s"] - one["epoch_s"]) / one["steps_per_epoch"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="labelled cutouts simulated")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--work", type=Path, default=RESULTS / "scale-multi")
    arguments = parser.parse_args()
    figures = run(arguments.work, arguments.n, arguments.epochs, arguments.batch_size)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
