"""otrain-summary: the test metrics and the promotion decision of a pipeline run, as text or Markdown."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from otrain.cli.app import run_command
from otrain.errors import DataError
from otrain.io.jsonfile import read_json
from otrain.options import SummaryConfig

__all__ = ["main"]


def _read_report(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    report = read_json(path, "not a readable JSON report")
    missing = [key for key in keys if not isinstance(report, dict) or key not in report]
    if missing:
        raise DataError(f"{path}: not an otrain report (no {missing[0]!r}); run `dvc repro` first")
    return report


def _summary(config: SummaryConfig) -> None:
    from otrain.track.summary import markdown_summary, text_summary

    metrics = _read_report(config.diagnostics, ("n", "threshold"))
    decision = _read_report(config.promotion, ("registered_name", "version", "promoted", "reason", "metric"))
    if config.markdown is None:
        print(text_summary(metrics, decision))
        return
    with open(config.markdown, "a") as stream:
        stream.write(markdown_summary(metrics, decision, config.title))
    print(f"summary appended to {config.markdown}")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run otrain-summary."""
    run_command(SummaryConfig, _summary, argv)


if __name__ == "__main__":
    main()
