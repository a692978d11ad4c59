"""otrain-checkinfer: Compare inference results with injected sources (not implemented yet)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from otrain.cli.app import not_implemented, run_command
from otrain.config import CheckInferConfig

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run otrain-checkinfer."""
    run_command(CheckInferConfig, not_implemented(issue=4), argv)
