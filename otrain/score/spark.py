"""Scoring on Apache Spark (otrain-infer-spark), of FITS cutouts or of otrain-pack's Parquet (:mod:`otrain.score.pack`).

Both inputs go through the reading code of otrain-infer (:func:`otrain.score.inference.read_for_model`
and :func:`otrain.score.inference.fit_cutout`): FITS files arrive as bytes from Spark's ``binaryFile``
source and are read in memory by the same functions; Parquet rows of otrain-pack hold a
cutout's metadata and its raw planes, cropped at most to ``--cutout-size`` (composing two
centre crops gives the single crop otrain-infer makes), and non-finite pixels are replaced only
when scoring, over the model-sized crop, as otrain-infer does.

The model is resolved on the driver (an MLflow URI is downloaded), and what scores is chosen there
(``--backend``, :func:`otrain.score.backends.choose_backend`): the Keras file, its ONNX twin or its int8 model is
shipped to the executors with ``SparkContext.addFile`` and loaded once per Python worker (Spark
reuses its Python workers), with TensorFlow's thread pools or ONNX Runtime's intra-op threads
sized to the task's cores (``spark.task.cpus``). With the twin, neither the driver nor the
executors import TensorFlow. Each task reads
and scores its cutouts in one ``mapInPandas`` pass: measured against decoding in one pass and
scoring the pixel column with :func:`pyspark.ml.functions.predict_batch_udf` (kept as
:func:`predict_batch_scorer`, which ``benchmarks/scale_spark.py`` times), it saves the pixels'
round trip through the JVM between two Python workers. pyspark is imported only by the
functions that need it.

otrain-pack and the Parquet format live in :mod:`otrain.score.pack`. Why this module is still about
900 lines: what is left is otrain-infer-spark alone (the session and its errors, the model's
resolution and shipping, the two decoders, the scoring pass, the files Spark did not read);
issue 24 gives it a ``score/spark/`` subpackage, and the session and the MLflow model resolver
(a second one, beside :mod:`otrain.score.serving`'s) go to their rooms then.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from otrain.errors import DataError, OptionError, first_line, log_listed
from otrain.io.atomic import atomic_folder, atomic_path
from otrain.io.card import card_threshold
from otrain.io.layout import card_file
from otrain.options import FITS_SUFFIXES, MAX_LISTED_BAD_FILES, InferSparkConfig
from otrain.options.uris import is_mlflow_uri
from otrain.score.backends import BackendChoice, choose_backend, cutout_shape, load_classifier
from otrain.score.inference import (
    INFER_COLUMNS,
    failure_message,
    fit_cutout,
    meta_cells,
    printable_path,
    read_for_model,
    resolve_planes,
    reweight,
    table_line,
)
from otrain.score.pack import META_COLUMNS, TEXT_COLUMNS, arrow, meta_fields, packed_planes, write_marker

__all__ = [
    "Scorer",
    "SparkReport",
    "infer_spark",
    "predict_batch_scorer",
    "require_spark",
    "resolve_model",
    "spark_session",
]

logger = logging.getLogger("otrain")

#: Spark settings otrain starts its session with; --conf overrides them.
_DEFAULT_CONF = {
    "spark.ui.showConsoleProgress": "false",
    "spark.ui.enabled": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.session.timeZone": "UTC",
    # Spark counts 4 MB per file when it groups files into tasks: cutouts of a few kB would make
    # tasks of some 30 files each, whose start-up costs more than their scoring.
    "spark.sql.files.openCostInBytes": "8192",
}
# Spark's own log lines at ERROR level and above only, on standard error: its INFO/WARN lines
# (start-up, native Hadoop libraries, ...) would mix with otrain's output.
_LOG4J2 = """\
rootLogger.level = error
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = spark: %p %c{1}: %m%n
"""


# --------------------------------------------------------------------------------------------
# The Spark session and the model


def require_spark() -> None:
    """Check that pyspark and a Java runtime are there, before anything starts.

    Raises
    ------
    OptionError
        Naming what is missing and how to install it.
    """
    import importlib.util

    if importlib.util.find_spec("pyspark") is None:
        raise OptionError("pyspark is not installed: pip install otrain[spark]")
    java_home = os.environ.get("JAVA_HOME")
    java = Path(java_home) / "bin" / "java" if java_home else None
    if not (java is not None and java.is_file()) and shutil.which("java") is None:
        raise OptionError(
            "no Java runtime found (Spark needs Java 17 or later): install one (Debian: openjdk-17-jre-headless) "
            "or set JAVA_HOME"
        )


@contextmanager
def spark_session(master: str, conf: Sequence[str] = (), app_name: str = "otrain") -> Iterator[Any]:
    """Start a quiet Spark session, and stop it at the end, also on error.

    Parameters
    ----------
    master : str
        ``local[*]``, ``spark://host:port``, ``yarn``...
    conf : sequence of str
        ``KEY=VALUE`` settings; they override otrain's defaults.
    app_name : str
        The application's name in Spark's UI.

    Yields
    ------
    pyspark.sql.SparkSession
        The session.

    Raises
    ------
    DataError
        In one line, when Spark does not start (why, and the ``conf`` settings given) or fails
        (the innermost Java exception, or the Python error of an executor).
    """
    require_spark()
    from pyspark.sql import SparkSession

    settings = dict(_DEFAULT_CONF)
    settings.update(entry.split("=", 1) for entry in conf)
    # TensorFlow's C++ start-up lines in the Python workers (local mode: on this terminal).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    settings.setdefault("spark.executorEnv.TF_CPP_MIN_LOG_LEVEL", os.environ["TF_CPP_MIN_LOG_LEVEL"])
    if master.startswith("local"):
        # The Python workers run this interpreter (a venv's, even when the venv is not activated):
        # Spark takes it from PYSPARK_PYTHON; its spark.pyspark.python setting was not honoured.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        # Local mode needs no network name: on loopback it also runs where the host name does not
        # resolve (a container with --network none) and opens no port beyond this machine.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("SPARK_LOCAL_HOSTNAME", "localhost")
        settings.setdefault("spark.pyspark.python", sys.executable)
        settings.setdefault("spark.pyspark.driver.python", sys.executable)
    with tempfile.TemporaryDirectory(prefix="otrain-spark-") as scratch:
        log_config = Path(scratch) / "log4j2.properties"
        log_config.write_text(_LOG4J2)
        option = f"-Dlog4j2.configurationFile={log_config.as_uri()}"
        for key in ("spark.driver.extraJavaOptions", "spark.executor.extraJavaOptions"):
            settings[key] = f"{settings[key]} {option}" if key in settings else option
        builder = SparkSession.builder.master(master).appName(app_name)
        for key, value in settings.items():
            builder = builder.config(key, value)
        log_file = Path(scratch) / "spark.log"
        started = False
        try:
            with warnings.catch_warnings():
                # pyspark 4.3 warns on every pandas UDF that it "does not yet fully support pandas >= 3".
                warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas", FutureWarning)
                with _output_into(log_file):
                    session = builder.getOrCreate()
                started = True
                session.sparkContext.setLogLevel("ERROR")
                try:
                    yield session
                finally:
                    session.stop()
        except Exception as error:
            if not type(error).__module__.startswith(("py4j", "pyspark")):
                raise
            # The JVM's failures arrive with pages of Java trace: one line.
            if started:
                raise DataError(f"Spark failed (master {master}): {_spark_message(error)}") from None
            # Java may exit before saying anything to pyspark ("Java gateway process exited"): what it
            # printed says why, and a bad --conf value is the usual cause.
            reason = _java_start_failure(log_file) if "JAVA_GATEWAY_EXITED" in str(error) else None
            given = f"; --conf given: {' '.join(conf)}" if conf else ""
            reason = f"Java exited: {reason}" if reason else _spark_message(error)
            raise DataError(f"Spark did not start (master {master}): {reason}{given}") from None


@contextmanager
def _output_into(log_file: Path) -> Iterator[None]:
    """Send what is written to file descriptors 1 and 2 in the block, and by processes started there, to a file.

    The JVM that pyspark starts inherits them: its start-up lines, Java's warnings and the
    Python workers' TensorFlow lines (local mode) then stay out of otrain's output.
    """
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    target = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for descriptor in (*saved, target):
            os.close(descriptor)


def _spark_message(error: BaseException) -> str:
    """One line for a Spark failure: the Python error raised in an executor when there is one.

    Else the innermost Java exception, which names the path and the cause (py4j's own first line
    names only the method called, such as "An error occurred while calling o50.load.").
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(("otrain.errors.", "ValueError:", "RuntimeError:", "OSError:", "MemoryError:")):
            return line[:300]
    cause = getattr(error, "java_exception", None)
    if cause is not None:
        try:
            while cause.getCause() is not None:
                cause = cause.getCause()
            text = cause.getMessage()
            name = str(cause.getClass().getSimpleName())
            return (f"{name}: {str(text).strip().splitlines()[0]}" if text and str(text).strip() else name)[:300]
        except Exception:  # the JVM has gone: py4j's own line below
            pass
    return (lines[0] if lines else type(error).__name__)[:300]


def _java_start_failure(log_file: Path) -> str | None:
    """Return why Java exited before Spark started, from its output (``Invalid maximum heap size: -Xmxlots``)."""
    boilerplate = (
        "Error: Could not create the Java Virtual Machine.",
        "Error: A fatal exception has occurred. Program will exit.",
        "Error occurred during initialization of VM",
    )
    try:
        lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        line = line.strip()
        if not line or line in boilerplate or line.startswith(("at ", "WARNING", "Using Spark's default")):
            continue
        # Exception in thread "main" org.apache.spark.SparkException: Executor memory must be ... -> SparkException: ...
        line = re.sub(r'^Exception in thread "[^"]*" ', "", line)
        return re.sub(r"^(?:[a-z_$][\w$]*\.)+(?=[A-Z][\w$]*: )", "", line)[:300]
    return None


def resolve_model(model: str, scratch: Path) -> Path:
    """Return a local Keras file for ``--model``: the file itself, or an MLflow model downloaded.

    An MLflow model (``models:/NAME@ALIAS``, ``runs:/...``) logged by otrain-train holds its Keras
    file in ``data/model.keras`` and its ONNX twin beside it (``data/model.onnx``, stamped for
    that file); the model card its training logged (``training/*.card.json``) is downloaded
    beside them, so that the card's threshold and planes apply as for a file.

    Parameters
    ----------
    model : str
        A model file, or an MLflow model URI (resolved against ``MLFLOW_TRACKING_URI``).
    scratch : Path
        A folder for the download.

    Returns
    -------
    Path
        The Keras file.

    Raises
    ------
    DataError
        When the URI names no model, or not a Keras model.
    """
    if not is_mlflow_uri(model):
        return Path(model)
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from otrain.track.tracking import resolve_tracking_uri, using_tracking_uri
    from otrain.track.uris import run_of

    uri = resolve_tracking_uri()
    with using_tracking_uri(uri):
        try:
            folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=str(scratch / "model")))
        except (MlflowException, OSError) as error:
            raise DataError(f"--model {model}: cannot fetch it from {uri} ({first_line(error)[:200]})") from None
        keras_file = folder / "data" / "model.keras"
        if not keras_file.is_file():
            raise DataError(f"--model {model}: not a Keras model logged by otrain-train (no data/model.keras)")
        client = MlflowClient(uri)
        try:
            run_id = run_of(client, model)
            cards = [
                item.path for item in client.list_artifacts(run_id, "training") if item.path.endswith(".card.json")
            ]
            if len(cards) == 1:
                fetched = Path(client.download_artifacts(run_id, cards[0], str(scratch / "card")))
                shutil.copyfile(fetched, card_file(keras_file))
        except MlflowException as error:
            logger.warning("--model %s: no model card found with its run (%s)", model, first_line(error)[:200])
    return keras_file


def _task_cpus() -> int:
    from pyspark import TaskContext

    context = TaskContext.get()
    return max(1, int(context.cpus())) if context is not None else 1


def _load_shipped_model(model_name: str) -> Callable[[np.ndarray, int], np.ndarray]:
    """Load the model file shipped with ``addFile`` on the task's cores; return P(real) of pixels.

    An ONNX twin (``.onnx``) runs on ONNX Runtime, TensorFlow not imported; a Keras file on
    TensorFlow.
    """
    from pyspark import SparkFiles

    from otrain.score.scoring import predict

    path = Path(SparkFiles.get(model_name))
    cpus = _task_cpus()
    if path.suffix == ".onnx":
        from otrain.score.backends import OnnxClassifier

        classifier = OnnxClassifier(path, threads=cpus)
        # No padding: ONNX Runtime runs a batch of any size without tracing anything anew.
        return lambda pixels, batch_size: predict(classifier, pixels, batch_size)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    from otrain.nets.model import load_model

    try:
        tf.config.threading.set_intra_op_parallelism_threads(cpus)
        tf.config.threading.set_inter_op_parallelism_threads(cpus)
    except RuntimeError:
        pass  # TensorFlow already runs in this worker (a reused one): its pools stay as they are
    model = load_model(path)

    def predict_padded(pixels: np.ndarray, batch_size: int) -> np.ndarray:
        # Spark's batches end with partial ones of every size; padded to one size, TensorFlow
        # traces the model once per worker instead of once per new size (about a second each).
        count = len(pixels)
        padded = np.zeros((-(-count // batch_size) * batch_size, *pixels.shape[1:]), dtype=np.float32)
        padded[:count] = pixels
        return predict(model, padded, batch_size)[:count]

    return predict_padded


def _make_predict_fn(model_name: str, batch_size: int, prob_ratio: float | None) -> Callable[[], Any]:
    """Return predict_batch_udf's factory: called once per Python worker, it loads the shipped model."""

    def make() -> Callable[[np.ndarray], np.ndarray]:
        predict_padded = _load_shipped_model(model_name)
        return lambda pixels: reweight(predict_padded(pixels, batch_size), prob_ratio)

    return make


# --------------------------------------------------------------------------------------------
# Decoding: FITS bytes or packed rows to model-sized pixels, in the executors


_EDGE = "edge"


def _local_name(uri: str, roots: tuple[str, str] | None = None, escaped: bool = False) -> str:
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


def _spark_uri(location: str | Path) -> str:
    """Return what Spark reads or writes: a URI as given, a local path as an absolute ``file:`` URI.

    A bare path would be resolved against the cluster's default file system (often HDFS).
    """
    text = str(location)
    if urllib.parse.urlparse(text).scheme and not Path(text).exists():
        return text
    # Not Path.as_uri(): Hadoop reads a path's characters as they are and would keep its %-escapes.
    return "file://" + str(Path(text).absolute())


class _Problems:
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
class _Scoring:
    """How the executors score in the same pass as they read: the shipped model file and its options."""

    model_name: str  #: the Keras file's or the ONNX twin's name
    batch_size: int
    prob_ratio: float | None


def _frame(cells: list[Sequence[Any]], pixels: list[np.ndarray], scoring: _Scoring | None) -> Any:
    import pandas as pd

    columns: dict[str, Any] = {}
    for index, name in enumerate(META_COLUMNS):
        values = [row[index] for row in cells]
        columns[name] = [None if value is None else str(value) for value in values] if name in TEXT_COLUMNS else values
    if scoring is None:
        columns["pixels"] = [array.ravel() for array in pixels]
    else:
        predict_batch = _worker_model(scoring.model_name)
        columns["label1"] = reweight(predict_batch(np.stack(pixels), scoring.batch_size), scoring.prob_ratio)
    return pd.DataFrame(columns)


def _decode_fits(
    shape: tuple[int, int, int],
    planes: tuple[str, ...] | None,
    problems: Any,
    scoring: _Scoring | None = None,
    roots: tuple[str, str] | None = None,
) -> Callable[[Any], Iterator[Any]]:
    def decode(batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            cells, pixels, skipped = [], [], []
            for uri, content in zip(batch["path"], batch["content"], strict=True):
                path = Path(_local_name(uri, roots))
                try:
                    meta, cutout = read_for_model(path, shape, planes, content=bytes(content))
                except Exception as error:  # an executor reports, never dies, on a strange file
                    skipped.append((printable_path(path), failure_message(path, error)))
                    continue
                if cutout is None:
                    skipped.append((printable_path(path), _EDGE))
                    continue
                cells.append(meta_cells(printable_path(path), meta))
                pixels.append(cutout)
            problems.add(skipped)
            if cells:  # an empty batch would reach the model as an array of no shape
                yield _frame(cells, pixels, scoring)

    return decode


def _decode_packed(
    shape: tuple[int, int, int], problems: Any, scoring: _Scoring | None = None
) -> Callable[[Any], Iterator[Any]]:
    def decode(batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            cells, pixels, skipped = [], [], []
            for record in batch.to_dict("records"):
                # pandas gives a missing text as None or NaN (pandas 3): an error is a string.
                if isinstance(record["error"], str):
                    skipped.append((record["filename"], record["error"]))
                    continue
                if record["edge"]:
                    skipped.append((record["filename"], _EDGE))
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


def _fits_glob() -> str:
    """Return a Hadoop glob matching the cutout suffixes in any case (.fits, .fit, .fits.gz, .fit.gz)."""
    spelled = [
        "".join(f"[{char.lower()}{char.upper()}]" if char.isalpha() else char for char in s) for s in FITS_SUFFIXES
    ]
    return "*{" + ",".join(spelled) + "}"


# --------------------------------------------------------------------------------------------
# otrain-infer-spark


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


def _output_schema() -> Any:
    pa = arrow()
    return pa.schema([*meta_fields(), pa.field("label0", pa.float64()), pa.field("label1", pa.float64()),
                      pa.field("real", pa.int64())])  # fmt: skip


def _write_table(output: Path, table: Path, threshold: float) -> int:
    """Write the Parquet results as infer_results.dat (rows sorted by file); return the real count."""
    import pyarrow.parquet as pq

    results = pq.read_table(output, schema=_output_schema()).sort_by("filename")
    n_real = 0
    with atomic_path(table) as temporary, open(temporary, "w", encoding="utf-8") as stream:
        stream.write("# " + " ".join(INFER_COLUMNS) + "\n")
        for batch in results.to_batches(max_chunksize=65_536):  # rows as Python objects, a batch at a time
            for row in batch.to_pylist():
                # A missing number is null in Parquet, nan in the table (as otrain-infer writes it).
                cells = [
                    math.nan if row[name] is None and name not in TEXT_COLUMNS else row[name] for name in INFER_COLUMNS
                ]
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
        model_file = resolve_model(config.model, Path(scratch))
        choice = _choose_backend(model_file, config)
        if prepare is not None:
            prepare(choice.backend)
        threshold = config.threshold if config.threshold is not None else card_threshold(model_file)
        # The model loads on the driver (for its input shape; TensorFlow takes seconds) while the JVM starts.
        with ThreadPoolExecutor(max_workers=1) as pool:
            reading = pool.submit(_model_input, choice, config)
            with spark_session(config.master, config.conf, "otrain-infer-spark") as spark:
                shape, planes = reading.result()
                report = _score(spark, config, choice.path, shape, planes, threshold, scorer)
    report.backend = choice.backend
    return report


def _choose_backend(model_file: Path, config: InferSparkConfig) -> BackendChoice:
    """Choose, once, what scores with the resolved model file (its path is what the executors get).

    An error names an MLflow URI rather than the scratch folder it was downloaded to; the note
    is said here, before Spark starts, so the choice passed on carries none.
    """
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


def _model_input(
    choice: BackendChoice, config: InferSparkConfig
) -> tuple[tuple[int, int, int], tuple[str, ...] | None]:
    """Return the model's (H, W, C) input and the planes to read; check them against the options."""
    from otrain.io.card import card_planes

    classifier = load_classifier(choice)
    shape = cutout_shape(classifier)
    planes = resolve_planes(config.planes, card_planes(choice.model_file))
    if planes is not None and len(planes) != shape[2]:
        raise DataError(
            f"{config.model}: the model takes {shape[2]} plane(s), --planes names {len(planes)} ({' '.join(planes)})"
        )
    if config.parquet is not None:
        packed = packed_planes(config.parquet)
        # DIFF alone and the default reading pack the same pixels of an STDPipe cutout.
        if resolve_planes(None, packed) != resolve_planes(None, planes):
            raise DataError(
                f"{config.parquet}: packed with planes {' '.join(packed) if packed else 'default (DIFF)'}, "
                f"the model takes {' '.join(planes) if planes else 'default (DIFF)'}; pack again with "
                f"--planes {' '.join(planes) if planes else 'DIFF'}"
            )
    return shape, planes


def _score(
    spark: Any,
    config: InferSparkConfig,
    shipped: Path,
    shape: tuple[int, int, int],
    planes: tuple[str, ...] | None,
    threshold: float,
    scorer: Scorer | None,
) -> SparkReport:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from pyspark.sql import functions, types

    started = time.perf_counter()
    # One pass over the input: the executors read each cutout once, report the ones they cannot
    # score (EDGE, unreadable) through an accumulator, and score the rest.
    problems = spark.sparkContext.accumulator([], _Problems())
    spark.sparkContext.addFile(str(shipped))  # the Keras file or the ONNX twin: what the executors load
    if card_file(shipped).is_file():
        spark.sparkContext.addFile(str(card_file(shipped)))
    scoring = None if scorer is not None else _Scoring(shipped.name, config.batch_size, config.prob_ratio)
    last = (
        types.StructField("pixels", types.ArrayType(types.FloatType()))
        if scoring is None
        else types.StructField("label1", types.DoubleType())
    )
    schema = types.StructType(
        [
            *(
                types.StructField(name, types.StringType() if name in TEXT_COLUMNS else types.DoubleType())
                for name in META_COLUMNS
            ),
            last,
        ]
    )
    listed, roots = None, None
    if config.cutouts is not None:
        try:
            source = (
                spark.read.format("binaryFile")
                .option("recursiveFileLookup", "true")
                .option("pathGlobFilter", _fits_glob())
                # A file Spark cannot read (no permission, gone since the listing) would fail the
                # whole job: Spark leaves it out, and _unread_files reports it with the others.
                .option("ignoreCorruptFiles", "true")
                .option("ignoreMissingFiles", "true")
                .load(_spark_uri(config.cutouts))
                .select("path", "content")
            )
        except Exception as error:
            if not type(error).__module__.startswith(("py4j", "pyspark")):
                raise
            raise DataError(f"{config.cutouts}: cannot list the cutouts ({_spark_message(error)})") from None
        listed = source._jdf.inputFiles()  # a Java array: names cross to Python only when some went unread
        local = not urllib.parse.urlparse(config.cutouts).scheme or Path(config.cutouts).exists()
        roots = (str(Path(config.cutouts).absolute()), config.cutouts) if local else None
        decoded = source.mapInPandas(_decode_fits(shape, planes, problems, scoring, roots), schema)
        where = config.cutouts
    else:
        packed = spark.read.parquet(_spark_uri(config.parquet))
        decoded = packed.mapInPandas(_decode_packed(shape, problems, scoring), schema)
        where = str(config.parquet)
    if scorer is not None:
        decoded = decoded.withColumn("label1", scorer(spark, shipped, shape, config)(functions.col("pixels")))
    scored = decoded.select(
        *META_COLUMNS,
        (functions.lit(1.0) - functions.col("label1").cast("double")).alias("label0"),
        functions.col("label1").cast("double").alias("label1"),
        (functions.col("label1") > functions.lit(threshold)).cast("long").alias("real"),
    )
    report = SparkReport(output=config.output, table=config.table, threshold=threshold)
    with atomic_folder(config.output) as folder:
        target = folder / "data"
        scored.write.mode("error").parquet(_spark_uri(target))
        parts = sorted(part for part in target.iterdir() if part.suffix == ".parquet")
        for part in parts:
            part.rename(folder / part.name)
        shutil.rmtree(target)
        # A task that Spark ran twice (a retry, a speculative copy) reports its files twice.
        skipped = dict(problems.value)
        report.n_scored = sum(pq.ParquetFile(folder / part.name).metadata.num_rows for part in parts)
        if listed is not None and len(listed) > report.n_scored + len(skipped):
            seen = set(skipped)
            for part in parts:
                seen.update(pq.read_table(folder / part.name, columns=["filename"])["filename"].to_pylist())
            skipped.update(_unread_files(spark, listed, seen, roots, shape, planes))
        skipped = dict(sorted(skipped.items()))
        report.n_edge = sum(1 for message in skipped.values() if message == _EDGE)
        report.bad_files = [(name, message) for name, message in skipped.items() if message != _EDGE]
        report.n_files = report.n_scored + len(skipped)
        if report.n_files == 0:
            raise DataError(f"{where}: no cutout files (*.fits, *.fit, *.fits.gz)")
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
            report.n_real = _write_table(folder, config.table, threshold)
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
        path = Path(_local_name(uri, roots, escaped=True))
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
    """Say why a file Spark did not read cannot be scored; None for what otrain-infer does not list (a pipe)."""
    content = None
    if urllib.parse.urlparse(uri).scheme == "file" and path.exists() and not path.is_file():
        return None
    if not local:
        try:
            content = _hadoop_read(spark, uri)
        except Exception as error:  # py4j's Java exception
            return f"{path}: cannot read the file ({_spark_message(error)})"
    try:
        read_for_model(path, shape, planes, content=content)
    except Exception as error:
        return failure_message(path, error)
    return f"{path}: Spark could not read the file, though the driver can (check the executors' access to it)"


def _hadoop_read(spark: Any, uri: str) -> bytes:
    """Read a file whole on the driver through Spark's Hadoop file systems (hdfs:, s3a:, file: ...)."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(jvm.java.net.URI(uri))
    system = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if system.getFileStatus(path).getLen() == 0:
        return b""  # what Spark skipped as empty (a named pipe has no length either, and would never end)
    stream = system.open(path)
    try:
        return bytes(jvm.org.apache.hadoop.io.IOUtils.readFullyToByteArray(stream))
    finally:
        stream.close()


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
        Column -> column of P(real), re-weighted by ``--prob-ratio``.
    """
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import DoubleType

    return predict_batch_udf(
        _make_predict_fn(model_file.name, config.batch_size, config.prob_ratio),
        return_type=DoubleType(),
        batch_size=config.batch_size,
        input_tensor_shapes=[list(shape)],
    )
