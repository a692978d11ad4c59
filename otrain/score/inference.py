"""otrain-infer: score a folder of candidate cutouts or alert packets, streaming, and write infer_results.dat.

The network scores a chunk of cutouts in a thread while the next chunk is read (by this process,
or by worker processes on machines of eight cores or more, :func:`scoring_readers`), so reading
is hidden behind the network and memory does not grow with the number of files. Alert packets
(:mod:`otrain.score.sources`) follow the FITS files, decoded here as they stream in.
The table is written row by row into a temporary file and renamed into place at the end.
An ensemble's table has a 15th column, ``spread`` (:data:`INFER_ENSEMBLE_COLUMNS`): the
standard deviation of its members' P(real); a single model's table is as it always was.

Only the worker-side reading lives at module level; TensorFlow is imported when scoring
starts, so the workers stay light.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from otrain.data.cutouts import prepare_pixels
from otrain.errors import DataError, log_listed
from otrain.io.alerts import Alert, BadPacket, read_alert
from otrain.io.atomic import atomic_path
from otrain.io.cutoutmeta import CutoutMeta
from otrain.io.cutouts import read_header, read_pixels
from otrain.io.outputs import INFER_COLUMNS, INFER_ENSEMBLE_COLUMNS
from otrain.io.parallel import default_workers, map_chunks, map_stream
from otrain.options import MAX_LISTED_BAD_FILES, InferConfig
from otrain.score.backends import BackendChoice, cutout_shape, load_classifier, output_columns
from otrain.score.scoring import predict_scores
from otrain.score.sources import alert_chunks, check_model_fits, scoring_sources

__all__ = [
    "INFER_COLUMNS",
    "INFER_ENSEMBLE_COLUMNS",
    "InferenceReport",
    "failure_message",
    "fit_cutout",
    "infer",
    "meta_cells",
    "printable_path",
    "read_for_model",
    "resolve_planes",
    "reweight",
    "score_cells",
    "scoring_readers",
    "scoring_threads",
    "table_line",
]

logger = logging.getLogger("otrain")

_EDGE = "edge"
#: P(real) of a chunk, and an ensemble's spread (None for a single model).
Scores = tuple[np.ndarray, np.ndarray | None]
#: What a reader is given: a FITS file or a packet, the model's input shape, the planes to read.
Job = tuple[Path | Alert | BadPacket, tuple[int, int, int], tuple[str, ...] | None]
#: What it returns for a chunk: the pixels scored, their metadata, each job's status.
ReadChunk = tuple[np.ndarray, list[CutoutMeta], list[str | None]]


@dataclass
class InferenceReport:
    """What one scoring run did."""

    output: Path
    n_files: int = 0
    n_scored: int = 0
    n_real: int = 0
    n_edge: int = 0
    seconds: float = 0.0  #: reading and scoring, without loading the model
    backend: str = "keras"  #: what scored: keras, onnx or int8
    bad_files: list[tuple[Path, str]] = field(default_factory=list)
    #: An ensemble's spread of every scored cutout, in table order; None for a single model.
    spread: np.ndarray | None = None


def reweight(probabilities: np.ndarray, ratio: float | None) -> np.ndarray:
    """Prior re-weighting of P(real): p' = p / (p + (1 - p) * ratio); None leaves p unchanged."""
    if ratio is None:
        return probabilities
    return probabilities / (probabilities + (1.0 - probabilities) * ratio)


def fit_cutout(pixels: np.ndarray, shape: tuple[int, int, int], path: Path) -> np.ndarray:
    """Crop a cutout's planes to a model's input and replace their non-finite pixels, as otrain-infer does.

    Parameters
    ----------
    pixels : numpy.ndarray
        Channels-last (H, W, C) float32 planes, as :func:`otrain.io.cutouts.read_pixels` gives them.
    shape : tuple of int
        The model's (H, W, C) input.
    path : Path
        The file, for messages.

    Returns
    -------
    numpy.ndarray
        (H, W, C) float32 pixels of the model's input shape, all finite.

    Raises
    ------
    DataError
        When the cutout is smaller than the input, has another plane count, or no finite pixel.
    """
    height, width, channels = shape
    plane, _ = prepare_pixels(pixels, height, path)
    if plane.shape != (height, width, channels):
        raise DataError(
            f"{path}: cutout has shape {plane.shape[0]}x{plane.shape[1]}x{plane.shape[2]} after cropping, "
            f"the model takes {height}x{width}x{channels}"
        )
    return plane


def read_for_model(
    path: Path | Alert, shape: tuple[int, int, int], planes: tuple[str, ...] | None, content: bytes | None = None
) -> tuple[CutoutMeta, np.ndarray | None]:
    """Read one cutout or packet as otrain-infer scores it: metadata, then pixels fitted to the model (None for EDGE).

    Parameters
    ----------
    path : Path or Alert
        The file (only named in messages when ``content`` is given), or an alert packet.
    shape : tuple of int
        The model's (H, W, C) input.
    planes : tuple of str, optional
        The planes to read (see :func:`otrain.io.cutouts.read_header`).
    content : bytes, optional
        The file's bytes, already in memory (read by otrain-infer-spark's executors).

    Returns
    -------
    CutoutMeta
        The candidate's keywords.
    numpy.ndarray or None
        See :func:`fit_cutout`; None for a cutout flagged EDGE, which is not scored.

    Raises
    ------
    DataError
        When the file cannot be scored; the message names it.
    """
    if isinstance(path, Alert):
        meta, pixels = read_alert(path, planes)
        return meta, None if meta.edge is True else fit_cutout(pixels, shape, Path(path.name))
    meta, location = read_header(path, planes, content=content)
    if meta.edge is True:
        return meta, None
    return meta, fit_cutout(read_pixels(path, location, content=content), shape, path)


def failure_message(path: Path | str, error: Exception) -> str:
    """Describe why a file could not be scored: a :class:`DataError`'s message, else the error's type and text."""
    return str(error) if isinstance(error, DataError) else f"{path}: {type(error).__name__}: {error}"


def _read_for_scoring(
    jobs: Sequence[Job],
) -> ReadChunk:
    """Worker task: read the planes of a chunk of files or packets and crop them to the model's input shape.

    Returns the pixels of the usable ones (stacked, in order), their metadata, and for each
    None (scored), ``"edge"`` (skipped) or the message of the error that made it unusable.
    """
    height, width, channels = jobs[0][1]
    pixels = np.empty((len(jobs), height, width, channels), dtype=np.float32)
    metas: list[CutoutMeta] = []
    statuses: list[str | None] = []
    for path, shape, planes in jobs:
        if isinstance(path, BadPacket):
            statuses.append(path.reason)
            continue
        try:
            meta, plane = read_for_model(path, shape, planes)
            if plane is None:
                statuses.append(_EDGE)
                continue
            pixels[len(metas)] = plane
            metas.append(meta)
            statuses.append(None)
        except Exception as error:  # a worker must report, never die, on a strange file
            statuses.append(failure_message(path.name if isinstance(path, Alert) else path, error))
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


def printable_path(path: Path | str) -> str:
    r"""Spell a file name as valid UTF-8 text: bytes that are not UTF-8 are written as ``\xNN``.

    File names on Linux are bytes; a name that is not valid UTF-8 (an old Latin-1 disk, say)
    cannot be written into a UTF-8 table as it is.

    Parameters
    ----------
    path : Path or str
        A file name as the operating system gave it (a packet's name is one too).

    Returns
    -------
    str
        The name, with every byte that is not UTF-8 written as a backslash escape.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _nan_if_missing(value: float | None) -> float:
    """Return a header value for the results table: NaN for a missing one."""
    return math.nan if value is None else float(value)


def meta_cells(filename: str, meta: CutoutMeta) -> tuple[Any, ...]:
    """Return the first 11 cells of a row of the results table (filename ... cand_ID), NaN for a missing number.

    Parameters
    ----------
    filename : str
        The file as the table names it (see :func:`printable_path`).
    meta : CutoutMeta
        Its metadata.

    Returns
    -------
    tuple
        One value per column of :data:`INFER_COLUMNS` up to ``cand_ID``.
    """
    return (
        filename,
        _nan_if_missing(meta.ra),
        _nan_if_missing(meta.dec),
        meta.file if meta.file is not None else "",
        _nan_if_missing(meta.xpos),
        _nan_if_missing(meta.ypos),
        _nan_if_missing(meta.mag),
        _nan_if_missing(meta.magerr),
        _nan_if_missing(meta.fwhm),
        _nan_if_missing(meta.fwhmpsf),
        meta.candid if meta.candid is not None else "",
    )


def score_cells(probability: float, threshold: float) -> tuple[float, float, int]:
    """Return the last 3 cells of a row of the results table: label0, label1 (P(real)), real (label1 > threshold)."""
    return float(1.0 - probability), float(probability), int(probability > threshold)


def table_line(cells: Sequence[Any]) -> str:
    """One line of the results table (see :data:`INFER_COLUMNS`), newline included."""
    return " ".join(_text(cell) for cell in cells) + "\n"


def _write_rows(
    stream: TextIO,
    paths: Sequence[Path | str],
    metas: list[CutoutMeta],
    p_real: np.ndarray,
    threshold: float,
    spread: np.ndarray | None,
) -> None:
    for index, (path, meta, probability) in enumerate(zip(paths, metas, p_real, strict=True)):
        cells = meta_cells(printable_path(path), meta) + score_cells(probability, threshold)
        if spread is not None:
            cells += (float(spread[index]),)
        stream.write(table_line(cells))


def resolve_planes(asked: tuple[str, ...] | None, from_card: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """Return the planes to read: those asked for, else the model card's (DIFF alone read as O'TRAIN did).

    Parameters
    ----------
    asked : tuple of str, optional
        ``--planes``.
    from_card : tuple of str, optional
        The planes the model's card records (:func:`otrain.io.card.card_planes`).

    Returns
    -------
    tuple of str or None
        None for the difference alone read as O'TRAIN did: an STDPipe cutout's DIFF, a gmadet
        cutout's whole image.
    """
    if asked is not None:
        return asked
    return None if from_card == ("DIFF",) else from_card


def scoring_readers() -> int:
    """Return how many processes read cutouts for the network by default: one per four cores.

    Reading costs about 90 µs of CPU per cutout, a fourteenth of the O'TRAIN network's
    arithmetic at 64x64 and a fourth at 32x32, and the network uses every core. Below eight
    cores one reader, this process itself, reading while the network scores in threads, is
    faster than a pool, which competes with the network for the cores and adds pickling: on
    2 cores, 6 % more cutouts per second at 64x64 and 13 % at 32x32.
    """
    return max(1, default_workers() // 4)


def scoring_threads() -> tuple[int, int]:
    """Return how many chunks ONNX Runtime scores at once by default, and its threads for each.

    Several runs at once, each with its share of the cores, keep every core busy without the
    synchronisation of one run spread over all of them, which stalls whenever the reading
    takes a core for a while (on 2 cores, 2 runs of 1 thread score 1 to 6 % more cutouts per
    second than 1 run of 2, on pixels in memory). The number of runs is the largest divisor
    of the cores up to 4 (each holds a batch's activations), so that the threads match the
    cores: 2 runs of 1 thread on 2 cores, 3 of 2 on 6, 4 of 4 on 16, 1 of 7 on 7.
    """
    cores = default_workers()
    scorers = max(runs for runs in range(1, min(cores, 4) + 1) if cores % runs == 0)
    return scorers, cores // scorers


def infer(config: InferConfig, choice: BackendChoice) -> InferenceReport:
    """Score every cutout and alert packet of ``config.cutouts`` and write the results table.

    FITS cutouts come first, in name order, then the packets in the order they are read
    (:mod:`otrain.score.sources`); a packet's row is named by its ``name`` (:class:`otrain.io.alerts.Alert`).

    Parameters
    ----------
    config : InferConfig
        Validated options of otrain-infer.
    choice : BackendChoice
        What scores, chosen by the command from ``config.model`` and ``config.backend``
        (:func:`otrain.score.backends.choose_backend`).

    Returns
    -------
    InferenceReport
        Counts (scored, real, EDGE, bad), the output path, and an ensemble's spread.

    Raises
    ------
    DataError
        When the model cannot be read, ``--cutouts`` holds no cutout file nor packet, or none
        could be scored; nothing is written then.

    Notes
    -----
    An ensemble's table has the ``spread`` column (:data:`INFER_ENSEMBLE_COLUMNS`), as the model
    gives it: ``--prob-ratio`` re-weights P(real), not the spread. With tracking on, its
    distribution is logged beside the counts (:func:`otrain.score.spread.spread_record`).
    """
    from otrain.io.card import card_planes

    scorers, threads = scoring_threads()
    model = load_classifier(choice, threads=threads)
    if choice.backend == "keras":
        scorers = 1  # TensorFlow spreads one batch over the cores itself
    shape = cutout_shape(model)
    files, packets = scoring_sources(config.cutouts, recursive=config.recursive)
    if not files and not packets:
        raise DataError(f"{config.cutouts}: no cutout files (*.fits, *.fit, *.fits.gz) nor alert packets")
    planes = resolve_planes(config.planes, card_planes(config.model))
    check_model_fits(config.model, shape, files, packets, planes)
    report = InferenceReport(output=config.output_file, n_files=len(files), backend=choice.backend)
    ensemble = output_columns(model) > 2
    spreads: list[np.ndarray] = []
    started = time.perf_counter()

    def chunks() -> Iterator[tuple[Sequence[Job], ReadChunk]]:
        """Read the FITS files, then the packets, with the readers (this process, or worker processes)."""
        if files:
            yield from map_chunks(
                _read_for_scoring,
                [(path, shape, planes) for path in files],
                workers=scoring_readers() if config.workers is None else config.workers,
                description="scoring cutouts",
                preload=["otrain.score.inference"],
                chunk_size=config.batch_size,
            )

        def packet_jobs() -> Iterator[list[Job]]:
            for alerts in alert_chunks(packets, config.batch_size):
                report.n_files += len(alerts)
                yield [(alert, shape, planes) for alert in alerts]

        # Packets are decoded here as they stream in, and read by the readers as files are.
        yield from map_stream(
            _read_for_scoring,
            packet_jobs(),
            workers=scoring_readers() if config.workers is None else config.workers,
            description="scoring packets",
            preload=["otrain.score.inference"],
        )

    with (
        atomic_path(config.output_file) as temporary,
        open(temporary, "w", encoding="utf-8") as stream,
        ThreadPoolExecutor(max_workers=scorers, thread_name_prefix="otrain-score") as pool,
    ):
        stream.write("# " + " ".join(INFER_ENSEMBLE_COLUMNS if ensemble else INFER_COLUMNS) + "\n")

        def write(scores_future: Future[Scores], scored: list[Path | str], metas: list[CutoutMeta]) -> None:
            p_real, spread = scores_future.result()
            p_real = reweight(p_real, config.prob_ratio)
            _write_rows(stream, scored, metas, p_real, config.threshold, spread)
            report.n_scored += len(metas)
            report.n_real += int(np.count_nonzero(p_real > config.threshold))
            if spread is not None:
                spreads.append(spread)

        # The network scores chunks in threads (TensorFlow and ONNX Runtime release the GIL)
        # while this thread writes the rows of those scored and takes the next chunk from the
        # readers; rows are written in the order of the files.
        scoring: deque[tuple[Future[Scores], list[Path | str], list[CutoutMeta]]] = deque()
        try:
            for chunk, (pixels, metas, statuses) in chunks():
                names = [source if isinstance(source, Path) else source.name for source, _, _ in chunk]
                for name, status in zip(names, statuses, strict=True):
                    if status == _EDGE:
                        report.n_edge += 1
                    elif status is not None:
                        report.bad_files.append((Path(name), status))
                if not metas:
                    continue
                scored = [name for name, status in zip(names, statuses, strict=True) if status is None]
                scoring.append((pool.submit(predict_scores, model, pixels, config.batch_size), scored, metas))
                while len(scoring) > scorers:
                    write(*scoring.popleft())
            while scoring:
                write(*scoring.popleft())
        except BaseException:
            pool.shutdown(cancel_futures=True)  # on Ctrl-C or an error, score nothing more
            raise
        report.seconds = time.perf_counter() - started
        if ensemble:
            report.spread = np.concatenate(spreads) if spreads else np.empty(0)
        skipped = [f"skipped: {message}" for _, message in report.bad_files]
        log_listed(skipped, logging.WARNING, "unreadable cutouts", MAX_LISTED_BAD_FILES)
        if report.n_scored == 0 and report.bad_files:
            raise DataError(
                f"{config.cutouts}: no cutout could be scored ({len(report.bad_files)} unreadable, "
                f"{report.n_edge} flagged EDGE); the first problem: {report.bad_files[0][1]}"
            )
    if not config.tracking:
        return report
    from otrain.track.tracking import log_into_training_run

    metrics: dict[str, float] = {
        "scored": report.n_scored,
        "real": report.n_real,
        "edge": report.n_edge,
        "bad": len(report.bad_files),
    }
    artifacts = [config.output_file]
    with tempfile.TemporaryDirectory(prefix="otrain-spread-") as scratch:
        if report.spread is not None:
            from otrain.score.spread import spread_record

            spread_metrics, figures = spread_record(report.spread, Path(scratch))
            metrics.update(spread_metrics)
            artifacts += figures
        log_into_training_run(
            config.model.parent, metrics=metrics, artifacts=artifacts, artifact_path="infer", prefix="infer_"
        )
    return report
