"""Summarise a pipeline run: test metrics, the promotion gate's decision, the champion.

The text and Markdown of ``otrain-summary`` (:mod:`otrain.cli.summary`), from the pipeline's
``diagnostics.json`` and ``promotion.json``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["markdown_summary", "text_summary"]

_METRICS = ("accuracy", "precision", "recall", "f1", "mcc", "roc_auc", "average_precision", "best_threshold")


def _metric_text(value: Any) -> str:
    """Return a metric as the summary shows it: four decimals, ``n/a`` when missing."""
    return "n/a" if value is None else f"{value:.4f}"


def _verdict(decision: dict[str, Any]) -> str:
    verdict = "is now" if decision["promoted"] else "is not"
    return f"{decision['registered_name']} version {decision['version']} {verdict} the champion"


def text_summary(metrics: dict[str, Any], decision: dict[str, Any]) -> str:
    """Return the plain-text summary of the test metrics and the promotion."""
    lines = [f"\nTest set ({metrics['n']} candidates, real if P(real) > {metrics['threshold']}):"]
    lines += [f"  {key:20} {_metric_text(metrics.get(key))}" for key in _METRICS]
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
        *(f"| {key} | {_metric_text(metrics.get(key))} |" for key in _METRICS),
        "",
        f"### Promotion gate ({decision['metric']}, both models on this test set)",
        "",
    ]
    # A thresholded metric: each model was judged at its own threshold, shown beside its value.
    thresholded = "new_threshold" in decision
    champion = decision.get("champion_version")
    rows = [
        ("new", decision["version"], decision["new_value"], decision.get("new_threshold")),
        ("champion before", champion or "none", decision.get("champion_value"), decision.get("champion_threshold")),
    ]
    lines += [
        "| model | version | " + decision["metric"] + (" | threshold |" if thresholded else " |"),
        "| --- | --- | ---" + (" | --- |" if thresholded else " |"),
        *(
            f"| {model} | {version} | {_metric_text(value)} |" + (f" {_metric_text(at)} |" if thresholded else "")
            for model, version, value, at in rows
        ),
    ]
    lines += ["", f"**{_verdict(decision)}**: {decision['reason']}.", ""]
    if decision.get("note") and champion is None:  # otherwise the reason says it
        lines[-1:-1] = [f"Note: {decision['note']}.", ""]
    return "\n".join(lines)
