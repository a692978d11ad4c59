"""otrain-pack: candidate cutouts into Parquet files, and the format otrain-infer-spark --parquet reads.

Each cutout becomes one row: the metadata columns of infer_results.dat up to ``cand_ID``
(:data:`META_COLUMNS`), its EDGE flag, and its planes as raw float32 pixels, cropped at most to
``--cutout-size`` (composing two centre crops gives the single crop otrain-infer makes); an
unreadable file becomes a row holding its error. The folder's marker and the files' schema
metadata (:data:`PLANES_KEY`) say what it holds (:func:`packed_planes`).

Split from :mod:`otrain.score.spark`, which reads these folders: packing never needs Spark.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from otrain.data.cutouts import crop_center
from otrain.errors import DataError, first_line, log_listed
from otrain.io.atomic import atomic_folder
from otrain.io.cutouts import list_cutouts, read_header, read_pixels
from otrain.io.markers import has_marker, write_marker
from otrain.io.parallel import map_chunks
from otrain.options import MAX_LISTED_BAD_FILES, PackConfig
from otrain.score.inference import INFER_COLUMNS, failure_message, meta_cells, printable_path

__all__ = [
    "META_COLUMNS",
    "PACK_ROWS_PER_FILE",
    "PLANES_KEY",
    "TEXT_COLUMNS",
    "PackReport",
    "arrow",
    "meta_fields",
    "pack",
    "packed_planes",
    "text_cell",
]

logger = logging.getLogger("otrain")

#: Rows per Parquet part file of otrain-pack (about 16 MB of 64x64 float32 cutouts).
PACK_ROWS_PER_FILE = 1024
#: The metadata columns both Parquet formats share (the table's columns up to cand_ID).
META_COLUMNS = INFER_COLUMNS[:11]
TEXT_COLUMNS = ("filename", "originalFile", "cand_ID")
#: Schema metadata keys of an otrain-pack folder.
PLANES_KEY = b"otrain.planes"


def arrow() -> Any:
    """Return pyarrow, imported when first needed."""
    import pyarrow as pa

    return pa


def meta_fields() -> list[Any]:
    """Return the Arrow fields of the metadata columns (text or float64), as both Parquet formats hold them."""
    pa = arrow()
    return [pa.field(name, pa.string() if name in TEXT_COLUMNS else pa.float64()) for name in META_COLUMNS]


def text_cell(value: Any) -> str:
    """Return a text column's cell as written."""
    return str(value)


@dataclass
class PackReport:
    """What one packing run did."""

    output: Path
    n_files: int = 0
    n_edge: int = 0
    n_parts: int = 0
    bad_files: list[tuple[Path, str]] = field(default_factory=list)


def _pack_chunk(jobs: Sequence[tuple[Path, tuple[str, ...] | None, int]]) -> dict[str, list[Any]]:
    """Worker task: read a chunk of files into the columns of otrain-pack's Parquet rows."""
    columns: dict[str, list[Any]] = {name: [] for name in (*META_COLUMNS, "edge", "error", "shape", "pixels")}
    for path, planes, cutout_size in jobs:
        cells: tuple[Any, ...] = (printable_path(path), *([None] * 10))
        edge, error, shape, raw = False, None, None, None
        try:
            meta, location = read_header(path, planes)
            cells = meta_cells(printable_path(path), meta)
            edge = meta.edge is True
            if not edge:
                pixels = np.ascontiguousarray(crop_center(read_pixels(path, location), cutout_size, path))
                shape, raw = list(pixels.shape), pixels.astype("<f4").tobytes()
        except Exception as problem:  # a bad file becomes a row holding its error, scored as otrain-infer would
            error = failure_message(path, problem)
        for name, value in zip(META_COLUMNS, cells, strict=True):
            if name in TEXT_COLUMNS and value is not None:
                value = text_cell(value)
            columns[name].append(value)
        columns["edge"].append(edge)
        columns["error"].append(error)
        columns["shape"].append(shape)
        columns["pixels"].append(raw)
    return columns


def _pack_schema(planes: tuple[str, ...] | None, cutout_size: int) -> Any:
    pa = arrow()
    fields = [
        *meta_fields(),
        pa.field("edge", pa.bool_()),
        pa.field("error", pa.string()),
        pa.field("shape", pa.list_(pa.int32())),
        pa.field("pixels", pa.binary()),
    ]
    metadata = {PLANES_KEY: json.dumps(list(planes) if planes is not None else None).encode()}
    metadata[b"otrain.cutout_size"] = str(cutout_size).encode()
    return pa.schema(fields, metadata=metadata)


def pack(config: PackConfig) -> PackReport:
    """Write a folder of cutouts as Parquet part files, atomically.

    Parameters
    ----------
    config : PackConfig
        Validated options of otrain-pack.

    Returns
    -------
    PackReport
        Counts (files, EDGE, unreadable) and the output folder.

    Raises
    ------
    DataError
        When the folder holds no cutout file; nothing is written then.
    """
    import pyarrow.parquet as pq

    pa = arrow()
    files = list_cutouts(config.cutouts, recursive=config.recursive)
    if not files:
        raise DataError(f"{config.cutouts}: no cutout files (*.fits, *.fit, *.fits.gz)")
    report = PackReport(output=config.output, n_files=len(files))
    schema = _pack_schema(config.planes, config.cutout_size)
    jobs = [(path, config.planes, config.cutout_size) for path in files]
    with atomic_folder(config.output) as folder:
        writer = None
        rows_in_part = 0
        try:
            for _, columns in map_chunks(
                _pack_chunk,
                jobs,
                workers=config.workers,
                description="packing cutouts",
                preload=["otrain.score.spark"],
                chunk_size=256,
            ):
                report.n_edge += sum(columns["edge"])
                report.bad_files += [
                    (Path(name), error)
                    for name, error in zip(columns["filename"], columns["error"], strict=True)
                    if error is not None
                ]
                if writer is None or rows_in_part >= PACK_ROWS_PER_FILE:
                    if writer is not None:
                        writer.close()
                    writer = pq.ParquetWriter(folder / f"part-{report.n_parts:05d}.parquet", schema)
                    report.n_parts += 1
                    rows_in_part = 0
                writer.write_table(pa.Table.from_pydict(columns, schema=schema))
                rows_in_part += len(columns["filename"])
        finally:
            if writer is not None:
                writer.close()
        log_listed(
            [f"unreadable: {message}" for _, message in report.bad_files],
            logging.WARNING,
            "unreadable cutouts",
            MAX_LISTED_BAD_FILES,
        )
        write_marker(folder, "otrain-pack", {"planes": config.planes, "cutout_size": config.cutout_size})
    return report


def packed_planes(folder: Path) -> tuple[str, ...] | None:
    """Return the planes an otrain-pack folder holds, from its files' schema."""
    import pyarrow.parquet as pq

    parts = sorted(folder.glob("*.parquet"))
    if not has_marker(folder, "otrain-pack") or not parts:
        raise DataError(f"{folder}: not a Parquet folder written by otrain-pack")
    try:
        metadata = pq.read_schema(parts[0]).metadata or {}
        planes = json.loads(metadata[PLANES_KEY])
    except (OSError, KeyError, ValueError) as error:
        raise DataError(f"{parts[0]}: not a Parquet file written by otrain-pack ({first_line(error)})") from None
    return tuple(planes) if planes is not None else None
