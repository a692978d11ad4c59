"""Options of the commands that register and summarise trainings: otrain-promote and otrain-summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator

from otrain.io import outputs as formats
from otrain.io.outputs import Output, is_same_file
from otrain.options.base import (
    CommandConfig,
    ExistingFile,
    ExistingFolder,
    Probability,
    _check_outputs,
    _model_name,
    option,
)

__all__ = [
    "PromoteConfig",
    "SummaryConfig",
]


def _non_negative_float(value: float) -> float:
    if value < 0:
        raise ValueError(f"must be zero or positive, got {value}")
    return value


class PromoteConfig(CommandConfig):
    """Register a trained model in the MLflow registry and promote it if it is not worse.

    The new version gets its test metrics and the record of its split as version tags. It
    takes the alias 'champion' only when its --metric is at least the current champion's minus
    --tolerance (or when there is no champion yet), both scored on test rows that neither
    model trained on; otherwise, or when no such rows can be found, the alias stays and the
    reason is printed. The default metric, ROC AUC, needs no threshold; mcc, f1 and accuracy
    judge each model at its own operating point, the threshold of its model card (chosen at
    training, for example with --target-fnr), unless --threshold names one for both. The gate
    holds a lock, so two promotions at once compare in turn. The decision, with the metric and
    the threshold each model was judged at, is written to --report (JSON, for dvc metrics).
    """

    command: ClassVar[str] = "otrain-promote"

    model_dir: ExistingFolder = option(..., "Training folder (<model-path>/CNN_training/<name>/) with mlflow_run.json.")
    registered_name: Annotated[str, AfterValidator(_model_name)] = option(
        "otrain-cnn", "Name of the model in the MLflow registry."
    )
    metric: Literal["roc_auc", "average_precision", "mcc", "f1", "accuracy"] = option(
        "roc_auc",
        "Metric compared on the test cube. roc_auc and average_precision need no threshold; mcc, f1 and accuracy "
        "are computed for each model at its own card's threshold (or --threshold).",
    )
    tolerance: Annotated[float, AfterValidator(_non_negative_float)] = option(
        0.005, "The new model may be worse than the champion by at most this much."
    )
    threshold: Probability | None = option(
        None,
        "Judge both models at this threshold (real if P(real) > threshold) instead of each at its own. Default: "
        "each model's card threshold, 0.5 for a model whose card records none (the report says so). Only mcc, f1 "
        "and accuracy use a threshold.",
    )
    alias: Annotated[str, AfterValidator(_model_name)] = option("champion", "Alias given to the promoted version.")
    report: Path | None = option(None, "Write the decision to this JSON file.")
    overwrite: bool = option(False, "Replace an existing --report file that otrain-promote did not write.")

    def check_disk(self) -> None:
        """Check that --report is the command's to replace and is none of the training's files."""
        if self.report is not None:
            inputs = sorted(path for path in self.model_dir.rglob("*") if path.is_file())
            _check_outputs(self, "--report", [Output(self.report, "json", formats.PROMOTION_KEYS)], inputs)

    def output_folders(self) -> list[Path]:
        """Return the report's folder."""
        return [self.report.parent] if self.report is not None else []


class SummaryConfig(CommandConfig):
    """Summarise a pipeline run: the test metrics, the promotion gate's decision, the champion.

    Reads the reports the pipeline (dvc.yaml) wrote: the diagnostics of the test set and the
    promotion decision. Prints a short text (what make demo ends with), or appends the same as
    Markdown tables to --markdown (the retraining workflow passes $GITHUB_STEP_SUMMARY).
    """

    command: ClassVar[str] = "otrain-summary"

    diagnostics: ExistingFile = option(
        Path("reports/diagnostics/diagnostics.json"), "The test set's diagnostics.json (otrain-diagnostics)."
    )
    promotion: ExistingFile = option(Path("reports/promotion.json"), "The promotion report (otrain-promote --report).")
    markdown: Path | None = option(None, "Append a Markdown report to this file instead of printing.")
    title: str = option("otrain retraining", "Heading of the Markdown report.")

    def check_disk(self) -> None:
        """Check that --markdown is a file and none of the reports it summarises."""
        if self.markdown is not None:
            if self.markdown.is_dir():
                raise ValueError(f"--markdown: {str(self.markdown)!r} is a folder")
            if is_same_file(self.markdown, self.diagnostics) or is_same_file(self.markdown, self.promotion):
                raise ValueError(f"--markdown: {str(self.markdown)!r} is one of the reports it summarises")
