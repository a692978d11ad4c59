"""otrain-export: the ONNX twin of a Keras model, checked against it, and optionally an int8 model.

See :mod:`otrain.score.twin` for the twin itself, :mod:`otrain.score.backends` for how the scoring
commands choose it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from otrain.data.datacube import Datacube
from otrain.io.card import card_threshold, update_card
from otrain.io.layout import card_file
from otrain.options import ExportConfig
from otrain.score.backends import file_sha256
from otrain.score.scoring import fit_to_model
from otrain.score.twin import export_onnx

__all__ = ["RANDOM_CUTOUTS", "ExportReport", "export"]

logger = logging.getLogger("otrain")

#: Seeded random cutouts of the parity check of a model without a test set.
RANDOM_CUTOUTS = 256


@dataclass
class ExportReport:
    """What one export wrote."""

    twin: Path
    record: dict[str, Any]
    int8: Path | None = None
    int8_record: dict[str, Any] | None = None


def _random_cutouts(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Gaussian noise cutouts, each at its own scale (1 to 1000): raw pixels span orders of magnitude."""
    rng = np.random.default_rng(seed)
    scales = 10.0 ** rng.uniform(0.0, 3.0, size=(RANDOM_CUTOUTS, 1, 1, 1))
    return (rng.normal(size=(RANDOM_CUTOUTS, *shape)) * scales).astype(np.float32)


def _check_cube(config: ExportConfig, model: Any) -> tuple[Datacube | None, np.ndarray, str]:
    """Return the cube of the checks (None without one), its pixels fitted to the model, and its description."""
    path = config.check_cube
    if path.is_file():
        cube = Datacube.load(path)
        pixels = fit_to_model(cube.cube, model, f"{path} (model {config.model.name})")
        return cube, pixels, f"{path.name} ({len(pixels)} cutouts)"
    from otrain.score.backends import cutout_shape

    pixels = _random_cutouts(cutout_shape(model), config.seed)
    return None, pixels, f"{len(pixels)} seeded random cutouts (no test set)"


def export(config: ExportConfig) -> ExportReport:
    """Write the ONNX twin of ``config.model`` (and, with ``--quantize int8``, its int8 model).

    Parameters
    ----------
    config : ExportConfig
        Validated options of otrain-export.

    Returns
    -------
    ExportReport
        The files written and the card's records.

    Raises
    ------
    DataError
        When the model, a cube or the card's threshold cannot be read, the model cannot be
        converted, or the twin disagrees with the model by more than float32 arithmetic allows
        (:func:`otrain.score.twin.parity_allowance`); the twin is not written then.
    """
    from otrain.nets.model import load_model

    source_sha256 = file_sha256(config.model)  # before loading: the twin is of these very bytes
    model = load_model(config.model)
    cube, pixels, described = _check_cube(config, model)
    quantizing = None
    if config.quantize == "int8":  # every input of the int8 model read before anything is written
        from otrain.score.quantize import prepare_int8, quantize_int8

        quantizing = prepare_int8(config, model, cube)
    threshold = card_threshold(config.model)
    record = export_onnx(
        model,
        config.model,
        pixels,
        checked_on=described,
        target=config.twin,
        tolerance=config.tolerance,
        source_sha256=source_sha256,
        threshold=threshold,
    )
    update_card(config.model, onnx=record)
    report = ExportReport(twin=config.twin, record=record)
    if quantizing is not None:
        report.int8_record = quantize_int8(config, quantizing, pixels)
        report.int8 = config.int8_twin
        update_card(config.model, onnx_int8=report.int8_record)
    if config.tracking:
        from otrain.track.tracking import log_into_training_run

        written = [path for path in (report.twin, report.int8, card_file(config.model)) if path is not None]
        log_into_training_run(config.model.parent, artifacts=written, artifact_path="onnx")
    return report
