"""otrain-infer: score a folder of candidate cutouts, streaming, and write infer_results.dat.

Worker processes read and crop the next files while this process scores the current batch,
so reading is hidden behind the network and memory does not grow with the number of files.
The table is written row by row into a temporary file and renamed into place at the end.

Only the worker-side reading lives at module level; TensorFlow is imported when scoring
starts, so the workers stay light.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from otrain.atomic import atomic_path
from otrain.config import MAX_LISTED_BAD_FILES, InferConfig
from otrain.cutouts import CutoutMeta, list_cutouts, prepare_pixels, read_header, read_pixels
from otrain.errors import DataError, log_listed
from otrain.outputs import INFER_COLUMNS
from otrain.parallel import map_chunks
from otrain.scoring import predict

__all__ = ["INFER_COLUMNS", "InferenceReport", "infer", "printable_path", "reweight"]

logger = logging.getLogger("otrain")

#: Headers read, at most, to find one cutout whose size is compared with the model's input.
_HEADER_PROBES = 20
_EDGE = "edge"


@dataclass
class InferenceReport:
    """What one scoring run did."""

    output: Path
    n_files: int = 0
    n_scored: int = 0
    n_real: int = 0
    n_edge: int = 0
    seconds: float = 0.0  #: reading and scoring, without loading the model
    bad_files: list[tuple[Path, str]] = field(default_factory=list)


def reweight(probabilities: np.ndarray, ratio: float | None) -> np.ndarray:
    """Prior re-weighting of P(real): p' = p / (p + (1 - p) * ratio); None leaves p unchanged."""
    if ratio is None:
        return probabilities
    return probabilities / (probabilities + (1.0 - probabilities) * ratio)


def _read_for_scoring(
    jobs: Sequence[tuple[Path, tuple[int, int, int], tuple[str, ...] | None]],
) -> tuple[np.ndarray, list[CutoutMeta], list[str | None]]:
    """Worker task: read the planes of a chunk of files and crop them to the model's input shape.

    Returns the pixels of the usable files (stacked, in order), their metadata, and for every
    file None (scored), ``"edge"`` (skipped) or the message of the error that made it unusable.
    """
    height, width, channels = jobs[0][1]
    pixels = np.empty((len(jobs), height, width, channels), dtype=np.float32)
    metas: list[CutoutMeta] = []
    statuses: list[str | None] = []
    for path, _, planes in jobs:
        try:
            meta, location = read_header(path, planes)
            if meta.edge is True:
                statuses.append(_EDGE)
                continue
            plane, _ = prepare_pixels(read_pixels(path, location), height, path)
            if plane.shape != (height, width, channels):
                raise DataError(
                    f"{path}: cutout has shape {plane.shape[0]}x{plane.shape[1]}x{plane.shape[2]} after cropping, "
                    f"the model takes {height}x{width}x{channels}"
                )
            pixels[len(metas)] = plane
            metas.append(meta)
            statuses.append(None)
        except Exception as error:  # a worker must report, never die, on a strange file
            statuses.append(str(error) if isinstance(error, DataError) else f"{path}: {type(error).__name__}: {error}")
    return pixels[: len(metas)], metas, statuses


def _text(value: Any) -> str:
    """One table cell in astropy's basic/commented_header syntax."""
    if value is None:
        return '""'
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    text = str(value)
    if text == "" or any(char.isspace() for char in text) or '"' in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def printable_path(path: Path) -> str:
    r"""Spell a file name as valid UTF-8 text: bytes that are not UTF-8 are written as ``\xNN``.

    File names on Linux are bytes; a name that is not valid UTF-8 (an old Latin-1 disk, say)
    cannot be written into a UTF-8 table as it is.

    Parameters
    ----------
    path : Path
        A file name as the operating system gave it.

    Returns
    -------
    str
        The name, with every byte that is not UTF-8 written as a backslash escape.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _write_rows(
    stream: TextIO, paths: Sequence[Path], metas: list[CutoutMeta], p_real: np.ndarray, threshold: float
) -> None:
    for path, meta, probability in zip(paths, metas, p_real, strict=True):
        cells = (
            printable_path(path),
            _number(meta.ra),
            _number(meta.dec),
            meta.file if meta.file is not None else "",
            _number(meta.xpos),
            _number(meta.ypos),
            _number(meta.mag),
            _number(meta.magerr),
            _number(meta.fwhm),
            _number(meta.fwhmpsf),
            meta.candid if meta.candid is not None else "",
            float(1.0 - probability),
            float(probability),
            int(probability > threshold),
        )
        stream.write(" ".join(_text(cell) for cell in cells) + "\n")


def _check_model_fits_cutouts(
    model_file: Path, shape: tuple[int, int, int], files: Sequence[Path], planes: tuple[str, ...] | None
) -> None:
    """Compare the model's input with the first readable cutout's size, before scoring starts.

    A model for other cutouts (another size, other planes) is one mistake, not one problem per
    file: say so once, naming the model and both shapes.
    """
    height, width, channels = shape
    if planes is not None and len(planes) != channels:
        raise DataError(
            f"{model_file}: the model takes {channels} plane(s), --planes names {len(planes)} ({' '.join(planes)})"
        )
    for path in files[:_HEADER_PROBES]:
        try:
            meta, location = read_header(path, planes)
        except Exception:  # a bad file is reported when scoring; look at the next one
            continue
        if meta.edge is True:
            continue
        cutout_height, cutout_width, cutout_channels = location.height_width_channels
        if cutout_channels != channels or cutout_height < height or cutout_width < width:
            raise DataError(
                f"{model_file}: the model takes {height}x{width}x{channels} cutouts, but {path.name} (and probably "
                f"the others in its folder) is {cutout_height}x{cutout_width}x{cutout_channels}"
            )
        return


def infer(config: InferConfig) -> InferenceReport:
    """Score every cutout of ``config.cutouts`` and write the results table.

    Parameters
    ----------
    config : InferConfig
        Validated options of otrain-infer.

    Returns
    -------
    InferenceReport
        Counts (scored, real, EDGE, bad) and the output path.

    Raises
    ------
    DataError
        When the model cannot be read, the folder holds no cutout file, or no file could be
        scored; nothing is written then.
    """
    from otrain.model import card_planes, input_shape_of, load_model

    model = load_model(config.model)
    shape = input_shape_of(model)
    files = list_cutouts(config.cutouts, recursive=config.recursive)
    if not files:
        raise DataError(f"{config.cutouts}: no cutout files (*.fits, *.fit, *.fits.gz)")
    planes = config.planes if config.planes is not None else card_planes(config.model)
    if config.planes is None and planes == ("DIFF",):
        planes = None  # the difference alone, read as O'TRAIN did: a gmadet cutout's whole image
    _check_model_fits_cutouts(config.model, shape, files, planes)
    report = InferenceReport(output=config.output_file, n_files=len(files))
    started = time.perf_counter()
    jobs = [(path, shape, planes) for path in files]
    with atomic_path(config.output_file) as temporary, open(temporary, "w", encoding="utf-8") as stream:
        stream.write("# " + " ".join(INFER_COLUMNS) + "\n")
        for chunk, (pixels, metas, statuses) in map_chunks(
            _read_for_scoring,
            jobs,
            workers=config.workers,
            description="scoring cutouts",
            preload=["otrain.inference"],
            chunk_size=config.batch_size,
        ):
            for (path, _, _), status in zip(chunk, statuses, strict=True):
                if status == _EDGE:
                    report.n_edge += 1
                elif status is not None:
                    report.bad_files.append((path, status))
            if not metas:
                continue
            p_real = reweight(predict(model, pixels, config.batch_size), config.prob_ratio)
            scored = [path for (path, _, _), status in zip(chunk, statuses, strict=True) if status is None]
            _write_rows(stream, scored, metas, p_real, config.threshold)
            report.n_scored += len(metas)
            report.n_real += int(np.count_nonzero(p_real > config.threshold))
        report.seconds = time.perf_counter() - started
        skipped = [f"skipped: {message}" for _, message in report.bad_files]
        log_listed(skipped, logging.WARNING, "unreadable cutouts", MAX_LISTED_BAD_FILES)
        if report.n_scored == 0 and report.bad_files:
            raise DataError(
                f"{config.cutouts}: no cutout could be scored ({len(report.bad_files)} unreadable, "
                f"{report.n_edge} flagged EDGE); the first problem: {report.bad_files[0][1]}"
            )
    if not config.tracking:
        return report
    from otrain.tracking import log_into_training_run

    counts = {"scored": report.n_scored, "real": report.n_real, "edge": report.n_edge, "bad": len(report.bad_files)}
    log_into_training_run(
        config.model.parent, metrics=counts, artifacts=[config.output_file], artifact_path="infer", prefix="infer_"
    )
    return report
