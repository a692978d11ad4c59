"""otrain-checkinfer: how the classifier treats injected sources."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from otrain.cli.app import run_command
from otrain.options import CheckInferConfig

__all__ = ["main"]


def _checkinfer(config: CheckInferConfig) -> None:
    from otrain.judge.checkinfer import run_checkinfer

    report = run_checkinfer(config)
    print(
        f"{report.n_injected} injected sources: {report.n_detected} detected, {report.n_scored} scored "
        f"(among {report.n_candidates} candidates)"
    )
    for limit, count in report.recovered.items():
        share = count / report.n_scored if report.n_scored else 0.0
        print(f"  recovered with P(real) > {limit:g}: {count} ({share:.1%} of the scored ones)")
    print(f"written: {config.plots / 'CheckInfer'}/ ({len(report.outputs)} files)")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run otrain-checkinfer."""
    run_command(CheckInferConfig, _checkinfer, argv)
