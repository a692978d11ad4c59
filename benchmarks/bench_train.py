"""Training throughput of the O'TRAIN CNN, in samples per second, for 32x32 and 64x64 cutouts.

Builds the model (as otrain-train does, seeded, raw pixels), warms it up for one epoch, then
times ``--epochs`` epochs on simulated cutouts at each size, batch 64, in this process. The
64x64 figure is the baseline; the ratio shows what cropping to 32x32 buys. At each size it
also times otrain-train's per-epoch checkpoint (weights, optimiser state and best weights,
written atomically and synced) and reports it as a share of one epoch's training time.
Run: ``.venv/bin/python benchmarks/bench_train.py [--n 2000] [--epochs 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("OTRAIN_PROGRESS", "0")

from common import RESULTS, simulated_survey

from otrain.data.cutouts import crop_center, read_cutout
from otrain.io.cutouts import list_cutouts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="training cutouts")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data", type=Path, default=RESULTS / "train-data")
    arguments = parser.parse_args()

    import keras
    import numpy as np

    from otrain.nets.model import build_model

    survey = simulated_survey(arguments.data / "survey", arguments.n, seed=2)
    paths = list_cutouts(survey / "true") + list_cutouts(survey / "false")
    cutouts = [read_cutout(path) for path in paths]
    pixels64 = np.stack([cutout.pixels for cutout in cutouts])
    labels = np.eye(2, dtype=np.float32)[[1 if "true" in str(path.parent) else 0 for path in paths]]
    from otrain.train.checkpoint import Checkpoint

    rates, checkpoint_share = {}, {}
    for size in (64, 32):
        x = pixels64 if size == 64 else np.stack([crop_center(image, 32) for image in pixels64])
        keras.utils.set_random_seed(1)
        model = build_model((size, size, 1))
        model.fit(x, labels, batch_size=arguments.batch_size, epochs=1, verbose=0)  # warm-up
        started = time.perf_counter()
        model.fit(x, labels, batch_size=arguments.batch_size, epochs=arguments.epochs, verbose=0)
        rates[size] = len(x) * arguments.epochs / (time.perf_counter() - started)
        print(f"{size}x{size}: {rates[size]:.1f} samples/s ({model.count_params():,} parameters)", flush=True)
        checkpoint = Checkpoint(arguments.data / f"checkpoint-{size}")
        started = time.perf_counter()
        for epoch in range(1, 4):
            checkpoint.epochs_done = epoch
            checkpoint.save(model, improved=epoch % 2 == 1, keep_best=True)
        seconds = (time.perf_counter() - started) / 3
        checkpoint_share[size] = seconds / (len(x) / rates[size])
        print(f"  checkpoint: {seconds:.2f} s per epoch, {checkpoint_share[size]:.1%} of an epoch of {len(x)}")
    result = {
        "samples_per_s_64": round(rates[64], 1),
        "samples_per_s_32": round(rates[32], 1),
        "speed_up_32_over_64": round(rates[32] / rates[64], 2),
        "checkpoint_share_of_epoch_64": round(checkpoint_share[64], 4),
        "checkpoint_share_of_epoch_32": round(checkpoint_share[32], 4),
        "n_train": len(pixels64),
        "batch_size": arguments.batch_size,
        "cores": os.cpu_count(),
    }
    print(f"32x32 is {result['speed_up_32_over_64']:.2f}x faster than 64x64")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_train.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {RESULTS / 'bench_train.json'}")


if __name__ == "__main__":
    main()
