"""otrain-simulate: write the built-in synthetic survey."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from otrain.cli.app import run_command
from otrain.options import SimulateConfig

__all__ = ["main"]


def _simulate(config: SimulateConfig) -> None:
    from otrain.simulate import simulate_survey

    summary = simulate_survey(config)
    print(
        f"survey written to {summary.out}: {summary.n_true} real in true/, {summary.n_false} bogus in false/ "
        f"({summary.n_stdpipe} STDPipe-style, {summary.n_edge} flagged EDGE), {summary.n_night} candidates in night/"
    )
    print(f"  night/crossmatch.dat: {summary.n_injected} injected sources, {summary.n_injected_detected} detected")
    print(f"  truth table: {summary.out / 'truth.csv'}")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run otrain-simulate."""
    run_command(SimulateConfig, _simulate, argv)
