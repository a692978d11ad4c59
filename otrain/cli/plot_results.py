"""otrain-plot-results: Figures of a model's results on a validation cube (not implemented yet)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from otrain.cli.app import not_implemented, run_command
from otrain.config import PlotResultsConfig

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run otrain-plot-results."""
    run_command(PlotResultsConfig, not_implemented(issue=4), argv)
