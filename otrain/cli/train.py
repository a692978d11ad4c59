"""otrain-train: Train the O'TRAIN CNN on a datacube (not implemented yet)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from otrain.cli.app import not_implemented, run_command
from otrain.config import TrainConfig

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run otrain-train."""
    run_command(TrainConfig, not_implemented(issue=3), argv)
