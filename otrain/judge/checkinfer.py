"""otrain-checkinfer: how the classifier treats sources injected into the images.

gmadet's checksim writes ``crossmatch.dat``: one row per injected source, with the id of the
closest detected candidate (``closest_candID``, ``None`` when nothing was detected). Matching
it with ``infer_results.dat`` on that id, compared as text whatever the columns' types (the
original compared a text column with numbers and matched nothing), tells how many injected
sources were detected, scored, and recovered above each probability.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from otrain.errors import DataError, first_line
from otrain.io import outputs as formats
from otrain.io.ids import candidate_key
from otrain.options import CHECKINFER_FIGURES as FIGURES
from otrain.options import CHECKINFER_MATCHES, CHECKINFER_SUMMARY, CheckInferConfig

__all__ = ["FIGURES", "CheckInferReport", "read_table", "run_checkinfer"]

logger = logging.getLogger("otrain")
_PROBABILITY_EDGES = np.linspace(0, 1, 41)
_RATIO_EDGES = np.linspace(0, 20, 61)


def read_table(path: Path, required: tuple[str, ...], text_columns: tuple[str, ...] = ()) -> Any:
    """Read a commented_header table (infer_results.dat, crossmatch.dat) that must have ``required`` columns.

    Parameters
    ----------
    path : Path
        The table.
    required : tuple of str
        Columns it must have.
    text_columns : tuple of str, optional
        Columns kept as the text written (candidate ids: ``00123`` is not 123).

    Returns
    -------
    astropy.table.Table
        The table.

    Raises
    ------
    DataError
        When the file cannot be read, is empty or malformed, or lacks a column; the message names it.
    """
    from astropy.io import ascii as astropy_ascii

    expected = f"'# {' '.join(required)} ...'"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a readable commented_header table (not UTF-8 text)") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read the table ({error.strerror or error})") from None
    if not text.strip():
        raise DataError(f"{path}: the table is empty (expected a header line like {expected})")
    try:
        # Given the text, not the path: astropy leaves the file open when a table is malformed.
        table = astropy_ascii.read(
            text, format="commented_header", guess=False, converters=dict.fromkeys(text_columns, str)
        )
    except Exception as error:  # astropy raises many types, with many lines, on a malformed table
        first = first_line(error)
        detail = f"{first[:160]}; " if " " in first else ""
        raise DataError(
            f"{path}: not a readable commented_header table ({detail}expected a header line like {expected})"
        ) from None
    missing = [name for name in required if name not in table.colnames]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    return table


def _bands(values: np.ndarray, limits: tuple[float, ...], label: str) -> list[tuple[str, np.ndarray]]:
    """Masks for (l0, l1), (l1, l2), ... and > l_last, half-open so nothing is counted twice."""
    bands = []
    for low, high in itertools.pairwise(limits):
        bands.append((f"{low:g} <= {label} < {high:g}", (values >= low) & (values < high)))
    bands.append((f"{label} >= {limits[-1]:g}", values >= limits[-1]))
    return bands


@dataclass
class CheckInferReport:
    """Counts of injected, detected, scored and recovered sources."""

    n_candidates: int
    n_injected: int
    n_detected: int
    n_scored: int
    recovered: dict[float, int] = field(default_factory=dict)
    outputs: list[Path] = field(default_factory=list)


def run_checkinfer(config: CheckInferConfig) -> CheckInferReport:
    """Match injected sources with scored candidates and draw the six original figures.

    Also writes ``checkinfer_matches.csv`` (one row per scored injected source) and
    ``checkinfer_summary.json`` (counts and recovered fractions) in ``<plots>/CheckInfer/``.
    """
    from otrain.metrics import plots
    from otrain.metrics.evaluation import write_csv, write_json

    crossmatch = read_table(config.crossmatch_file, ("closest_candID", "mag"), text_columns=("closest_candID",))
    infer = read_table(config.infer_file, ("cand_ID", "label1", "FWHM", "FWHMPSF"), text_columns=("cand_ID",))
    if len(crossmatch) == 0:
        raise DataError(f"{config.crossmatch}: crossmatch table has no injected source")
    if len(infer) == 0:
        raise DataError(f"{config.infer}: inference table has no candidate")

    row_of: dict[str, int] = {}
    for index, candid in enumerate(infer["cand_ID"]):
        key = candidate_key(candid)
        if key in row_of:
            logger.warning("cand_ID %s appears more than once in the inference table; its first row is used", key)
            continue
        row_of[key] = index
    closest = [candidate_key(value) for value in crossmatch["closest_candID"]]
    detected = [i for i, value in enumerate(closest) if value]
    matched = [(i, row_of[closest[i]]) for i in detected if closest[i] in row_of]
    if detected and not matched:
        logger.warning(
            "none of the %d detected injected sources is in the inference table: are the two tables from the "
            "same night?",
            len(detected),
        )
    probabilities = np.asarray(infer["label1"], dtype=float)
    ratio_all = np.asarray(infer["FWHM"], dtype=float) / np.asarray(infer["FWHMPSF"], dtype=float)
    sim_rows = np.array([row for _, row in matched], dtype=int)
    sim_mag = np.array([float(crossmatch["mag"][i]) for i, _ in matched])
    sim_p = probabilities[sim_rows] if len(sim_rows) else np.array([])
    sim_ratio = ratio_all[sim_rows] if len(sim_rows) else np.array([])
    is_sim = np.zeros(len(infer), dtype=bool)
    is_sim[sim_rows] = True

    out = config.output_folder
    out.mkdir(parents=True, exist_ok=True)
    report = CheckInferReport(
        n_candidates=len(infer), n_injected=len(crossmatch), n_detected=len(detected), n_scored=len(matched)
    )
    for limit in config.cnn_problim:
        report.recovered[limit] = int(np.count_nonzero(sim_p > limit))

    mag_bands = [(label, sim_p[mask]) for label, mask in _bands(sim_mag, config.maglim, "mag")]
    edges = _PROBABILITY_EDGES
    lines = (config.fwhm_ratio_lower, config.fwhm_ratio_upper)
    written = [
        plots.plot_histograms(mag_bands, edges, "CNN P(real) of injected sources", "P(real)", out / FIGURES[0]),
        plots.plot_histograms(
            [("all candidates", probabilities), *mag_bands], edges, "CNN P(real)", "P(real)", out / FIGURES[1], log=True
        ),
    ]
    three = [
        ("all candidates", probabilities),
        ("not injected", probabilities[~is_sim]),
        (f"injected, mag < {config.maglim[-1]:g}", sim_p[sim_mag < config.maglim[-1]]),
    ]
    written.append(plots.plot_histograms(three, edges, "CNN P(real)", "P(real)", out / FIGURES[2], log=True))
    written.append(
        plots.plot_histograms(three, edges, "CNN P(real), normalised", "P(real)", out / FIGURES[3], normalise=True)
    )
    ratio_bands = [(label, sim_ratio[mask]) for label, mask in _bands(sim_p, config.cnn_problim, "P(real)")]
    written.append(
        plots.plot_histograms(
            ratio_bands,
            _RATIO_EDGES,
            "FWHM / FWHM_PSF of injected sources",
            "FWHM / FWHM_PSF",
            out / FIGURES[4],
            lines=lines,
        )
    )
    written.append(
        plots.plot_histograms(
            [("not injected", ratio_all[~is_sim]), ("injected", sim_ratio)],
            _RATIO_EDGES,
            "FWHM / FWHM_PSF: other candidates and injected sources",
            "FWHM / FWHM_PSF",
            out / FIGURES[5],
            lines=lines,
        )
    )
    matches = [
        {
            "idx": int(crossmatch["idx"][i]) if "idx" in crossmatch.colnames else i,
            "cand_ID": closest[i],
            "mag_injected": float(crossmatch["mag"][i]),
            "label1": float(probabilities[row]),
            "fwhm_ratio": float(ratio_all[row]),
        }
        for i, row in matched
    ]
    written.append(write_csv(out / CHECKINFER_MATCHES, matches, formats.MATCHES_COLUMNS))
    summary: dict[str, Any] = {
        "n_candidates": report.n_candidates,
        "n_injected": report.n_injected,
        "n_detected": report.n_detected,
        "n_scored": report.n_scored,
    }
    for limit, count in report.recovered.items():
        summary[f"recovered_above_{limit:g}"] = count
        summary[f"recovered_fraction_above_{limit:g}"] = count / report.n_scored if report.n_scored else 0.0
    written.append(write_json(out / CHECKINFER_SUMMARY, summary))
    report.outputs = written
    if config.mlflow_run is not None and config.tracking:
        from otrain.track.tracking import log_into_training_run

        folder = config.mlflow_run.parent if config.mlflow_run.suffix == ".json" else config.mlflow_run
        log_into_training_run(
            folder, metrics=summary, artifacts=written, artifact_path="checkinfer", prefix="checkinfer_"
        )
    return report
