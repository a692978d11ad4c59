"""otrain-grad-cam: Grad-CAM maps of a model's decisions (not implemented yet)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from otrain.cli.app import not_implemented, run_command
from otrain.config import GradCamConfig

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run otrain-grad-cam."""
    run_command(GradCamConfig, not_implemented(issue=4), argv)
