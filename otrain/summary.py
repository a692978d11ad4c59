"""Summarise a pipeline run: test metrics, the promotion gate's decision, the champion.

``python -m otrain.summary`` prints the short text ``make demo`` ends with;
``python -m otrain.summary --markdown FILE`` appends the same as Markdown tables to FILE (the
retraining workflow passes ``$GITHUB_STEP_SUMMARY``). Run it in a folder where the pipeline
(dvc.yaml) has run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "markdown_summary", "text_summary"]

_METRICS = ("accuracy", "precision", "recall", "f1", "mcc", "roc_auc", "average_precision", "best_threshold")
DIAGNOSTICS = Path("reports/diagnostics/diagnostics.json")
PROMOTION = Path("reports/promotion.json")


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _verdict(decision: dict[str, Any]) -> str:
    verdict = "is now" if decision["promoted"] else "is not"
    return f"{decision['registered_name']} version {decision['version']} {verdict} the champion"


def text_summary(metrics: dict[str, Any], decision: dict[str, Any]) -> str:
    """Return the plain-text summary of the test metrics and the promotion."""
    lines = [f"\nTest set ({metrics['n']} candidates, real if P(real) > {metrics['threshold']}):"]
    lines += [f"  {key:20} {_number(metrics.get(key))}" for key in _METRICS]
    lines += [f"\nRegistered model: {_verdict(decision)}", f"  ({decision['reason']})"]
    return "\n".join(lines)


def markdown_summary(metrics: dict[str, Any], decision: dict[str, Any], title: str = "otrain retraining") -> str:
    """Return a Markdown report: the metrics table and the comparison with the champion.

    Parameters
    ----------
    metrics : dict
        The contents of ``diagnostics.json`` (test-set metrics).
    decision : dict
        The contents of ``promotion.json`` (the promotion gate's decision).
    title : str
        The report's heading.

    Returns
    -------
    str
        Markdown, ending with a newline.
    """
    lines = [
        f"## {title}",
        "",
        f"Test set: {metrics['n']} candidates, real if P(real) > {metrics['threshold']}.",
        "",
        "| metric | value |",
        "| --- | --- |",
        *(f"| {key} | {_number(metrics.get(key))} |" for key in _METRICS),
        "",
        f"### Promotion gate ({decision['metric']}, both models on this test set)",
        "",
        "| model | version | " + decision["metric"] + " |",
        "| --- | --- | --- |",
        f"| new | {decision['version']} | {_number(decision['new_value'])} |",
    ]
    if decision.get("champion_version") is not None:
        lines.append(
            f"| champion before | {decision['champion_version']} | {_number(decision.get('champion_value'))} |"
        )
    else:
        lines.append("| champion before | none | n/a |")
    lines += ["", f"**{_verdict(decision)}**: {decision['reason']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print (or append as Markdown) the summary; return 1 when the pipeline's reports are missing."""
    parser = argparse.ArgumentParser(prog="python -m otrain.summary", description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", type=Path, help="append a Markdown report to this file instead of printing")
    parser.add_argument("--title", default="otrain retraining", help="heading of the Markdown report")
    options = parser.parse_args(argv)
    if not DIAGNOSTICS.is_file() or not PROMOTION.is_file():
        print(f"no pipeline reports here ({DIAGNOSTICS}, {PROMOTION}): run `dvc repro` first", file=sys.stderr)
        return 1
    metrics = json.loads(DIAGNOSTICS.read_text())
    decision = json.loads(PROMOTION.read_text())
    if options.markdown is None:
        print(text_summary(metrics, decision))
        return 0
    with open(options.markdown, "a") as stream:
        stream.write(markdown_summary(metrics, decision, options.title))
    print(f"summary appended to {options.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
