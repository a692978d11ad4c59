"""otrain-plot-results: ROC, precision-recall, F1-MCC, probability and reliability figures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from otrain.cli.app import run_command
from otrain.cli.tf_setup import choose_scorer
from otrain.options import PlotResultsConfig

__all__ = ["main"]


def _plot_results(config: PlotResultsConfig) -> None:
    choice = choose_scorer(config.model_path, config.backend)
    from otrain.judge.analysis import run_plot_results

    written = run_plot_results(config, choice)
    print(f"scored with {choice.backend}; {len(written)} files written to {config.path_plots}/:")
    for path in written:
        print(f"  {path.name}")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run otrain-plot-results."""
    run_command(PlotResultsConfig, _plot_results, argv)
