"""ZTF alerts stored as Parquet tables (the Fink broker's): telling them apart, and their rows as packets.

A table of ZTF alerts holds a packet's fields as columns: ``candid``, ``objectId``, the
``candidate`` struct of measurements and the ``cutoutScience``/``cutoutTemplate``/
``cutoutDifference`` structs whose ``stampData`` are the gzipped FITS stamps. otrain-infer-spark
``--parquet`` tells such a folder from otrain-pack's by these columns (:func:`is_alert_table`),
selects the fields it reads as flat columns (:func:`select_alert_columns`, on the driver), and
each executor turns a row back into the packet record that
:func:`otrain.io.alerts.alert_from_record` reads (:func:`alert_record`).

pyspark, pyarrow and pandas are imported only by the functions that need them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from otrain.io.alerts import PLANE_FIELDS

__all__ = ["CANDIDATE_FIELDS", "alert_record", "is_alert_table", "select_alert_columns"]

#: The candidate's fields read (the measurements of :func:`otrain.io.alerts.alert_from_record`).
CANDIDATE_FIELDS = ("magpsf", "sigmapsf", "fid", "fwhm", "ra", "dec", "xpos", "ypos", "isdiffpos")
#: The columns that make a Parquet folder a table of ZTF alerts, not otrain-pack's.
_TABLE_COLUMNS = frozenset({"candid", "objectId", "candidate", "cutoutDifference"})


def is_alert_table(folder: Path) -> bool:
    """Tell a Parquet folder of ZTF alerts (Fink's) from otrain-pack's by the columns of its first file.

    Parameters
    ----------
    folder : Path
        The folder; its first ``*.parquet`` file in name order, sub-folders included (Spark's
        partitions), decides.

    Returns
    -------
    bool
        True when that file has the columns ``candid``, ``objectId``, ``candidate`` and
        ``cutoutDifference``.
    """
    import pyarrow.parquet as pq

    files = sorted(path for path in folder.rglob("*.parquet") if not path.name.startswith(("_", ".")))
    if not files:
        return False
    try:
        names = set(pq.read_schema(files[0]).names)
    except (OSError, ValueError):
        return False
    return names >= _TABLE_COLUMNS


def select_alert_columns(table: Any) -> Any:
    """Select the flat columns :func:`alert_record` reads from a Spark DataFrame of ZTF alerts.

    Parameters
    ----------
    table : pyspark.sql.DataFrame
        The alert table as Spark reads it.

    Returns
    -------
    pyspark.sql.DataFrame
        ``candid`` as text (exact in pandas, even beside nulls), ``objectId``, each field of
        :data:`CANDIDATE_FIELDS` and each cutout's ``stampData`` under the cutout's name; a
        field the table lacks is a null column.
    """
    from pyspark.sql import functions

    fields = {field.name: field.dataType for field in table.schema.fields}

    def names_in(column: str) -> set[str]:
        kind = fields.get(column)
        return set(kind.fieldNames()) if hasattr(kind, "fieldNames") else set()

    candidate = names_in("candidate")
    columns = [
        functions.col("candid").cast("string").alias("candid"),
        functions.col("objectId").cast("string").alias("objectId"),
    ]
    for name in CANDIDATE_FIELDS:
        columns.append((functions.col(f"candidate.{name}") if name in candidate else functions.lit(None)).alias(name))
    for name in PLANE_FIELDS.values():
        stamp = functions.col(f"{name}.stampData") if "stampData" in names_in(name) else functions.lit(None)
        columns.append(stamp.alias(name))
    return table.select(*columns)


def _cell(value: Any) -> Any:
    """Return a pandas cell as a packet holds it: None for a missing value (None, NaN, pandas' NA)."""
    import pandas as pd

    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def alert_record(row: dict[str, Any]) -> dict[str, Any]:
    """Turn a row of :func:`select_alert_columns` (as pandas gives it) back into a ZTF packet record.

    Parameters
    ----------
    row : dict
        One row: ``candid`` (text), ``objectId``, the candidate's fields, each cutout's stamp bytes.

    Returns
    -------
    dict
        The record as ``fastavro`` decodes a packet, for :func:`otrain.io.alerts.alert_from_record`.
    """
    record: dict[str, Any] = {
        # Fink's tables hold ZTF's alerts as ZTF published them: its stamp-size rule for EDGE holds.
        "publisher": "ZTF",
        "candid": _cell(row["candid"]),
        "objectId": _cell(row["objectId"]),
        "candidate": {name: _cell(row[name]) for name in CANDIDATE_FIELDS},
    }
    for name in PLANE_FIELDS.values():
        stamp = _cell(row[name])
        record[name] = None if stamp is None else {"stampData": bytes(stamp)}
    return record
