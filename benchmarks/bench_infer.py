"""otrain-infer: end-to-end throughput against predict-only, and memory against the file count.

1. Throughput (64x64 O'TRAIN CNN, untrained weights: the cost is the same): score the N cached
   simulated cutouts (default 20,000) with ``otrain.score.inference.infer`` in this process, and time
   ``model.predict`` on the same pixels already in memory. Goal: end-to-end at least 0.8x
   predict-only, i.e. reading is hidden behind compute.
2. Memory: run the real ``otrain-infer`` command on folders of 5,000 and 50,000 cutouts (hard
   links to the cached files) with a 32x32 model, sampling the summed RSS of its processes.
   Goal: the two peaks within 10 % of each other.

Run: ``.venv/bin/python benchmarks/bench_infer.py [--n 20000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("OTRAIN_PROGRESS", "0")

from common import BIN, RESULTS, run_measured, simulated_survey

from otrain.data.cutouts import read_cutout
from otrain.io.cutouts import list_cutouts
from otrain.options import InferConfig


def linked_folder(files: list[Path], folder: Path, count: int) -> Path:
    """A flat folder of ``count`` hard links cycling over ``files`` (no extra disk, no simulation)."""
    marker = folder / f".complete-{count}"
    if marker.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        target = folder / f"c{index:06d}.fits"
        if not target.exists():
            os.link(files[index % len(files)], target)
    marker.touch()
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="cutouts for the throughput test")
    parser.add_argument("--data", type=Path, default=RESULTS / "convert-data", help="where the survey is cached")
    arguments = parser.parse_args()

    import numpy as np

    from otrain.nets.model import build_model, save_model
    from otrain.score.backends import choose_backend
    from otrain.score.inference import infer

    survey = simulated_survey(arguments.data / "survey", arguments.n, seed=1)
    files = list_cutouts(survey / "true") + list_cutouts(survey / "false")
    work = arguments.data / "infer"
    work.mkdir(parents=True, exist_ok=True)

    model64 = build_model((64, 64, 1))
    model_file = save_model(model64, work / "model64.keras")
    save_model(build_model((32, 32, 1)), work / "model32.keras")

    started = time.perf_counter()
    config = InferConfig(cutouts=survey, model=model_file, recursive=True, output=work / "scores.dat")
    config.preflight()
    report = infer(config, choose_backend(config.model, config.backend))
    end_to_end = time.perf_counter() - started
    n_scored = report.n_scored
    cutouts = [read_cutout(path) for path in files]
    pixels = np.stack([cutout.pixels for cutout in cutouts if cutout.meta.edge is not True])
    model64.predict_on_batch(pixels[:256])  # warm-up
    started = time.perf_counter()
    for start in range(0, len(pixels), 256):  # the same calls infer makes, without the reading
        model64.predict_on_batch(pixels[start : start + 256])
    predict_only = time.perf_counter() - started
    e2e_rate, predict_rate = n_scored / end_to_end, len(pixels) / predict_only

    peaks = {}
    for count in (5_000, 50_000):
        folder = linked_folder(files, work / f"flat{count}", count)
        command = [str(BIN / "otrain-infer"), "--cutouts", str(folder), "--model", str(work / "model32.keras")]
        _, peaks[count] = run_measured([*command, "--output", str(work / f"scores{count}.dat")])
        print(f"otrain-infer on {count} cutouts (32x32 model): peak {peaks[count] / 1e6:.0f} MB", flush=True)

    result = {
        "cutouts": n_scored,
        "end_to_end_cutouts_per_s": round(e2e_rate, 1),
        "predict_only_cutouts_per_s": round(predict_rate, 1),
        "ratio": round(e2e_rate / predict_rate, 3),
        "ratio_goal": 0.8,
        "peak_mb_5000": round(peaks[5_000] / 1e6, 1),
        "peak_mb_50000": round(peaks[50_000] / 1e6, 1),
        "peak_growth": round(peaks[50_000] / peaks[5_000] - 1, 3),
        "peak_growth_goal": 0.10,
    }
    print()
    print(f"end-to-end otrain-infer   {e2e_rate:8.1f} cutouts/s  ({n_scored} cutouts, 64x64, in-process)")
    print(f"predict-only              {predict_rate:8.1f} cutouts/s  (same pixels in memory)")
    print(f"ratio                     {result['ratio']:8.3f}   (goal >= 0.8)")
    print(f"peak memory,  5,000 files {peaks[5_000] / 1e6:8.0f} MB")
    print(f"peak memory, 50,000 files {peaks[50_000] / 1e6:8.0f} MB  ({result['peak_growth']:+.1%}, goal within 10 %)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_infer.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {RESULTS / 'bench_infer.json'}")


if __name__ == "__main__":
    main()
