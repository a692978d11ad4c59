"""otrain-optimise-dataset-size: Train on nested subsets of increasing size (not implemented yet)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from otrain.cli.app import not_implemented, run_command
from otrain.config import OptimiseDatasetSizeConfig

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run otrain-optimise-dataset-size."""
    run_command(OptimiseDatasetSizeConfig, not_implemented(issue=4), argv)
