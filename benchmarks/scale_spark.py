"""Spark scoring against otrain-infer on the same simulated cutouts and the same model.

On ``n`` cached simulated 64x64 cutouts and one O'TRAIN CNN (untrained weights: the cost is the
same), each run as the command a user types (a fresh process, start-up included in the wall time):

1. ``otrain-infer --recursive``: the baseline, cutouts/s;
2. ``otrain-infer-spark --master local[2]`` on the FITS files (binaryFile), and on the Parquet of
   ``otrain-pack`` (its packing time reported apart); ratio to 1. Goal >= 0.7;
3. ``otrain-infer-spark --master local[1]`` on the FITS files: local[2]/local[1]. Goal >= 1.7;
4. in this process, the same Spark scoring three ways: otrain's (each task reads and scores in
   one ``mapInPandas`` pass, a model per Python worker), decoding then pyspark's
   ``predict_batch_udf`` on the pixel column, and decoding then ``mlflow.pyfunc.spark_udf`` on an
   MLflow copy of the model;
5. 1 and 3 on half the files: the marginal rate (cutouts/s from n/2 to n) leaves out the fixed
   start-up and is the rate a large night would see.

Throughput is cutouts per second of the scoring itself (the command's own "in T s": reading and
scoring, without Spark's and TensorFlow's start-up), and per second of wall time.

Run: ``.venv/bin/python benchmarks/scale_spark.py [--n 2000] [--work DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("OTRAIN_PROGRESS", "0")

from common import RESULTS, simulated_survey

SIZE = 64
_SCORED = re.compile(r"scored (\d+) of (\d+) cutouts in ([\d.]+) s")


def _command(module: str, *args: str | Path) -> list[str]:
    return [sys.executable, "-c", f"from otrain.cli.{module} import main; main()", *map(str, args)]


def _run(module: str, *args: str | Path) -> dict[str, float]:
    """Run a command; return its wall time and, when it reports one, its scoring time and count."""
    started = time.perf_counter()
    result = subprocess.run(_command(module, *args), capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{module} failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    figures = {"wall_s": round(wall, 2)}
    found = _SCORED.search(result.stdout)
    if found:
        scored, seconds = int(found[1]), float(found[3])
        figures.update(scored=scored, scoring_s=seconds, per_s=round(scored / seconds, 1))
        figures["per_wall_s"] = round(scored / wall, 1)
    return figures


def _model(work: Path) -> tuple[Path, Path]:
    """One untrained 64x64 O'TRAIN CNN, as a Keras file and as an MLflow model (for spark_udf)."""
    import numpy as np

    from otrain.nets.model import build_model, save_model
    from otrain.score.mlflow_model import save_mlflow_model

    keras_file, mlflow_dir = work / "model.keras", work / "mlflow_model"
    if keras_file.is_file() and mlflow_dir.is_dir():
        return keras_file, mlflow_dir
    model = build_model((SIZE, SIZE, 1))
    save_model(model, keras_file)
    save_mlflow_model(model, mlflow_dir, np.zeros((2, SIZE, SIZE, 1), np.float32))
    return keras_file, mlflow_dir


def _mlflow_scorer(mlflow_dir: Path) -> Any:
    def build(spark: Any, model_file: Path, shape: tuple[int, int, int], config: Any) -> Any:
        import mlflow.pyfunc

        udf = mlflow.pyfunc.spark_udf(spark, str(mlflow_dir), result_type="array<double>", env_manager="local")
        return lambda column: udf(column)[1]

    return build


def _in_process(survey: Path, keras_file: Path, mlflow_dir: Path, work: Path) -> dict[str, Any]:
    """otrain's one pass against predict_batch_udf and mlflow.pyfunc.spark_udf, same session settings and cutouts."""
    from otrain.options import InferSparkConfig
    from otrain.score.spark import infer_spark
    from otrain.score.spark_executor import predict_batch_scorer

    figures: dict[str, Any] = {}
    scorers = (
        ("one_pass", None),
        ("predict_batch_udf", predict_batch_scorer),
        ("mlflow_spark_udf", _mlflow_scorer(mlflow_dir)),
    )
    for name, scorer in scorers:
        output = work / f"udf-{name}.parquet"
        config = InferSparkConfig(
            cutouts=str(survey), model=str(keras_file), output=output, master="local[2]", overwrite=True
        )
        config.preflight()
        try:
            report = infer_spark(config, scorer=scorer)
        except Exception as error:  # report why the alternative could not run, keep the other figure
            cause = error.__context__ or error  # otrain's one line; the Python worker's own trace is in its cause
            lines = [line for line in str(cause).splitlines() if line.strip()]
            figures[name] = {"error": f"{type(error).__name__}: {str(error)[:200]}", "cause": lines[-3:]}
            continue
        figures[name] = {"scored": report.n_scored, "scoring_s": round(report.seconds, 2)}
        figures[name]["per_s"] = round(report.n_scored / report.seconds, 1)
    return figures


def _half(survey: Path, folder: Path) -> Path:
    """A flat folder of hard links to the first half of the survey's cutouts (made once)."""
    from otrain.io.cutouts import list_cutouts

    files = list_cutouts(survey, recursive=True)
    marker = folder / f".complete-{len(files)}"
    if not marker.exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for index, path in enumerate(files[: len(files) // 2]):
            os.link(path, folder / f"c{index:06d}{''.join(path.suffixes)}")
        marker.touch()
    return folder


def run(work: Path, n: int = 20_000, survey: Path | None = None, seed: int = 11) -> dict[str, Any]:
    """Measure Spark scoring against otrain-infer on ``n`` simulated cutouts.

    Parameters
    ----------
    work : Path
        Scratch folder (the survey is cached there unless ``survey`` is given).
    n : int
        Number of cutouts.
    survey : Path, optional
        An existing ``simulated_survey`` folder of ``n`` 64x64 cutouts to reuse.
    seed : int
        Seed of the simulated survey.

    Returns
    -------
    dict
        Figures of every run and the ratios against the goals.
    """
    work.mkdir(parents=True, exist_ok=True)
    survey = survey or simulated_survey(work / f"survey-{n}", n, seed, cutout_size=SIZE)
    keras_file, mlflow_dir = _model(work)
    spark = ("--model", keras_file, "--overwrite", "--conf", "spark.driver.memory=2g")
    figures: dict[str, Any] = {"n": n}
    figures["otrain_infer"] = _run(
        "infer", "--cutouts", survey, "--model", keras_file, "--recursive", "--output", work / "infer.dat"
    )
    figures["spark_fits_local2"] = _run(
        "infer_spark", "--cutouts", survey, "--output", work / "fits2.parquet", "--master", "local[2]", *spark
    )
    figures["pack"] = _run("pack", "--cutouts", survey, "--output", work / "packed", "--recursive", "--overwrite")
    figures["spark_parquet_local2"] = _run(
        "infer_spark",
        "--parquet",
        work / "packed",
        "--output",
        work / "parquet2.parquet",
        "--master",
        "local[2]",
        *spark,
    )
    figures["spark_fits_local1"] = _run(
        "infer_spark", "--cutouts", survey, "--output", work / "fits1.parquet", "--master", "local[1]", *spark
    )
    figures["udf"] = _in_process(survey, keras_file, mlflow_dir, work)
    # The same commands on half the files: the difference removes what does not grow with the
    # night (the JVM, TensorFlow imported in every Python worker, model loading), leaving the
    # rate at which a large night is scored.
    half = _half(survey, work / "half")
    halves = {
        "otrain_infer": _run("infer", "--cutouts", half, "--model", keras_file, "--output", work / "half.dat"),
        "spark_fits_local2": _run(
            "infer_spark", "--cutouts", half, "--output", work / "half2.parquet", "--master", "local[2]", *spark
        ),
        "spark_fits_local1": _run(
            "infer_spark", "--cutouts", half, "--output", work / "half1.parquet", "--master", "local[1]", *spark
        ),
    }
    figures["marginal_per_s"] = {
        name: round((figures[name]["scored"] - run["scored"]) / (figures[name]["wall_s"] - run["wall_s"]), 1)
        for name, run in halves.items()
    }
    marginal = figures["marginal_per_s"]
    base = figures["otrain_infer"]["per_s"]
    figures["ratios"] = {
        "spark_fits_local2_vs_infer": round(figures["spark_fits_local2"]["per_s"] / base, 3),
        "spark_parquet_local2_vs_infer": round(figures["spark_parquet_local2"]["per_s"] / base, 3),
        "local2_vs_local1": round(figures["spark_fits_local2"]["per_s"] / figures["spark_fits_local1"]["per_s"], 3),
        "marginal_spark_fits_local2_vs_infer": round(marginal["spark_fits_local2"] / marginal["otrain_infer"], 3),
        "marginal_local2_vs_local1": round(marginal["spark_fits_local2"] / marginal["spark_fits_local1"], 3),
        "goals": {"spark_local2_vs_infer": 0.7, "local2_vs_local1": 1.7},
    }
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--work", type=Path, default=RESULTS / "scale_spark_work")
    arguments = parser.parse_args()
    result = run(arguments.work, arguments.n)
    print(json.dumps(result, indent=2))
