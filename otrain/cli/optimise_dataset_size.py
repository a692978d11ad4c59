"""otrain-optimise-dataset-size: metrics against the size of the training set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from otrain.cli.app import run_command
from otrain.cli.tf_setup import prepare_tensorflow
from otrain.options import OptimiseDatasetSizeConfig

__all__ = ["main"]


def _optimise(config: OptimiseDatasetSizeConfig) -> None:
    prepare_tensorflow()
    from otrain.train.optimise import TABLE_COLUMNS, run_study

    report = run_study(config)
    print("  ".join(f"{column:>13}" for column in TABLE_COLUMNS))
    for row in report.rows:
        print(
            "  ".join(
                f"{row[column]:>13.4f}" if column != "size" else f"{row[column]:>13d}" for column in TABLE_COLUMNS
            )
        )
    if report.parent_run_id:
        print(f"MLflow parent run {report.parent_run_id}")
    print(f"written: {', '.join(str(path) for path in report.outputs)}")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run otrain-optimise-dataset-size."""
    run_command(OptimiseDatasetSizeConfig, _optimise, argv)
