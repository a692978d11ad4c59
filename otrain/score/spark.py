"""Scoring on Apache Spark (otrain-infer-spark): FITS cutouts, alert packets, otrain-pack's or Fink's Parquet.

Both inputs go through the reading code of otrain-infer (:func:`otrain.score.inference.read_for_model`
and :func:`otrain.score.inference.fit_cutout`): FITS files, opened by the executors (a local folder)
or read as bytes by Spark's ``binaryFile`` source (a URI), are read in memory by the same functions
(the other files, when they
hold alert packets, and the rows of a Parquet table of ZTF alerts, as packets by
:mod:`otrain.io.alerts`, one row each); Parquet rows of otrain-pack hold a
cutout's metadata and its raw planes, cropped at most to ``--cutout-size`` (composing two
centre crops gives the single crop otrain-infer makes), and non-finite pixels are replaced only
when scoring, over the model-sized crop, as otrain-infer does.

The driver's side of otrain-infer-spark lives here: the model is resolved on the driver (an
MLflow URI is downloaded, :func:`otrain.track.uris.resolve_model`), and what scores is chosen there
(``--backend``, :func:`otrain.score.backends.choose_backend`): the Keras file, its ONNX twin or its
int8 model is shipped to the executors with ``SparkContext.addFile``. Then the inputs are listed,
the job is planned and run, the results are written as Parquet with their ownership marker (and
optionally as a table), and the files Spark did not read are read again on the driver to say why.
With the twin, neither the driver nor the executors import TensorFlow.

What the executors run (the two decoders, the model loaded once per Python worker, the
``predict_batch_udf`` scorer) is :mod:`otrain.score.spark_executor`; the session and its errors in
one line are :mod:`otrain.score.spark_session`. Each task reads and scores its cutouts in one
``mapInPandas`` pass: measured against decoding in one pass and scoring the pixel column with
:func:`pyspark.ml.functions.predict_batch_udf` (kept as
:func:`otrain.score.spark_executor.predict_batch_scorer`, which ``benchmarks/scale_spark.py``
times), it saves the pixels' round trip through the JVM between two Python workers. pyspark is
imported only by the functions that need it. otrain-pack and the Parquet format live in
:mod:`otrain.score.pack`.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from otrain.errors import DataError, log_listed
from otrain.io.alerts import SNIFF_BYTES, read_head, sniff
from otrain.io.atomic import atomic_folder, atomic_path
from otrain.io.card import card_threshold
from otrain.io.layout import card_file
from otrain.io.markers import write_marker
from otrain.options import MAX_LISTED_BAD_FILES, InferSparkConfig
from otrain.options.uris import is_mlflow_uri
from otrain.score.alert_tables import is_alert_table, select_alert_columns
from otrain.score.backends import BackendChoice, choose_backend, cutout_shape, load_classifier, output_columns
from otrain.score.inference import (
    INFER_COLUMNS,
    INFER_ENSEMBLE_COLUMNS,
    failure_message,
    printable_path,
    read_for_model,
    resolve_planes,
    table_line,
)
from otrain.score.pack import TEXT_COLUMNS, arrow, meta_fields, packed_planes
from otrain.score.spark_executor import (
    EDGE,
    Problems,
    Scoring,
    decode_alert_rows,
    decode_files,
    decode_packed,
    has_fits_suffix,
    local_name,
)
from otrain.score.spark_frames import (
    MAX_FILE_BYTES,
    cutout_roots,
    decoded_schema,
    file_source,
    scored_rows,
    spark_uri,
)
from otrain.score.spark_session import require_spark, spark_message, spark_session
from otrain.track.uris import resolve_model

__all__ = ["Scorer", "SparkReport", "infer_spark", "read_model_input", "resolve_scoring_model"]

logger = logging.getLogger("otrain")


@dataclass
class SparkReport:
    """What one Spark scoring run did."""

    output: Path
    table: Path | None = None
    threshold: float = 0.5
    n_files: int = 0
    n_scored: int = 0
    n_real: int = 0
    n_edge: int = 0
    seconds: float = 0.0  #: reading and scoring, without starting Spark or loading the model on the driver
    backend: str = "keras"  #: what scored: keras, onnx or int8
    bad_files: list[tuple[str, str]] = field(default_factory=list)


def _output_schema(ensemble: bool) -> Any:
    pa = arrow()
    spread = [pa.field("spread", pa.float64())] if ensemble else []
    return pa.schema([*meta_fields(), pa.field("label0", pa.float64()), pa.field("label1", pa.float64()),
                      pa.field("real", pa.int64()), *spread])  # fmt: skip


def _write_table(output: Path, table: Path, threshold: float, ensemble: bool) -> int:
    """Write the Parquet results as infer_results.dat (rows sorted by file); return the real count."""
    import pyarrow.parquet as pq

    results = pq.read_table(output, schema=_output_schema(ensemble)).sort_by("filename")
    columns = INFER_ENSEMBLE_COLUMNS if ensemble else INFER_COLUMNS
    n_real = 0
    with atomic_path(table) as temporary, open(temporary, "w", encoding="utf-8") as stream:
        stream.write("# " + " ".join(columns) + "\n")
        for batch in results.to_batches(max_chunksize=65_536):  # rows as Python objects, a batch at a time
            for row in batch.to_pylist():
                # A missing number is null in Parquet, nan in the table (as otrain-infer writes it).
                cells = [math.nan if row[name] is None and name not in TEXT_COLUMNS else row[name] for name in columns]
                stream.write(table_line(cells))
                n_real += row["real"]
    return n_real


#: Builds the column function giving P(real) of the flattened pixels column: (spark session,
#: the local file the executors load (the Keras model, its ONNX twin or its int8 model), model input shape,
#: options) -> column function.
Scorer = Callable[[Any, Path, tuple[int, int, int], InferSparkConfig], Any]


def infer_spark(
    config: InferSparkConfig, scorer: Scorer | None = None, prepare: Callable[[str], None] | None = None
) -> SparkReport:
    """Score cutouts on Spark and write the results as Parquet (and optionally a table).

    Parameters
    ----------
    config : InferSparkConfig
        Validated options of otrain-infer-spark.
    scorer : callable, optional
        A column function scoring the decoded pixels instead, such as :func:`predict_batch_scorer`
        (pyspark's ``predict_batch_udf``); by default each task reads and scores in one pass.
        ``benchmarks/scale_spark.py`` compares the two.
    prepare : callable, optional
        Called on the driver with the backend chosen (``keras``, ``onnx`` or ``int8``) once the model is
        resolved, before anything is loaded: otrain-infer-spark imports TensorFlow quietly
        there when it is ``keras``.

    Returns
    -------
    SparkReport
        Counts (scored, real, EDGE, bad) and the outputs.

    Raises
    ------
    DataError
        When the model cannot be read, ``--backend onnx`` finds no usable twin, Spark cannot list
        the cutouts or does not start, there is no cutout, or none could be scored; nothing is
        written then. A file Spark cannot read is skipped, counted and listed as an unreadable one.
    """
    require_spark()
    with tempfile.TemporaryDirectory(prefix="otrain-model-") as scratch:
        choice, threshold = resolve_scoring_model(config, Path(scratch), prepare)
        # The model loads on the driver (for its input shape; TensorFlow takes seconds) while the JVM starts.
        with ThreadPoolExecutor(max_workers=1) as pool:
            reading = pool.submit(read_model_input, choice, config)
            with spark_session(config.master, config.conf, "otrain-infer-spark") as spark:
                shape, planes, ensemble = reading.result()
                report = _score(spark, config, choice.path, (shape, planes, ensemble), threshold, scorer)
    report.backend = choice.backend
    return report


def resolve_scoring_model(
    config: InferSparkConfig, scratch: Path, prepare: Callable[[str], None] | None = None
) -> tuple[BackendChoice, float]:
    """Resolve ``--model`` on the driver and choose, once, what scores: the start of a batch or stream run.

    Parameters
    ----------
    config : InferSparkConfig
        Validated options of otrain-infer-spark.
    scratch : Path
        A folder that lives as long as the run: an MLflow URI is downloaded there.
    prepare : callable, optional
        Called with the backend chosen (``keras``, ``onnx`` or ``int8``) before anything is loaded.

    Returns
    -------
    tuple
        The backend chosen (its path is what the executors get) and the decision threshold
        (``--threshold``, else the model card's).

    Raises
    ------
    DataError
        When the model cannot be resolved or ``--backend`` finds nothing usable; an error names
        an MLflow URI rather than the scratch folder it was downloaded to.
    """
    model_file = resolve_model(config.model, scratch)
    choice = _choose_backend(model_file, config)
    if prepare is not None:
        prepare(choice.backend)
    threshold = config.threshold if config.threshold is not None else card_threshold(model_file)
    return choice, threshold


def _choose_backend(model_file: Path, config: InferSparkConfig) -> BackendChoice:
    """Choose what scores with the resolved model file; the note is said here, before Spark starts."""
    try:
        choice = choose_backend(model_file, config.backend)
    except DataError as error:
        if not is_mlflow_uri(config.model):
            raise
        # The twin of a downloaded model is data/model.onnx in a scratch folder: name it in the URI.
        raise DataError(str(error).replace(str(model_file.parent.parent), config.model.rstrip("/"))) from None
    if choice.note:
        logger.warning("%s", choice.note)
    return replace(choice, note="")


def read_model_input(
    choice: BackendChoice, config: InferSparkConfig
) -> tuple[tuple[int, int, int], tuple[str, ...] | None, bool]:
    """Return the model's (H, W, C) input, the planes to read, whether it is an ensemble; check the options."""
    from otrain.io.card import card_planes

    classifier = load_classifier(choice)
    shape = cutout_shape(classifier)
    ensemble = output_columns(classifier) > 2
    planes = resolve_planes(config.planes, card_planes(choice.model_file))
    if planes is not None and len(planes) != shape[2]:
        raise DataError(
            f"{config.model}: the model takes {shape[2]} plane(s), --planes names {len(planes)} ({' '.join(planes)})"
        )
    if config.parquet is not None and not is_alert_table(config.parquet):
        packed = packed_planes(config.parquet)
        # DIFF alone and the default reading pack the same pixels of an STDPipe cutout.
        if resolve_planes(None, packed) != resolve_planes(None, planes):
            raise DataError(
                f"{config.parquet}: packed with planes {' '.join(packed) if packed else 'default (DIFF)'}, "
                f"the model takes {' '.join(planes) if planes else 'default (DIFF)'}; pack again with "
                f"--planes {' '.join(planes) if planes else 'DIFF'}"
            )
    return shape, planes, ensemble


def _score(
    spark: Any,
    config: InferSparkConfig,
    shipped: Path,
    model_input: tuple[tuple[int, int, int], tuple[str, ...] | None, bool],
    threshold: float,
    scorer: Scorer | None,
) -> SparkReport:
    """Run the job; ``model_input`` is :func:`read_model_input`'s (input shape, planes, whether an ensemble)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from pyspark.sql import functions

    shape, planes, ensemble = model_input
    # An ensemble's spread comes from the one-pass scorer; another scorer gives P(real) alone.
    ensemble = ensemble and scorer is None
    started = time.perf_counter()
    # One pass over the input: the executors read each cutout once, report the ones they cannot
    # score (EDGE, unreadable) through an accumulator, and score the rest.
    problems = spark.sparkContext.accumulator([], Problems())
    spark.sparkContext.addFile(str(shipped))  # the Keras file or the ONNX twin: what the executors load
    if card_file(shipped).is_file():
        spark.sparkContext.addFile(str(card_file(shipped)))
    scoring = None if scorer is not None else Scoring(shipped.name, config.batch_size, config.prob_ratio, ensemble)
    schema = decoded_schema(scoring is not None, ensemble)
    listed, roots, others = None, None, None
    if config.cutouts is not None:
        try:
            source = file_source(spark.read, config.cutouts)
        except Exception as error:
            if not type(error).__module__.startswith(("py4j", "pyspark")):
                raise
            raise DataError(f"{config.cutouts}: cannot list the cutouts ({spark_message(error)})") from None
        listed = source._jdf.inputFiles()  # a Java array: names cross to Python only when some went unread
        roots = cutout_roots(config.cutouts)
        others = spark.sparkContext.accumulator([], Problems())
        decoded = source.mapInPandas(decode_files(shape, planes, problems, others, scoring, roots), schema)
        where = config.cutouts
    elif is_alert_table(config.parquet):
        table = select_alert_columns(spark.read.parquet(spark_uri(config.parquet)))
        decoded = table.mapInPandas(decode_alert_rows(shape, planes, problems, scoring, str(config.parquet)), schema)
        where = str(config.parquet)
    else:
        packed = spark.read.parquet(spark_uri(config.parquet))
        decoded = packed.mapInPandas(decode_packed(shape, problems, scoring), schema)
        where = str(config.parquet)
    if scorer is not None:
        decoded = decoded.withColumn("label1", scorer(spark, shipped, shape, config)(functions.col("pixels")))
    scored = scored_rows(decoded, threshold, ensemble)
    report = SparkReport(output=config.output, table=config.table, threshold=threshold)
    with atomic_folder(config.output) as folder:
        target = folder / "data"
        scored.write.mode("error").parquet(spark_uri(target))
        parts = sorted(part for part in target.iterdir() if part.suffix == ".parquet")
        for part in parts:
            part.rename(folder / part.name)
        shutil.rmtree(target)
        # A task that Spark ran twice (a retry, a speculative copy) reports its files twice.
        skipped = dict(problems.value)
        report.n_scored = sum(pq.ParquetFile(folder / part.name).metadata.num_rows for part in parts)
        # The files without a FITS suffix the executors read: {file: (its packets' rows, their problems)}.
        handled = dict(others.value) if others is not None else {}
        from_packets = sum(rows + bad for rows, bad in handled.values())
        if listed is not None and len(listed) > report.n_scored + len(skipped) - from_packets + len(handled):
            seen = set(skipped) | set(handled)
            for part in parts:
                seen.update(pq.read_table(folder / part.name, columns=["filename"])["filename"].to_pylist())
            skipped.update(_unread_files(spark, listed, seen, roots, shape, planes))
        skipped = dict(sorted(skipped.items()))
        report.n_edge = sum(1 for message in skipped.values() if message == EDGE)
        report.bad_files = [(name, message) for name, message in skipped.items() if message != EDGE]
        report.n_files = report.n_scored + len(skipped)
        if report.n_files == 0:
            raise DataError(f"{where}: no cutout files (*.fits, *.fit, *.fits.gz) and no alert packets")
        log_listed(
            [f"skipped: {message}" for _, message in report.bad_files],
            logging.WARNING,
            "unreadable cutouts",
            MAX_LISTED_BAD_FILES,
        )
        if report.n_scored == 0 and report.bad_files:
            raise DataError(
                f"{where}: no cutout could be scored ({len(report.bad_files)} unreadable, "
                f"{report.n_edge} flagged EDGE); the first problem: {report.bad_files[0][1]}"
            )
        write_marker(folder, "otrain-infer-spark", {"model": config.model, "threshold": threshold})
        if config.table is not None:
            report.n_real = _write_table(folder, config.table, threshold, ensemble)
        elif parts:
            report.n_real = int(pc.sum(pq.read_table(folder, columns=["real"])["real"]).as_py() or 0)
    report.seconds = time.perf_counter() - started
    return report


def _unread_files(
    spark: Any,
    listed: Any,
    seen: set[str],
    roots: tuple[str, str] | None,
    shape: tuple[int, int, int],
    planes: tuple[str, ...] | None,
) -> dict[str, str]:
    """Return {file: problem} for the files Spark listed but did not read (unreadable, gone, empty).

    Spark never reads an empty file, and leaves out the ones it fails to read; each is read again on
    the driver for otrain-infer's message about it: by otrain-infer's code when the folder is local,
    through Spark's file systems otherwise.
    """
    jvm = spark.sparkContext._jvm
    unread = {}
    # One string across py4j, not a call per name (py4j passes a String[] to no JDK join); a file name holds no NUL.
    for uri in str(jvm.org.apache.hadoop.util.StringUtils.join("\0", listed)).split("\0"):
        path = Path(local_name(uri, roots, escaped=True))
        name = printable_path(path)
        if name not in seen:
            problem = _unread_problem(spark, uri, path, roots is not None, shape, planes)
            if problem is not None:
                unread[name] = problem
    return unread


def _unread_problem(
    spark: Any,
    uri: str,
    path: Path,
    local: bool,
    shape: tuple[int, int, int],
    planes: tuple[str, ...] | None,
) -> str | None:
    """Say why a file Spark did not read cannot be scored; None for what otrain-infer does not list (a pipe).

    A file without a FITS suffix is named only when the driver finds alert packets in it.
    """
    content = None
    if urllib.parse.urlparse(uri).scheme == "file" and path.exists() and not path.is_file():
        return None
    size = _file_size(spark, uri, path, local)
    too_big = f"{path}: {size} bytes, more than otrain-infer-spark reads as one piece (2 GiB); split it"
    if not has_fits_suffix(uri):
        try:
            head = read_head(path) if local else _hadoop_read(spark, uri, SNIFF_BYTES)
        except Exception:  # py4j's Java exception: what it holds cannot be told
            return None
        if head is None or sniff(head) not in ("avro", "tar"):
            return None  # not packets: passed over, however large
        if not local and size is not None and size >= MAX_FILE_BYTES:  # a local one streams, whatever its size
            return too_big
        return f"{path}: Spark could not read the file, though the driver can (check the executors' access to it)"
    if size is not None and size >= MAX_FILE_BYTES:
        return too_big
    if not local:
        try:
            content = _hadoop_read(spark, uri)
        except Exception as error:  # py4j's Java exception
            return f"{path}: cannot read the file ({spark_message(error)})"
    try:
        read_for_model(path, shape, planes, content=content)
    except Exception as error:
        return failure_message(path, error)
    return f"{path}: Spark could not read the file, though the driver can (check the executors' access to it)"


def _file_size(spark: Any, uri: str, path: Path, local: bool) -> int | None:
    """Return a file's size in bytes, through Spark's file systems for a URI; None when it cannot be told."""
    try:
        if local:
            return path.stat().st_size
        jvm = spark.sparkContext._jvm
        hadoop_path = jvm.org.apache.hadoop.fs.Path(jvm.java.net.URI(uri))
        system = hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
        return int(system.getFileStatus(hadoop_path).getLen())
    except Exception:  # OSError, py4j's Java exception: the reading that follows says why
        return None


def _hadoop_read(spark: Any, uri: str, limit: int | None = None) -> bytes:
    """Read a file whole (or its first ``limit`` bytes) on the driver through Spark's Hadoop file systems."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(jvm.java.net.URI(uri))
    system = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if system.getFileStatus(path).getLen() == 0:
        return b""  # what Spark skipped as empty (a named pipe has no length either, and would never end)
    stream = system.open(path)
    try:
        if limit is not None:  # commons-io, on Spark's class path (Hadoop's reader takes a DataInput only)
            bounded = jvm.org.apache.commons.io.input.BoundedInputStream(stream, limit)
            return bytes(jvm.org.apache.commons.io.IOUtils.toByteArray(bounded))
        return bytes(jvm.org.apache.hadoop.io.IOUtils.readFullyToByteArray(stream))
    finally:
        stream.close()
