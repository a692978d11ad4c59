"""How sure an ensemble is: the spread of its members' P(real) over a night, summarised and logged.

An ensemble (:mod:`otrain.nets.ensemble`) gives, beside P(real), the standard deviation of its
members' P(real) for each candidate (:data:`otrain.score.scoring.SPREAD_COLUMN`). otrain-infer
writes it as the ``spread`` column of its table, prints its summary, and logs its distribution
into the model's training run (:func:`spread_record`): the summary as metrics, a histogram as
a figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SPREAD_FIGURE", "SpreadSummary", "spread_record", "spread_summary"]

#: The histogram of the spread that otrain-infer logs beside its table.
SPREAD_FIGURE = "spread.png"


@dataclass(frozen=True)
class SpreadSummary:
    """How an ensemble's spread is distributed over the scored candidates."""

    mean: float
    median: float
    p90: float  #: the 90th percentile
    max: float

    def metrics(self) -> dict[str, float]:
        """Return the summary as metrics: ``spread_mean``, ``spread_median``, ``spread_p90``, ``spread_max``."""
        return {f"spread_{name}": value for name, value in vars(self).items()}


def spread_summary(spread: np.ndarray) -> SpreadSummary | None:
    """Summarise an ensemble's spread over the scored candidates; None when none was scored.

    Parameters
    ----------
    spread : numpy.ndarray
        The spread of each scored candidate.

    Returns
    -------
    SpreadSummary or None
        Mean, median, 90th percentile and largest spread.
    """
    if len(spread) == 0:
        return None
    median, p90 = np.percentile(spread, [50, 90])
    return SpreadSummary(mean=float(np.mean(spread)), median=float(median), p90=float(p90), max=float(np.max(spread)))


def spread_record(spread: np.ndarray, folder: Path) -> tuple[dict[str, float], list[Path]]:
    """Return what to log of an ensemble's spread: its summary as metrics, and its histogram drawn into ``folder``.

    Parameters
    ----------
    spread : numpy.ndarray
        The spread of each scored candidate.
    folder : Path
        A scratch folder that receives :data:`SPREAD_FIGURE`.

    Returns
    -------
    dict
        :meth:`SpreadSummary.metrics`; empty when nothing was scored.
    list of Path
        The figure; empty when nothing was scored.
    """
    summary = spread_summary(spread)
    if summary is None:
        return {}, []
    from otrain.metrics.plots import plot_spread

    return summary.metrics(), [plot_spread(spread, folder / SPREAD_FIGURE)]
