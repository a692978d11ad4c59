"""otrain-infer-spark --stream: score cutout files as they land, with Spark Structured Streaming.

The stream reads the files below --cutouts with the batch job's source
(:func:`otrain.score.spark_frames.file_source`, Spark's ``binaryFile`` as a file stream), decodes and
scores them in the executors with the batch job's decoder
(:func:`otrain.score.spark_executor.decode_files`), and gives rows of the batch job's columns
(:func:`otrain.score.spark_frames.scored_rows`) to Spark's Parquet file sink. The sink and the query's
checkpoint give exactly-once output: a micro-batch's part files count only once the sink has
logged them in ``<output>/_spark_metadata``, and a query restarted from its checkpoint reads no
file it has read before.

The cutouts not scored (EDGE, unreadable) are not rows of the output: the executors report them
through an accumulator, as in a batch run, and the driver logs them as each micro-batch ends
(a warning per unreadable file, the EDGE ones counted), and counts them in the report at the end.

A stream runs until it is stopped (Ctrl-C, SIGTERM, or ``stop`` set by a caller), or, with
``--available-now``, until it has scored the files there when it started; stopping waits for
the running micro-batch. Another streaming source gives the same rows:
:func:`packet_rows` turns the rows of Spark's Kafka source (the bytes in ``value``) into the
(path, content) rows the decoder reads.

The functions the executors run are defined in :mod:`otrain.score.spark_executor` or here: this
module imports neither TensorFlow nor pyspark at import time, and otrain's Spark driver only
in the functions that need it.
"""

from __future__ import annotations

import logging
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otrain.errors import DataError
from otrain.io.layout import card_file
from otrain.io.markers import write_marker
from otrain.options import InferSparkConfig
from otrain.options.stream import DEFAULT_TRIGGER, checkpoint_folder, stream_marker
from otrain.score.spark_executor import EDGE, Problems, Scoring, decode_files

__all__ = ["StreamReport", "packet_rows", "start_stream", "stream_scores"]

logger = logging.getLogger("otrain")

#: Seconds between two looks of the driver at the running query (its progress, a stop asked for).
_POLL = 1.0


@dataclass
class StreamReport:
    """What one run of a stream did (earlier runs from the same checkpoint are not counted)."""

    output: Path
    checkpoint: Path
    threshold: float = 0.5
    backend: str = "keras"  #: what scored: keras, onnx or int8
    n_batches: int = 0  #: micro-batches that read files
    n_files: int = 0  #: files read
    n_scored: int = 0
    n_edge: int = 0
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    stopped: bool = False  #: stopped by Ctrl-C, SIGTERM or the caller, not at the end of --available-now


@dataclass
class _Running:
    """A started query and the accumulators of what its executors did."""

    query: Any
    problems: Any  #: (file, problem) pairs of the cutouts not scored (:class:`Problems`)
    scored: Any  #: rows given to the sink
    scored_seen: int = 0
    last_batch: int = -1
    others: Any = None  #: what the files without a FITS suffix gave (:func:`decode_files`)
    messages: bool = False  #: the rows are messages (Kafka), each of which should hold packets


def packet_rows(frame: Any) -> Any:
    """Return the (path, content) rows the decoder reads, from a file source's or a Kafka source's rows.

    Rows of Spark's Kafka source hold the packet's bytes in ``value``: each is named
    ``topic/partition/offset`` in messages and in the ``filename`` column. Rows of Spark's
    ``binaryFile`` are returned as they are: (``path``, ``content``), or ``path`` alone for a local
    folder, whose files the executors open (:func:`otrain.score.spark_frames.file_source`).
    """
    from pyspark.sql import functions

    if "content" in frame.columns:
        return frame.select("path", "content")
    if "value" not in frame.columns:
        if "path" in frame.columns:  # a local folder's files, opened by the executors
            return frame.select("path")
        raise DataError(f"the stream's rows have neither content nor value (columns: {', '.join(frame.columns)})")
    name = (
        functions.concat_ws("/", "topic", "partition", "offset")
        if {"topic", "partition", "offset"} <= set(frame.columns)
        else functions.monotonically_increasing_id().cast("string")
    )
    return frame.select(name.alias("path"), functions.col("value").alias("content"))


def _counted(decode: Callable[[Iterator[Any]], Iterator[Any]], scored: Any) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """Wrap a ``mapInPandas`` decoder so that it adds the rows it gives to the ``scored`` accumulator."""

    def run(batches: Iterator[Any]) -> Iterator[Any]:
        for frame in decode(batches):
            scored.add(len(frame))
            yield frame

    return run


def start_stream(
    spark: Any,
    config: InferSparkConfig,
    shipped: Path,
    model_input: tuple[tuple[int, int, int], tuple[str, ...] | None, bool],
    threshold: float,
    source: Any = None,
) -> _Running:
    """Start the streaming query that scores the files landing in --cutouts (or ``source``'s rows) into --output.

    Parameters
    ----------
    spark : pyspark.sql.SparkSession
        The session.
    config : InferSparkConfig
        The options (--stream, --cutouts, --output, --checkpoint, --trigger, --available-now...).
    shipped : Path
        The model file the executors load (the Keras file, its ONNX twin or its int8 model).
    model_input : tuple
        The model's (H, W, C) input, the planes to read, whether it is an ensemble.
    threshold : float
        The threshold of the ``real`` column.
    source : pyspark.sql.DataFrame, optional
        A streaming DataFrame to read instead of --cutouts: rows of ``path`` and ``content``,
        or of Spark's Kafka source (:func:`packet_rows`).

    Returns
    -------
    _Running
        The query and its accumulators.
    """
    from otrain.score.spark_frames import cutout_roots, decoded_schema, file_source, scored_rows, spark_uri

    shape, planes, ensemble = model_input
    problems = spark.sparkContext.accumulator([], Problems())
    others = spark.sparkContext.accumulator([], Problems())
    scored = spark.sparkContext.accumulator(0)
    spark.sparkContext.addFile(str(shipped))
    if card_file(shipped).is_file():
        spark.sparkContext.addFile(str(card_file(shipped)))
    scoring = Scoring(shipped.name, config.batch_size, config.prob_ratio, ensemble)
    roots = None
    messages = source is not None  # Kafka's rows (or another stream's) rather than files
    if source is None:
        assert config.cutouts is not None  # checked with the options
        source = file_source(spark.readStream, config.cutouts)
        roots = cutout_roots(config.cutouts)
    decode = _counted(decode_files(shape, planes, problems, others, scoring, roots), scored)
    rows = scored_rows(packet_rows(source).mapInPandas(decode, decoded_schema(True, ensemble)), threshold, ensemble)

    writer = (
        rows.writeStream.format("parquet")
        .outputMode("append")
        .option("checkpointLocation", spark_uri(checkpoint_folder(config.output, config.checkpoint)))
        .queryName("otrain_infer_spark")
    )
    if config.available_now:
        writer = writer.trigger(availableNow=True)
    else:
        seconds = config.trigger if config.trigger is not None else DEFAULT_TRIGGER
        writer = writer.trigger(processingTime=f"{seconds:g} seconds")
    query = writer.start(spark_uri(config.output))
    return _Running(query, problems, scored, others=others, messages=messages)


def _take_news(running: _Running, report: StreamReport) -> None:
    """Log and count what the executors did since the last look: the micro-batches ended, the cutouts not scored."""
    # Taken out of the accumulator's list, so that a stream running for months does not keep every
    # EDGE cutout's name: the accumulator's server thread only extends that list, and taking a
    # prefix and deleting it are each one step under the GIL.
    problems = running.problems.value
    count = len(problems)
    news = problems[:count]
    del problems[:count]
    if running.others is not None:  # the packets' counts are in scored and problems already
        others = running.others.value
        handled = others[: len(others)]
        del others[: len(handled)]
        if running.messages:  # a file that is not packets is passed over; a message is a problem
            news += [(name, f"{name}: not an alert packet") for name, counts in handled if tuple(counts) == (0, 0)]
    scored = int(running.scored.value)
    report.n_scored += scored - running.scored_seen
    running.scored_seen = scored
    known = {name for name, _ in report.bad_files}
    for name, message in news:
        if message == EDGE:
            report.n_edge += 1
        elif name not in known:  # a task Spark ran twice (a retry) reports its files twice
            known.add(name)
            report.bad_files.append((name, message))
            logger.warning("skipped: %s", message)
    for progress in running.query.recentProgress:
        batch = int(progress.batchId)
        if batch > running.last_batch:
            running.last_batch = batch
            files = int(progress.numInputRows)
            if files:
                report.n_batches += 1
                report.n_files += files
                logger.info("micro-batch %d: %d new file(s)", batch, files)


def _wait(running: _Running, report: StreamReport, stop: threading.Event) -> None:
    """Follow the query until it ends (--available-now) or a stop is asked for; then stop it, the running batch done."""
    from otrain.score.spark_session import spark_message

    try:
        while not stop.is_set():
            try:
                ended = running.query.awaitTermination(_POLL)
            except Exception as error:
                if not type(error).__module__.startswith(("py4j", "pyspark")):
                    raise
                raise DataError(f"the stream failed: {spark_message(error)}") from None
            _take_news(running, report)
            if ended:
                return
        report.stopped = True
    finally:
        if running.query.isActive:
            running.query.stop()  # waits for the running micro-batch's tasks to stop
    _take_news(running, report)


def _stopping_on_signals(stop: threading.Event) -> Callable[[], None]:
    """Make Ctrl-C and SIGTERM ask the stream to stop (a second one interrupts); return what restores them.

    Handlers can only be set from the main thread: elsewhere, ``stop`` alone stops the stream.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}

    def ask(number: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        logger.warning("stopping the stream after the running micro-batch (again to interrupt)")
        stop.set()

    for number in previous:
        signal.signal(number, ask)

    def restore() -> None:
        for number, handler in previous.items():
            signal.signal(number, handler)

    return restore


def stream_scores(
    config: InferSparkConfig,
    prepare: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> StreamReport:
    """Score the cutout files landing in --cutouts into --output, until stopped or, with --available-now, done.

    Parameters
    ----------
    config : InferSparkConfig
        Validated options of otrain-infer-spark with --stream.
    prepare : callable, optional
        Called on the driver with the backend chosen, as by :func:`otrain.score.spark.infer_spark`.
    stop : threading.Event, optional
        Set it to stop the stream (after its running micro-batch); Ctrl-C and SIGTERM set it too
        when this runs in the main thread.

    Returns
    -------
    StreamReport
        What this run read, scored and skipped.

    Raises
    ------
    DataError
        When the model cannot be read, Spark does not start, or the query fails.
    """
    from otrain.score.spark import read_model_input, resolve_scoring_model
    from otrain.score.spark_session import require_spark, spark_session

    require_spark()
    stop = stop if stop is not None else threading.Event()
    with tempfile.TemporaryDirectory(prefix="otrain-model-") as scratch:
        choice, threshold = resolve_scoring_model(config, Path(scratch), prepare)
        model_input = read_model_input(choice, config)
        report = StreamReport(
            output=config.output,
            checkpoint=checkpoint_folder(config.output, config.checkpoint),
            threshold=threshold,
            backend=choice.backend,
        )
        assert config.cutouts is not None  # checked with the options
        # The folder is the stream's from its start: a later run finds it by its marker.
        config.output.mkdir(parents=True, exist_ok=True)
        checkpoint = checkpoint_folder(config.output, config.checkpoint)
        marker = stream_marker(config.cutouts, config.model, config.threshold, checkpoint)
        write_marker(config.output, "otrain-infer-spark", marker)
        with spark_session(config.master, config.conf, "otrain-infer-spark") as spark:
            # After the session starts: SparkContext sets a SIGINT handler of its own, which cancels
            # the jobs and interrupts whatever py4j call is running.
            restore = _stopping_on_signals(stop)
            try:
                started = time.perf_counter()
                try:
                    running = start_stream(spark, config, choice.path, model_input, threshold)
                except Exception as error:
                    if not type(error).__module__.startswith(("py4j", "pyspark")):
                        raise
                    from otrain.score.spark_session import spark_message

                    raise DataError(f"{config.cutouts}: cannot start the stream ({spark_message(error)})") from None
                _wait(running, report, stop)
                report.seconds = time.perf_counter() - started
            finally:
                restore()
    return report
