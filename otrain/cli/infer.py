"""otrain-infer: score candidate cutouts with a trained model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from otrain.cli.app import run_command
from otrain.cli.tf_setup import choose_scorer
from otrain.options import InferConfig

__all__ = ["main"]


def _infer(config: InferConfig) -> None:
    choice = choose_scorer(config.model, config.backend)
    from otrain.score.inference import infer
    from otrain.score.spread import spread_summary

    report = infer(config, choice)
    elapsed = report.seconds
    print(
        f"scored {report.n_scored} of {report.n_files} cutouts in {elapsed:.1f} s "
        f"({report.n_scored / max(elapsed, 1e-9):.0f}/s); skipped {report.n_edge} EDGE, "
        f"{len(report.bad_files)} unreadable; scored with {report.backend}"
    )
    print(f"real (P(real) > {config.threshold}): {report.n_real}")
    summary = spread_summary(report.spread) if report.spread is not None else None
    if summary is not None:
        print(
            f"spread of the members' P(real): median {summary.median:.3g}, "
            f"90th percentile {summary.p90:.3g}, largest {summary.max:.3g} (column spread)"
        )
    print(f"written: {report.output}")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run otrain-infer."""
    run_command(InferConfig, _infer, argv)
