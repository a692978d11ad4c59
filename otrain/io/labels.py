"""A labels table: which candidates are real and which bogus, by candidate id.

The table is a CSV file whose header row names at least the columns ``candid`` and ``label``
(in any order, other columns ignored): one row per candidate, label ``1`` for real and ``0``
for bogus. The marks the vetting page exports (``cand_ID``, ``mark``: ``real``, ``bogus`` or
``skip``, which is no label) are read as such a table. Ids are read and matched as text
through :func:`otrain.io.ids.candidate_key`, never through ``float``, so 19-digit ZTF candids
stay exact. A candidate listed twice with the same label is one label; with two different
labels it is an error.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from pathlib import Path

from otrain.errors import DataError
from otrain.io.ids import candidate_key

__all__ = ["LABEL_COLUMNS", "MARK_COLUMNS", "csv_rows", "read_labels"]

#: The columns a labels table must have.
LABEL_COLUMNS = ("candid", "label")
#: The columns of the vetting page's marks (``otrain-report``'s "Export marks"), read instead.
MARK_COLUMNS = ("cand_ID", "mark")
#: How a label cell may be spelled, and the label it means (None: no label, the row is passed over).
_LABELS: dict[str, int | None] = {"1": 1, "0": 0, "1.0": 1, "0.0": 0}
_MARKS: dict[str, int | None] = {"real": 1, "bogus": 0, "skip": None}


def csv_rows(path: Path, column_sets: Sequence[tuple[str, ...]], needs: str) -> Iterator[tuple[int, dict[str, str]]]:
    """Read a UTF-8 CSV file with a header row: each non-blank row's line number and named cells.

    Parameters
    ----------
    path : Path
        The file; a byte-order mark is allowed, blank lines are passed over.
    column_sets : sequence of tuple of str
        The columns to read: the first set whose columns the header all holds, in any order
        (others are ignored); a short row's missing cells are empty.
    needs : str
        What the header needs, in words, for the message when no set is complete.

    Yields
    ------
    tuple
        (line number, {column: cell}) for the columns of the set read.

    Raises
    ------
    DataError
        One line naming the file (and the line): not readable, not UTF-8, no header, a missing
        column (those of the first set), not CSV.
    """
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as error:
        raise DataError(f"{path}: cannot read it ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason})") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None or not any(cell.strip() for cell in header):
            raise DataError(f"{path}: no header line (expected the columns {','.join(column_sets[0])})")
        columns: dict[str, int] = {}
        for index, cell in enumerate(header):
            columns.setdefault(cell.strip(), index)
        names = next((names for names in column_sets if all(name in columns for name in names)), None)
        if names is None:
            missing = [name for name in column_sets[0] if name not in columns]
            raise DataError(
                f"{path}: the header lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing)} ({needs})"
            )
        for row in reader:
            if any(cell.strip() for cell in row):
                yield reader.line_num, {name: row[columns[name]] if columns[name] < len(row) else "" for name in names}
    except csv.Error as error:
        raise DataError(f"{path}: line {reader.line_num}: not valid CSV ({error})") from None


def read_labels(path: Path) -> dict[str, int]:
    """Read a labels CSV into ``{candidate key: label}``.

    Parameters
    ----------
    path : Path
        A UTF-8 CSV file whose header row holds ``candid`` and ``label``. Blank lines are ignored.

    Returns
    -------
    dict
        Each candidate's key (:func:`otrain.io.ids.candidate_key`) -> 1 (real) or 0 (bogus), in
        the order of first appearance.

    Raises
    ------
    DataError
        One line naming the file (and the line) and the problem: not UTF-8, no header, a missing
        column, not CSV, an empty id, a label other than 1 or 0, or a candidate given two
        different labels.
    """
    labels: dict[str, int] = {}
    first_line: dict[str, int] = {}
    needs = f"needs {','.join(LABEL_COLUMNS)}, in any order, or the vetting page's {','.join(MARK_COLUMNS)}"
    for line, cells in csv_rows(path, (LABEL_COLUMNS, MARK_COLUMNS), needs):
        names, spellings = (LABEL_COLUMNS, _LABELS) if "label" in cells else (MARK_COLUMNS, _MARKS)
        key = candidate_key(cells[names[0]])
        if not key:
            raise DataError(f"{path}: line {line}: no candidate id in column {names[0]}")
        shown = cells[names[1]]
        if shown.strip() not in spellings:
            allowed = "1 (real) nor 0 (bogus)" if spellings is _LABELS else "real, bogus nor skip"
            raise DataError(f"{path}: line {line}: {names[1]} {shown!r} is neither {allowed}")
        label = spellings[shown.strip()]
        if label is None:  # a skip mark: no label
            continue
        if key in labels and labels[key] != label:
            raise DataError(
                f"{path}: line {line}: candidate {key} is labelled {label}, but {labels[key]} on line {first_line[key]}"
            )
        if key not in labels:
            labels[key] = label
            first_line[key] = line
    return labels
