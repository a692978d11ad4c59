"""otrain-export: write the ONNX twin of a trained model (and optionally an int8 model)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from otrain.cli.app import run_command
from otrain.cli.tf_setup import prepare_tensorflow
from otrain.options import ExportConfig

__all__ = ["main"]


def _export(config: ExportConfig) -> None:
    prepare_tensorflow()
    from otrain.score.export import export

    report = export(config)
    parity = report.record["parity"]
    print(
        f"written: {report.twin} (P(real) within {parity['max_abs_diff_p_real']:.2g} of the Keras model's "
        f"on {parity['checked_on']})"
    )
    if report.int8 is not None and report.int8_record is not None:
        shift = report.int8_record["evaluation"]
        print(
            f"written: {report.int8} (ROC AUC {shift['roc_auc_shift']:+.4f}, {shift['decisions_changed']:.2%} of "
            f"decisions changed; {'the default' if report.int8_record['default'] else 'not the default'})"
        )


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run otrain-export."""
    run_command(ExportConfig, _export, argv)


if __name__ == "__main__":
    main()
