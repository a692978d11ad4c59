"""otrain-infer: Score candidate cutouts with a trained model (not implemented yet)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from otrain.cli.app import not_implemented, run_command
from otrain.config import InferConfig

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run otrain-infer."""
    run_command(InferConfig, not_implemented(issue=3), argv)
