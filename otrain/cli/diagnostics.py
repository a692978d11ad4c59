"""otrain-diagnostics: Diagnostics of a model on a validation cube (not implemented yet)."""

from __future__ import annotations

from typing import NoReturn

from otrain.cli.app import not_implemented, run_command
from otrain.config import DiagnosticsConfig

__all__ = ["main"]


def main() -> NoReturn:
    """Run otrain-diagnostics."""
    run_command(DiagnosticsConfig, not_implemented(issue=4))
