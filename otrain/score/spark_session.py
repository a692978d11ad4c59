"""The Spark session of otrain-infer-spark: started quiet, stopped on error, its failures in one line.

:func:`require_spark` checks that pyspark and a Java runtime are there before anything starts;
:func:`spark_session` starts the session with otrain's defaults (``--conf`` overrides them),
keeps Spark's and Java's own output out of otrain's, and turns a failure of the JVM into one
line (:func:`spark_message`). pyspark is imported only by the functions that need it.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from otrain.errors import DataError, OptionError

__all__ = ["require_spark", "spark_message", "spark_session"]

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
                raise DataError(f"Spark failed (master {master}): {spark_message(error)}") from None
            # Java may exit before saying anything to pyspark ("Java gateway process exited"): what it
            # printed says why, and a bad --conf value is the usual cause.
            reason = _java_start_failure(log_file) if "JAVA_GATEWAY_EXITED" in str(error) else None
            given = f"; --conf given: {' '.join(conf)}" if conf else ""
            reason = f"Java exited: {reason}" if reason else spark_message(error)
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


def spark_message(error: BaseException) -> str:
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
