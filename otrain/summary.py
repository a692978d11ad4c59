"""Print the short summary ``make demo`` ends with: test metrics, registered model, MLflow UI.

Run as ``python -m otrain.summary`` in a folder where the pipeline (dvc.yaml) has run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["main"]

_METRICS = ("accuracy", "precision", "recall", "f1", "mcc", "roc_auc", "average_precision", "best_threshold")


def main() -> int:
    """Print the summary; return 1 when the pipeline's reports are missing."""
    diagnostics, promotion = Path("reports/diagnostics/diagnostics.json"), Path("reports/promotion.json")
    if not diagnostics.is_file() or not promotion.is_file():
        print("no pipeline reports here: run `dvc repro` first", file=sys.stderr)
        return 1
    metrics = json.loads(diagnostics.read_text())
    decision = json.loads(promotion.read_text())
    print(f"\nTest set ({metrics['n']} candidates, real if P(real) > {metrics['threshold']}):")
    for key in _METRICS:
        value = metrics.get(key)
        print(f"  {key:20} {'n/a' if value is None else f'{value:.4f}'}")
    verdict = "is now" if decision["promoted"] else "is not"
    print(f"\nRegistered model: {decision['registered_name']} version {decision['version']} {verdict} the champion")
    print(f"  ({decision['reason']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
