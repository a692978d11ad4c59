"""otrain-diagnostics: Diagnostics of a model on a validation cube (not implemented yet)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from otrain.cli.app import not_implemented, run_command
from otrain.config import DiagnosticsConfig

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run otrain-diagnostics."""
    run_command(DiagnosticsConfig, not_implemented(issue=4), argv)
