"""The DataFrames of otrain-infer-spark, batch and stream: the files read, the rows decoded, the rows written.

:mod:`otrain.score.spark` (a batch job) and :mod:`otrain.score.spark_stream` (``--stream``) read
the same files with the same options (:func:`file_source`), decode them with the executors'
functions of :mod:`otrain.score.spark_executor` into rows of :func:`decoded_schema`, and write
:func:`scored_rows`. pyspark is imported only when a function runs.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

from otrain.score.pack import META_COLUMNS, TEXT_COLUMNS

__all__ = ["MAX_FILE_BYTES", "cutout_roots", "decoded_schema", "file_source", "scored_rows", "spark_uri"]


def spark_uri(location: str | Path) -> str:
    """Return what Spark reads or writes: a URI as given, a local path as an absolute ``file:`` URI.

    A bare path would be resolved against the cluster's default file system (often HDFS).
    """
    text = str(location)
    if urllib.parse.urlparse(text).scheme and not Path(text).exists():
        return text
    # Not Path.as_uri(): Hadoop reads a path's characters as they are and would keep its %-escapes.
    return "file://" + str(Path(text).absolute())


#: The largest file Spark's binaryFile source reads (its content is one Java byte array).
MAX_FILE_BYTES = 2**31 - 1


def file_source(reader: Any, cutouts: str) -> Any:
    """Return the rows of the files below ``cutouts``, from ``spark.read`` or ``spark.readStream``.

    Batch and stream read the same files with the same options. A local folder
    (:func:`cutout_roots`) gives the files' ``path`` alone: Spark lists them and reads no byte,
    the executors open them (:func:`otrain.score.spark_executor.decode_files`), so a file of any
    size is read, a tarball as a stream, and no content crosses from the JVM to Python. A URI
    (``hdfs://``, ``s3a://``) gives (``path``, ``content``): Spark's file systems read the bytes.
    """
    from pyspark.sql import functions, types
    from pyspark.sql.streaming import DataStreamReader

    reader = reader.format("binaryFile")
    if isinstance(reader, DataStreamReader):
        # A file stream takes no schema from its files: binaryFile's own.
        reader = reader.schema(
            types.StructType(
                [
                    types.StructField("path", types.StringType(), False),
                    types.StructField("modificationTime", types.TimestampType(), False),
                    types.StructField("length", types.LongType(), False),
                    types.StructField("content", types.BinaryType(), True),
                ]
            )
        )
    # Every file: those with a FITS suffix are cutouts, the others are read when they hold alert
    # packets (told from their bytes by the executors), else passed over.
    files = (
        reader.option("recursiveFileLookup", "true")
        # A file Spark cannot read (no permission, gone since the listing) would fail the
        # whole job: Spark leaves it out, and _unread_files reports it with the others.
        .option("ignoreCorruptFiles", "true")
        .option("ignoreMissingFiles", "true")
        .load(spark_uri(cutouts))
    )
    if cutout_roots(cutouts) is not None:
        return files.select("path")
    # Spark fails the job on a file over 2 GiB (a night's tarball): left out here, unread
    # without reading its bytes (Spark applies the filter to the listing), and reported.
    return files.filter(functions.col("length") < functions.lit(MAX_FILE_BYTES)).select("path", "content")


def cutout_roots(cutouts: str) -> tuple[str, str] | None:
    """Return (the local --cutouts folder absolute, as given), for naming files as otrain-infer does; None for a URI."""
    local = not urllib.parse.urlparse(cutouts).scheme or Path(cutouts).exists()
    return (str(Path(cutouts).absolute()), cutouts) if local else None


def decoded_schema(scored: bool, ensemble: bool) -> Any:
    """Return the schema of the decoders' rows: the metadata, then label1 (``scored``) or the pixels, and the spread."""
    from pyspark.sql import types

    last = (
        [types.StructField("label1", types.DoubleType())]
        if scored
        else [types.StructField("pixels", types.ArrayType(types.FloatType()))]
    )
    if ensemble:
        last.append(types.StructField("spread", types.DoubleType()))
    return types.StructType(
        [
            *(
                types.StructField(name, types.StringType() if name in TEXT_COLUMNS else types.DoubleType())
                for name in META_COLUMNS
            ),
            *last,
        ]
    )


def scored_rows(decoded: Any, threshold: float, ensemble: bool) -> Any:
    """Return the output rows of decoded ones that hold label1: the columns of infer_results.dat (and the spread)."""
    from pyspark.sql import functions

    return decoded.select(
        *META_COLUMNS,
        (functions.lit(1.0) - functions.col("label1").cast("double")).alias("label0"),
        functions.col("label1").cast("double").alias("label1"),
        (functions.col("label1") > functions.lit(threshold)).cast("long").alias("real"),
        *([functions.col("spread").cast("double").alias("spread")] if ensemble else []),
    )
