"""What the Spark executors of otrain-infer-spark run: decoding cutouts and scoring them.

FITS files, opened here (a local folder, listed by Spark) or read as bytes by Spark's
``binaryFile`` source (a URI), are read in memory by otrain-infer's reading code
(:func:`otrain.score.inference.read_for_model`); the other files that hold alert packets (Avro
files, tarballs), and the rows of a Parquet table of ZTF alerts (Fink's), become packets read
by :mod:`otrain.io.alerts` (:func:`decode_files`, :func:`decode_alert_rows`), one row per
packet; Parquet rows of
otrain-pack (:mod:`otrain.score.pack`) hold a cutout's metadata and its raw planes, fitted to the
model by :func:`otrain.score.inference.fit_cutout`. The model file shipped with
``SparkContext.addFile`` is loaded once per Python worker (Spark reuses its Python workers), on
the task's cores: an ONNX twin on ONNX Runtime, TensorFlow not imported; a Keras file on
TensorFlow. Each task reads and scores its cutouts in one ``mapInPandas`` pass
(:func:`decode_fits`, :func:`decode_files`, :func:`decode_alert_rows`, :func:`decode_packed`);
:func:`predict_batch_scorer` scores the decoded
pixels with :func:`pyspark.ml.functions.predict_batch_udf` instead, which
``benchmarks/scale_spark.py`` times.

The executors import this module by its path (the functions Spark ships refer to it): it
imports neither TensorFlow nor pyspark at import time.
"""

from __future__ import annotations

import os
import stat
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from otrain.io.alerts import SNIFF_BYTES, Alert, BadPacket, alert_from_record, iter_content, iter_file, read_head, sniff
from otrain.io.cutouts import FITS_SUFFIXES
from otrain.options import InferSparkConfig
from otrain.score.alert_tables import alert_record
from otrain.score.inference import (
    failure_message,
    fit_cutout,
    meta_cells,
    printable_path,
    read_for_model,
    reweight,
)
from otrain.score.pack import META_COLUMNS, TEXT_COLUMNS
from otrain.score.spark_frames import MAX_FILE_BYTES

#: P(real) of a batch, and an ensemble's spread (None for a single model).
Scores = tuple[np.ndarray, np.ndarray | None]

__all__ = [
    "EDGE",
    "Problems",
    "Scoring",
    "decode_alert_rows",
    "decode_files",
    "decode_fits",
    "decode_packed",
    "has_fits_suffix",
    "local_name",
    "predict_batch_scorer",
]


def _task_cpus() -> int:
    from pyspark import TaskContext

    context = TaskContext.get()
    return max(1, int(context.cpus())) if context is not None else 1


def _load_shipped_model(model_name: str) -> Callable[[np.ndarray, int], Scores]:
    """Load the model file shipped with ``addFile`` on the task's cores; return P(real) and an ensemble's spread.

    An ONNX twin (``.onnx``) runs on ONNX Runtime, TensorFlow not imported; a Keras file on
    TensorFlow.
    """
    from pyspark import SparkFiles

    from otrain.score.scoring import predict_scores

    path = Path(SparkFiles.get(model_name))
    cpus = _task_cpus()
    if path.suffix == ".onnx":
        from otrain.score.backends import OnnxClassifier

        classifier = OnnxClassifier(path, threads=cpus)
        # No padding: ONNX Runtime runs a batch of any size without tracing anything anew.
        return lambda pixels, batch_size: predict_scores(classifier, pixels, batch_size)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    from otrain.nets.model import load_model

    try:
        tf.config.threading.set_intra_op_parallelism_threads(cpus)
        tf.config.threading.set_inter_op_parallelism_threads(cpus)
    except RuntimeError:
        pass  # TensorFlow already runs in this worker (a reused one): its pools stay as they are
    model = load_model(path)

    def predict_padded(pixels: np.ndarray, batch_size: int) -> Scores:
        # Spark's batches end with partial ones of every size; padded to one size, TensorFlow
        # traces the model once per worker instead of once per new size (about a second each).
        count = len(pixels)
        padded = np.zeros((-(-count // batch_size) * batch_size, *pixels.shape[1:]), dtype=np.float32)
        padded[:count] = pixels
        p_real, spread = predict_scores(model, padded, batch_size)
        return p_real[:count], None if spread is None else spread[:count]

    return predict_padded


def _make_predict_fn(model_name: str, batch_size: int, prob_ratio: float | None) -> Callable[[], Any]:
    """Return predict_batch_udf's factory: called once per Python worker, it loads the shipped model."""

    def make() -> Callable[[np.ndarray], np.ndarray]:
        predict_padded = _load_shipped_model(model_name)
        return lambda pixels: reweight(predict_padded(pixels, batch_size)[0], prob_ratio)

    return make


#: The problem a cutout flagged EDGE is reported with: counted, not listed as unreadable.
EDGE = "edge"


def local_name(uri: str, roots: tuple[str, str] | None = None, escaped: bool = False) -> str:
    """Name a file as otrain-infer would: a local path for ``file:`` URIs, else the URI.

    ``roots`` is (the input folder as an absolute path, the folder as the user gave it): a
    path below the first is named below the second, as otrain-infer names it. ``escaped`` says
    that ``uri`` is %-escaped (``file:///a%20b.fits``, as in Spark's list of input files), not a
    Hadoop path written as it is (``file:/a b.fits``, binaryFile's ``path`` column).
    """
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme != "file":
        return urllib.parse.unquote(uri) if escaped else uri
    if escaped:
        name = urllib.parse.unquote(parsed.path)
    else:
        name = uri[len("file:") :]
        if name.startswith("//"):  # file:///path, file://host/path
            name = "/" + name[2:].partition("/")[2]
    if roots is not None and name.startswith(roots[0].rstrip("/") + "/"):
        return str(Path(roots[1]) / name[len(roots[0].rstrip("/")) + 1 :])
    return name


class Problems:
    """Spark accumulator parameter: the (file, problem) pairs of the cutouts not scored."""

    def zero(self, value: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Return an empty list."""
        return []

    def addInPlace(self, first: list[tuple[str, str]], second: list[tuple[str, str]]) -> list[tuple[str, str]]:  # noqa: N802
        """Join two lists (Spark's name for it)."""
        first.extend(second)
        return first


#: The model of each Python worker, loaded at its first batch (Spark reuses its Python workers).
_WORKER_MODELS: dict[str, Any] = {}


def _worker_model(model_name: str) -> Any:
    """Load the model file shipped with ``addFile`` once per Python worker, on the task's cores."""
    if model_name not in _WORKER_MODELS:
        _WORKER_MODELS[model_name] = _load_shipped_model(model_name)
    return _WORKER_MODELS[model_name]


@dataclass(frozen=True)
class Scoring:
    """How the executors score in the same pass as they read: the shipped model file and its options."""

    model_name: str  #: the Keras file's or the ONNX twin's name
    batch_size: int
    prob_ratio: float | None
    spread: bool = False  #: an ensemble: give its spread column too


def _frame(cells: list[Sequence[Any]], pixels: list[np.ndarray], scoring: Scoring | None) -> Any:
    import pandas as pd

    columns: dict[str, Any] = {}
    for index, name in enumerate(META_COLUMNS):
        values = [row[index] for row in cells]
        columns[name] = [None if value is None else str(value) for value in values] if name in TEXT_COLUMNS else values
    if scoring is None:
        columns["pixels"] = [array.ravel() for array in pixels]
    else:
        predict_batch = _worker_model(scoring.model_name)
        p_real, spread = predict_batch(np.stack(pixels), scoring.batch_size)
        columns["label1"] = reweight(p_real, scoring.prob_ratio)
        if scoring.spread:
            columns["spread"] = spread
    return pd.DataFrame(columns)


def decode_fits(
    shape: tuple[int, int, int],
    planes: tuple[str, ...] | None,
    problems: Any,
    scoring: Scoring | None = None,
    roots: tuple[str, str] | None = None,
) -> Callable[[Any], Iterator[Any]]:
    """Return the ``mapInPandas`` function that reads (and scores) batches of ``binaryFile`` rows.

    Parameters
    ----------
    shape : tuple of int
        The model's (H, W, C) input.
    planes : tuple of str or None
        The planes to read.
    problems : pyspark.Accumulator
        Receives the (file, problem) pairs of the cutouts not scored (:class:`Problems`).
    scoring : Scoring, optional
        Score in the same pass; None yields the flattened ``pixels`` column instead.
    roots : tuple of str, optional
        (the input folder as an absolute path, as the user gave it): files are named as otrain-infer names them.
    """

    def decode(batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            cells, pixels, skipped = [], [], []
            for uri, content in zip(batch["path"], _contents(batch, roots), strict=True):
                path = Path(local_name(uri, roots))
                if roots is not None:  # a local folder's file, read here
                    content = _local_content(uri)
                    if content is None:
                        continue  # not seen: a batch's driver says why (otrain.score.spark._unread_files)
                try:
                    meta, cutout = read_for_model(path, shape, planes, content=bytes(content))
                except Exception as error:  # an executor reports, never dies, on a strange file
                    skipped.append((printable_path(path), failure_message(path, error)))
                    continue
                if cutout is None:
                    skipped.append((printable_path(path), EDGE))
                    continue
                cells.append(meta_cells(printable_path(path), meta))
                pixels.append(cutout)
            problems.add(skipped)
            if cells:  # an empty batch would reach the model as an array of no shape
                yield _frame(cells, pixels, scoring)

    return decode


def _contents(batch: Any, roots: tuple[str, str] | None) -> Any:
    """Return a batch's ``content`` column; None for each row of a local folder (``roots``), opened here."""
    return [None] * len(batch) if roots is not None else batch["content"]


def _local_content(uri: str) -> bytes | None:
    """Read a local folder's cutout file whole; None for what Spark would not read either.

    That is an empty file, a pipe or another non-file, an unreadable one, and one of 2 GiB or
    more (:data:`otrain.score.spark_frames.MAX_FILE_BYTES`, no cutout is that large).
    """
    path = Path(local_name(uri))
    try:
        status = path.stat()
        if not stat.S_ISREG(status.st_mode) or status.st_size >= MAX_FILE_BYTES:
            return None  # a named pipe would never end
        return path.read_bytes() or None
    except OSError:
        return None


def has_fits_suffix(name: str) -> bool:
    """Tell whether a file is read as a FITS cutout: its name ends with a FITS suffix, in any case."""
    return name.lower().endswith(FITS_SUFFIXES)


#: Packets decoded before they are scored and passed on (pyspark's Arrow batches hold 10,000 rows).
_ROWS_PER_FRAME = 10_000


def _add_alert(
    item: Alert | BadPacket,
    shape: tuple[int, int, int],
    planes: tuple[str, ...] | None,
    read: tuple[list[Sequence[Any]], list[np.ndarray], list[tuple[str, str]]],
) -> None:
    """Read one packet as otrain-infer reads a cutout: its row and pixels, or its problem (EDGE, unreadable)."""
    cells, pixels, skipped = read
    if isinstance(item, BadPacket):
        skipped.append((item.name, item.reason))
        return
    try:
        meta, cutout = read_for_model(item, shape, planes)
        if cutout is None:
            skipped.append((item.name, EDGE))
            return
    except Exception as error:  # an executor reports, never dies, on a strange packet
        skipped.append((item.name, failure_message(item.name, error)))
        return
    cells.append(meta_cells(item.name, meta))
    pixels.append(cutout)


def decode_files(
    shape: tuple[int, int, int],
    planes: tuple[str, ...] | None,
    problems: Any,
    others: Any,
    scoring: Scoring | None = None,
    roots: tuple[str, str] | None = None,
) -> Callable[[Any], Iterator[Any]]:
    """Return the ``mapInPandas`` function that reads (and scores) batches of ``binaryFile`` rows of any file.

    A file with a FITS suffix is read as :func:`decode_fits` reads it; any other holding Avro alert
    packets or a tarball of them (recognised from its bytes) gives one row per packet
    (:func:`otrain.io.alerts.iter_content`; a local folder's files are opened here and read as a
    stream, :func:`otrain.io.alerts.iter_file`), named as otrain-infer names packets; the rest
    are passed over. A local file that cannot be read is left to the driver, which says why. The
    arguments are those of :func:`decode_fits`, and ``others``: an accumulator
    (:class:`Problems`) receiving, for each file without a FITS suffix, (its name, (rows,
    problems)): the rows and the problems its packets gave, (0, 0) for a file passed over.
    """
    fits = decode_fits(shape, planes, problems, scoring, roots)

    def decode(batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            cutouts = batch["path"].map(has_fits_suffix)
            if cutouts.any():
                yield from fits(iter([batch[cutouts]]))
            cells: list[Sequence[Any]] = []
            pixels: list[np.ndarray] = []
            skipped: list[tuple[str, str]] = []
            handled: list[tuple[str, tuple[int, int]]] = []
            for uri, content in zip(batch["path"][~cutouts], _contents(batch[~cutouts], roots), strict=True):
                name = printable_path(Path(local_name(uri, roots)))
                if roots is not None:  # a local folder's file, read here as a stream (a tarball of any size)
                    local = Path(local_name(uri))
                    head = read_head(local)
                    if head is None:
                        continue  # not seen: a batch's driver says why
                    kind = sniff(head)
                    items = iter_file(local, name, kind)
                else:
                    data = b"" if content is None else bytes(content)  # a Kafka message without a value
                    kind, items = sniff(data[:SNIFF_BYTES]), iter_content(data, name)
                rows, problems_before = 0, len(skipped)
                if kind in ("avro", "tar"):
                    for item in items:
                        before = len(cells)
                        _add_alert(item, shape, planes, (cells, pixels, skipped))
                        rows += len(cells) - before
                        if len(cells) >= _ROWS_PER_FRAME:  # a tarball's packets: scored a frame at a time
                            yield _frame(cells, pixels, scoring)
                            cells, pixels = [], []
                handled.append((name, (rows, len(skipped) - problems_before)))
            problems.add(skipped)
            others.add(handled)
            if cells:
                yield _frame(cells, pixels, scoring)

    return decode


def decode_alert_rows(
    shape: tuple[int, int, int],
    planes: tuple[str, ...] | None,
    problems: Any,
    scoring: Scoring | None = None,
    where: str = "alerts",
) -> Callable[[Any], Iterator[Any]]:
    """Return the ``mapInPandas`` function that reads (and scores) the rows of a ZTF alert table (Fink's Parquet).

    Each row holds the flat columns of :func:`otrain.score.alert_tables.select_alert_columns`
    (``candid`` as text, exact); it becomes an alert named ``<where>#<candid>``
    (:func:`otrain.io.alerts.alert_from_record`) read as a packet. ``where`` names the table;
    the other arguments are those of :func:`decode_fits`.
    """

    def decode(batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            cells: list[Sequence[Any]] = []
            pixels: list[np.ndarray] = []
            skipped: list[tuple[str, str]] = []
            for row in batch.to_dict("records"):
                name = f"{where}#{row['candid']}"
                record = alert_record(row)
                try:
                    item: Alert | BadPacket = alert_from_record(record, name, "ztf")
                except Exception as error:
                    item = BadPacket(name, failure_message(name, error))
                _add_alert(item, shape, planes, (cells, pixels, skipped))
            problems.add(skipped)
            if cells:
                yield _frame(cells, pixels, scoring)

    return decode


def decode_packed(
    shape: tuple[int, int, int], problems: Any, scoring: Scoring | None = None
) -> Callable[[Any], Iterator[Any]]:
    """Return the ``mapInPandas`` function that fits (and scores) batches of otrain-pack's Parquet rows.

    The arguments are those of :func:`decode_fits`.
    """

    def decode(batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            cells, pixels, skipped = [], [], []
            for record in batch.to_dict("records"):
                # pandas gives a missing text as None or NaN (pandas 3): an error is a string.
                if isinstance(record["error"], str):
                    skipped.append((record["filename"], record["error"]))
                    continue
                if record["edge"]:
                    skipped.append((record["filename"], EDGE))
                    continue
                path = Path(record["filename"])
                try:
                    stored = np.frombuffer(record["pixels"], dtype="<f4").reshape(tuple(record["shape"]))
                    cutout = fit_cutout(stored.astype(np.float32), shape, path)
                except Exception as error:
                    skipped.append((record["filename"], failure_message(path, error)))
                    continue
                cells.append(tuple(record[name] for name in META_COLUMNS))
                pixels.append(cutout)
            problems.add(skipped)
            if cells:  # an empty batch would reach the model as an array of no shape
                yield _frame(cells, pixels, scoring)

    return decode


def predict_batch_scorer(spark: Any, model_file: Path, shape: tuple[int, int, int], config: InferSparkConfig) -> Any:
    """Score with :func:`pyspark.ml.functions.predict_batch_udf`: the model loaded once per Python worker.

    Parameters
    ----------
    spark : pyspark.sql.SparkSession
        The session (the model file has been added with ``SparkContext.addFile``).
    model_file : Path
        The file the executors load (the Keras model, its ONNX twin or its int8 model), on the driver; executors
        find it by name with ``SparkFiles.get``.
    shape : tuple of int
        The model's (H, W, C) input.
    config : InferSparkConfig
        The options (batch size, prior ratio).

    Returns
    -------
    callable
        Column -> column of P(real), re-weighted by ``--prob-ratio`` (an ensemble's spread is
        left out: this scorer is ``benchmarks/scale_spark.py``'s comparison).
    """
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import DoubleType

    return predict_batch_udf(
        _make_predict_fn(model_file.name, config.batch_size, config.prob_ratio),
        return_type=DoubleType(),
        batch_size=config.batch_size,
        input_tensor_shapes=[list(shape)],
    )
