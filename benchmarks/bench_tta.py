"""Test-time augmentation (``otrain-train --tta``): what the mean over the 8 flips and rotations costs and gains.

On a simulated survey of ``--n`` labelled 32x32 triplets (IMAGE TEMPLATE DIFF), converted with
every cutout kept, one network is trained per seed with ``--recipe small-real`` (``--epochs``
epochs, no tracking) and scored on its test set three ways, each calibrated (temperature) on
its validation set: the network as trained (``--tta`` off), and the same weights with the mean
of the 8 views' log-odds (``--tta``) or of their P(real). Figures: ROC AUC, average precision,
accuracy at the default threshold 0.5, the expected calibration error, and the FPR at 1 % FNR
of the test set.

The scoring cost is measured in the same run, on every cutout of the cube: the ONNX twin of each
(exported and checked as otrain-train does) in ONNX Runtime, and Keras ``predict_on_batch``,
through ``otrain.score.scoring.predict`` (batch 256), each the median of ``--runs`` runs,
alternated; the ratio is the TTA model's time over the plain one's.

Run: ``.venv/bin/python benchmarks/bench_tta.py [--n 3000] [--epochs 10] [--seeds 0 1]``;
results in ``benchmarks/results/bench_tta.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import BIN, RESULTS, simulated_survey

TRIPLET = ("IMAGE", "TEMPLATE", "DIFF")
SHOWN = ("roc_auc", "average_precision", "accuracy", "expected_calibration_error", "fpr_at_fnr_1pc")


def _timed(score: Any, pixels: np.ndarray, runs: int) -> float:
    from otrain.score.scoring import predict

    predict(score, pixels[:256])  # warm up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        predict(score, pixels)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(cube_file: Path, work: Path, seed: int, epochs: int, runs: int) -> dict[str, Any]:
    """Train one network, then score its test set plain and with both means of the views."""
    import keras

    from otrain.data.datacube import Datacube
    from otrain.metrics.evaluation import evaluate
    from otrain.nets.calibration import fit_calibration
    from otrain.nets.model import Calibration, load_model, save_model, with_calibration
    from otrain.nets.tta import with_tta
    from otrain.options import TrainConfig
    from otrain.score.backends import OnnxClassifier
    from otrain.score.scoring import predict, predict_columns
    from otrain.score.twin import export_onnx
    from otrain.train.training import train

    name = f"seed{seed}"
    config = TrainConfig(
        cube=cube_file, model_path=work, model_name=name, recipe="small-real", epochs=epochs, seed=seed,
        tracking=False, overwrite=True,
    )  # fmt: skip
    started = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - started
    folder = result.output_dir
    validation = Datacube.load(folder / "validation_set" / "datacube" / "cube_validation.npz")
    test = Datacube.load(folder / "test_set" / "datacube" / "cube_test.npz")
    validation_labels = np.argmax(validation.labels, axis=1) if validation.labels.ndim == 2 else validation.labels
    plain = load_model(result.model_file)
    network = plain.layers[:-1] if isinstance(plain.layers[-1], Calibration) else plain.layers
    body = keras.Sequential([keras.Input(plain.inputs[0].shape[1:]), *network])  # without its calibration
    models = {"plain": plain}
    for combine in ("log_odds", "probability"):
        augmented = with_tta(body, combine=combine)
        fit = fit_calibration(validation_labels, predict_columns(augmented, validation.cube), "temperature")
        models[f"tta_{combine}"] = with_calibration(augmented, fit.temperature, fit.bias)
    row: dict[str, Any] = {"seed": seed, "train_seconds": seconds, "n_test": len(test.labels)}
    for key, model in models.items():
        figures = evaluate(test.labels, predict(model, test.cube), 0.5)
        row[key] = {name: float(figures[name]) for name in SHOWN}
    # Scoring cost: both twins and both Keras models on the same cutouts, alternated.
    pixels = Datacube.load(cube_file).cube
    twins = {}
    for key in ("plain", "tta_log_odds"):
        model_file = save_model(models[key], work / f"{name}_{key}.keras")
        export_onnx(models[key], model_file, pixels)
        twins[key] = OnnxClassifier(model_file.with_suffix(".onnx"))
    timing: dict[str, list[float]] = {f"{backend}_{key}": [] for backend in ("onnx", "keras") for key in twins}
    for _ in range(runs):
        for key in twins:
            timing[f"onnx_{key}"].append(_timed(twins[key], pixels, 1))
            timing[f"keras_{key}"].append(_timed(models[key], pixels, 1))
    medians = {key: statistics.median(values) for key, values in timing.items()}
    row["scoring_seconds"] = medians
    row["scored_cutouts"] = len(pixels)
    row["cost_ratio_onnx"] = medians["onnx_tta_log_odds"] / medians["onnx_plain"]
    row["cost_ratio_keras"] = medians["keras_tta_log_odds"] / medians["keras_plain"]
    return row


def main() -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None)
    arguments = parser.parse_args()
    work = arguments.work or Path(tempfile.mkdtemp(prefix="bench-tta-"))
    survey = simulated_survey(work / "survey", arguments.n, 11, cutout_size=32, planes=TRIPLET)
    cube = work / "datacube" / "tta.npz"
    if not cube.is_file():
        command = [str(BIN / "otrain-convert"), "--path", str(work), "--cube", "tta", "--cutouts", str(survey)]
        command += ["--frac-true", "-1", "--planes", *TRIPLET]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OTRAIN_PROGRESS": "0"})
    rows = [measure(cube, work / "models", seed, arguments.epochs, arguments.runs) for seed in arguments.seeds]
    print(f"{'seed':>4}  {'model':<16}" + "".join(f"{name:>28}" for name in SHOWN))
    for row in rows:
        for key in ("plain", "tta_log_odds", "tta_probability"):
            print(f"{row['seed']:>4}  {key:<16}" + "".join(f"{row[key][name]:>28.4f}" for name in SHOWN))
        print(
            f"      scoring {row['scored_cutouts']} cutouts: ONNX Runtime {row['cost_ratio_onnx']:.2f}x, "
            f"Keras {row['cost_ratio_keras']:.2f}x the plain model's time ({row['scoring_seconds']})"
        )
    RESULTS.mkdir(exist_ok=True)
    record = {"n": arguments.n, "epochs": arguments.epochs, "rows": rows}
    (RESULTS / "bench_tta.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
