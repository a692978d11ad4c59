"""otrain-optimise-dataset-size: metrics against the size of the training set.

One validation and one test set are drawn once (by whole groups when the cube records them,
as ``--split-by`` says); the rest of the cube (the training pool) is
ordered so that every prefix keeps the class mix, and each size trains on a prefix of it: the
subsets are nested, and every size is judged on the same test set. Each size is a complete
otrain-train run (all options honoured, dropout included), logged as a child of one MLflow
parent run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from otrain.data.datacube import Datacube, Split, cube_split
from otrain.errors import DataError, OptionError
from otrain.io.layout import training_folder
from otrain.io.outputs import STUDY_COLUMNS
from otrain.io.progress import announce
from otrain.options import MONITOR_MODES, STUDY_FILES, OptimiseDatasetSizeConfig, TrainConfig

__all__ = ["StudyReport", "max_sections", "nested_order", "run_study", "study_sizes"]

logger = logging.getLogger("otrain")

TABLE_COLUMNS = STUDY_COLUMNS
#: Fewest training cutouts of the smallest size (smaller sections make no meaningful training).
MIN_SECTION = 10


def nested_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """Order rows so that every prefix keeps the class mix (nested, stratified subsets)."""
    rng = np.random.default_rng([seed, 11])
    positions = np.empty(len(labels))
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        shuffled = rng.permutation(rows)
        positions[shuffled] = (np.arange(len(rows)) + 0.5) / len(rows)
    return np.argsort(positions, kind="stable")


def study_sizes(pool: int, n_sections: int) -> list[int]:
    """Sizes int(pool * i / (n_sections - 1)) for i = 1 .. n_sections - 1, as the original."""
    return sorted({int(pool * i / (n_sections - 1)) for i in range(1, n_sections)} - {0})


def max_sections(pool: int) -> int:
    """Return the largest --n_sections whose smallest size still holds :data:`MIN_SECTION` cutouts.

    Parameters
    ----------
    pool : int
        Cutouts of the training pool.

    Returns
    -------
    int
        The largest number of sections.
    """
    return pool // MIN_SECTION + 1


@dataclass
class StudyReport:
    """The table of the study and the files written."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    parent_run_id: str | None = None


def _best_epoch(history: list[dict[str, float]], monitor: str) -> dict[str, float]:
    """Return the history row of the epoch with the best --monitor value (whose weights early stopping keeps)."""
    sign = 1.0 if MONITOR_MODES[monitor] == "min" else -1.0
    finite = [row for row in history if np.isfinite(row[monitor])] or history
    return min(finite, key=lambda row: sign * row[monitor])


def _train_config(config: OptimiseDatasetSizeConfig, size: int) -> TrainConfig:
    shared = config.model_dump(exclude={"command", "n_sections", "outdir", "model_name"})
    name = f"{config.model_name}_size_{size}"
    try:
        options = TrainConfig.model_validate({**shared, "model_name": name})
        options.preflight()
    except (ValidationError, OptionError) as error:
        first = str(error.errors(include_url=False)[0]["msg"]) if isinstance(error, ValidationError) else str(error)
        message = first.removeprefix("Value error, ")
        if message.startswith("--model-name:"):  # a training of an earlier study is there
            folder = training_folder(config.model_path, name)
            raise OptionError(
                f"--model-name: {folder} holds a training of an earlier study; pass --overwrite to replace it"
            ) from None
        raise OptionError(message) from None
    return options


def run_study(config: OptimiseDatasetSizeConfig) -> StudyReport:
    """Train at every size, then write the table and the three original figures."""
    from otrain.track.tracking import check_tracking_uri, open_run, resolve_tracking_uri
    from otrain.train.training import train

    cube = Datacube.load(config.cube)
    if cube.n_real == 0 or cube.n_bogus == 0:
        raise DataError(f"{config.cube}: the cube holds only one class; the study needs both")
    fixed, _ = cube_split(cube, config.split_by, config.frac, config.test_frac, config.seed, config.cube)
    pool = fixed.train[nested_order(cube.labels[fixed.train], config.seed)]
    if len(pool) < MIN_SECTION:
        raise DataError(f"{config.cube}: too few cutouts ({len(cube)}) for a dataset-size study")
    if config.n_sections > max_sections(len(pool)):
        raise OptionError(
            f"--n_sections: {config.n_sections} sections of the {len(pool)} training cutouts of {config.cube} would "
            f"make sizes below {MIN_SECTION} cutouts; give at most {max_sections(len(pool))}"
        )
    sizes = study_sizes(len(pool), config.n_sections)
    report = StudyReport()
    # Every size's options are checked before the first training starts.
    configs = {size: _train_config(config, size) for size in sizes}

    def study() -> None:
        for size in sizes:
            subset = Split(train=np.sort(pool[:size]), validation=fixed.validation, test=fixed.test)
            if len(np.unique(cube.labels[subset.train])) < 2:
                logger.warning("size %d: one class only, skipped", size)
                continue
            announce(f"--- training on {size} of {len(pool)} cutouts")
            result = train(configs[size], cube=cube, split=subset)
            best = _best_epoch(result.history, config.monitor)
            report.rows.append(
                {
                    "size": size,
                    "accuracy": result.metrics["accuracy"],
                    "f1": result.metrics["f1"],
                    "mcc": result.metrics["mcc"],
                    "roc_auc": result.metrics["roc_auc"],
                    "val_loss": best["val_loss"],
                    "train_val_gap": best["accuracy"] - best["val_accuracy"],
                }
            )

    if config.tracking:
        uri = resolve_tracking_uri(config.tracking_uri)
        check_tracking_uri(uri)
        with open_run(uri, config.experiment, run_name=f"{config.model_name}_dataset_size") as parent:
            import mlflow

            report.parent_run_id = parent.run_id
            mlflow.log_params({"n_sections": config.n_sections, "sizes": ",".join(map(str, sizes))})
            study()
            for row in report.rows:
                mlflow.log_metrics({key: float(value) for key, value in row.items() if key != "size"}, step=row["size"])
            report.outputs = _write_outputs(config, report.rows)
            for path in report.outputs:
                mlflow.log_artifact(str(path), artifact_path="dataset_size")
    else:
        study()
        report.outputs = _write_outputs(config, report.rows)
    return report


def _write_outputs(config: OptimiseDatasetSizeConfig, rows: list[dict[str, Any]]) -> list[Path]:
    from otrain.metrics import plots
    from otrain.metrics.evaluation import write_csv

    name, out = config.model_name, config.outdir
    out.mkdir(parents=True, exist_ok=True)
    sizes = [row["size"] for row in rows]
    return [
        write_csv(out / STUDY_FILES[0].format(name=name), rows, STUDY_COLUMNS),
        plots.plot_series(
            sizes,
            {key: [row[key] for row in rows] for key in ("mcc", "f1", "accuracy")},
            "training cutouts",
            "score on the test set",
            f"{name}: scores against dataset size",
            out / STUDY_FILES[1].format(name=name),
        ),
        plots.plot_series(
            sizes,
            {"train - validation accuracy": [row["train_val_gap"] for row in rows]},
            "training cutouts",
            "accuracy gap",
            f"{name}: over-fitting against dataset size",
            out / STUDY_FILES[2].format(name=name),
        ),
        plots.plot_series(
            sizes,
            {"validation loss": [row["val_loss"] for row in rows]},
            "training cutouts",
            "loss",
            f"{name}: validation loss against dataset size",
            out / STUDY_FILES[3].format(name=name),
        ),
    ]
