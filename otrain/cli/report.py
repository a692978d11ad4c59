"""otrain-report: a vetting page for a scored night."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from otrain.cli.app import run_command
from otrain.cli.tf_setup import prepare_tensorflow
from otrain.options import ReportConfig

__all__ = ["main"]


def _report(config: ReportConfig) -> None:
    if config.grad_cam:
        prepare_tensorflow()
    from otrain.vet.report import PAGE, write_report

    summary = write_report(config)
    print(
        f"{summary.n_scored} scored candidates ({summary.n_skipped} files skipped by otrain-infer), "
        f"{summary.n_above} above the threshold {summary.threshold:g}, in {summary.seconds:.1f} s"
    )
    print(f"written: {(summary.output / PAGE).resolve().as_uri()}")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run otrain-report."""
    run_command(ReportConfig, _report, argv)
