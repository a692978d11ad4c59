"""Survey scale on one machine: Spark scoring, serving over HTTP, training on two workers.

One run, one machine, ratios against a baseline measured in the same run:

1. Spark (``scale_spark.py``), on ``--n`` (default 20,000) simulated 64x64 cutouts and one model:
   ``otrain-infer`` end to end against ``otrain-infer-spark --master local[2]`` on the FITS files
   and on ``otrain-pack``'s Parquet (goal: Spark at least 0.7 of otrain-infer), ``local[1]``
   against ``local[2]`` (goal >= 1.7), and three ways for the executors to score.
2. Serving (``scale_serve.py``), on ``--serve-n`` cutouts (default 2,000: JSON over HTTP scores
   a few dozen cutouts a second, 20,000 would take many minutes): the latency of one cutout and
   the throughput of batches of 256, against ``predict_on_batch`` in one process.
3. Training (``scale_multi.py``), on a cube of ``--train-n`` simulated cutouts (default 2,000):
   two ``otrain-train`` workers on loopback (MultiWorkerMirroredStrategy) against one worker:
   samples/s and the final test metrics.

Run: ``.venv/bin/python benchmarks/bench_scale.py [--n 20000] [--serve-n 2000] [--train-n 2000]``
(about 15 minutes on 2 cores). Results: ``benchmarks/results/bench_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("OTRAIN_PROGRESS", "0")
# The benchmarks' own MLflow store (scale_spark and scale_serve save models, scale_multi trains).
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path(__file__).resolve().parent / 'results' / 'scale.db'}")

import scale_multi
import scale_serve
import scale_spark
from common import RESULTS


def _rate(figures: dict[str, Any]) -> str:
    return f"{figures['scored'] / figures['wall_s']:7.0f}/s end to end, {figures['per_s']:7.0f}/s scoring"


def report(spark: dict[str, Any], serve: dict[str, Any], multi: dict[str, Any]) -> str:
    """Return the results as the table printed at the end."""
    ratios = spark["ratios"]
    lines = [
        f"Spark scoring, {spark['n']} simulated 64x64 cutouts, one O'TRAIN CNN "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        f"  otrain-infer                      {_rate(spark['otrain_infer'])}",
        f"  otrain-infer-spark local[2] FITS  {_rate(spark['spark_fits_local2'])}",
        f"  otrain-infer-spark local[2] Parq. {_rate(spark['spark_parquet_local2'])}"
        f"  (otrain-pack first: {spark['pack']['wall_s']:.1f} s)",
        f"  otrain-infer-spark local[1] FITS  {_rate(spark['spark_fits_local1'])}",
        f"  Spark local[2] / otrain-infer, end to end: FITS {ratios['spark_fits_local2_vs_infer_wall']:.2f}, "
        f"Parquet {ratios['spark_parquet_local2_vs_infer_wall']:.2f} (goal >= 0.7)",
        f"  Spark local[2] / otrain-infer, scoring:    FITS {ratios['spark_fits_local2_vs_infer']:.2f}, "
        f"Parquet {ratios['spark_parquet_local2_vs_infer']:.2f}",
        f"  local[2] / local[1]: scoring {ratios['local2_vs_local1']:.2f}, "
        f"end to end {ratios['local2_vs_local1_wall']:.2f} (goal >= 1.7)",
    ]
    marginal = spark["marginal_per_s"]
    lines.append(
        f"  a large night (rate from n/2 to n, without start-up): otrain-infer {marginal['otrain_infer']:.0f}/s, "
        f"Spark local[2] {marginal['spark_fits_local2']:.0f}/s ({ratios['marginal_spark_fits_local2_vs_infer']:.2f}), "
        f"local[1] {marginal['spark_fits_local1']:.0f}/s (local[2]/local[1] {ratios['marginal_local2_vs_local1']:.2f})"
    )
    for name, figures in spark["udf"].items():
        shown = f"{figures['per_s']:7.0f}/s" if "per_s" in figures else f"failed: {figures['error']} {figures['cause']}"
        lines.append(f"  executors scoring by {name:18s} {shown}")
    lines += [
        f"Serving over HTTP on loopback (mlflow models serve, one worker), {serve['n']} cutouts",
        f"  one cutout: median {serve['latency_http_median_ms']:.1f} ms, p95 {serve['latency_http_p95_ms']:.1f} ms "
        f"(in process {serve['latency_local_median_ms']:.1f} ms)",
        f"  batches of {serve['batch']}: {serve['throughput_http_per_s']:.0f} cutouts/s "
        f"(in process {serve['throughput_local_per_s']:.0f}/s, ratio {serve['throughput_ratio_http_to_local']:.3f}); "
        f"server up in {serve['server_startup_s']:.0f} s",
        f"Training, {multi['n']} cutouts, {multi['epochs']} epochs, global batch {multi['batch_size']}",
    ]
    for key in ("one_worker", "two_workers"):
        run = multi[key]
        lines.append(
            f"  {key.replace('_', ' '):12s} {run['samples_per_s']:6.1f} samples/s, "
            f"test ROC AUC {run['roc_auc']:.3f}, accuracy {run['accuracy']:.3f}"
        )
    lines.append(
        f"  two / one worker: {multi['throughput_ratio']:.2f} "
        f"({multi['overhead_ms_per_step']:.0f} ms more per step: the all-reduce on loopback, and two "
        "processes on the same cores)"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="cutouts scored by otrain-infer and Spark")
    parser.add_argument("--serve-n", type=int, default=2_000, help="cutouts sent over HTTP")
    parser.add_argument("--train-n", type=int, default=2_000, help="cutouts of the training cube")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=RESULTS / "scale-data", help="scratch and cache folder")
    arguments = parser.parse_args()
    arguments.work.mkdir(parents=True, exist_ok=True)

    spark = scale_spark.run(arguments.work / "spark", arguments.n)
    runs = {name: run for name, run in spark.items() if isinstance(run, dict) and "scored" in run}
    wall = {name: run["scored"] / run["wall_s"] for name, run in runs.items()}
    spark["ratios"]["spark_fits_local2_vs_infer_wall"] = round(wall["spark_fits_local2"] / wall["otrain_infer"], 3)
    spark["ratios"]["spark_parquet_local2_vs_infer_wall"] = round(
        wall["spark_parquet_local2"] / wall["otrain_infer"], 3
    )
    spark["ratios"]["local2_vs_local1_wall"] = round(wall["spark_fits_local2"] / wall["spark_fits_local1"], 3)
    serve = scale_serve.run(arguments.work / "serve", arguments.serve_n)
    multi = scale_multi.run(arguments.work / "multi", arguments.train_n, epochs=arguments.epochs)

    text = report(spark, serve, multi)
    print()
    print(text)
    RESULTS.mkdir(exist_ok=True)
    result = {"spark": spark, "serve": serve, "multi": multi, "machine": {"cores": os.cpu_count()}}
    (RESULTS / "bench_scale.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwritten: {RESULTS / 'bench_scale.json'}")


if __name__ == "__main__":
    main()
