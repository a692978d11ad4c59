"""otrain-relabel: the marks exported from a vetting page, turned into a labelled cutout tree.

The vetting page's "Export marks" button writes a CSV with one line per mark: the candidate
(``cand_ID``), its cutout (``file``, relative to the folder the page was made from), the mark
(``real``, ``bogus`` or ``skip``) and the score the page showed (``p_real``). This module reads
it, merges the marks of each file (``skip`` is no label, so it yields to the other marks; real
and bogus together are a contradiction), checks that every labelled file exists and that no two
land on the same name, and only then writes ``<out>/true`` and ``<out>/false`` at once, with
:data:`~otrain.config.RELABEL_MARKER` at the root recording what the tree holds. That is the
layout otrain-convert reads; it looks only into ``true/`` and ``false/``.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from otrain import __version__
from otrain.atomic import atomic_folder
from otrain.config import FITS_SUFFIXES, RELABEL_FOLDERS, RELABEL_MARKER, RelabelConfig
from otrain.errors import DataError
from otrain.progress import track

__all__ = ["MARKS", "REQUIRED_COLUMNS", "Mark", "RelabelReport", "label_files", "read_marks", "relabel"]

logger = logging.getLogger("otrain")

#: The columns the marks CSV must have, in the order the vetting page writes them.
REQUIRED_COLUMNS = ("cand_ID", "file", "mark", "p_real")
#: The marks a line may carry.
MARKS = ("real", "bogus", "skip")
#: How many missing files an error names.
LISTED_MISSING = 5


@dataclass(frozen=True)
class Mark:
    """One line of the marks CSV.

    Attributes
    ----------
    line : int
        Its line number in the CSV (the header is line 1).
    file : PurePosixPath
        The cutout, relative to the cutouts folder, normalised (no ``.`` parts).
    mark : str
        ``real``, ``bogus`` or ``skip``.
    """

    line: int
    file: PurePosixPath
    mark: str


@dataclass
class RelabelReport:
    """What one otrain-relabel run wrote.

    Attributes
    ----------
    out : Path
        The tree.
    files : dict
        Label folder (``true``, ``false``) -> {name in that folder: source path relative to the
        cutouts folder}.
    n_skipped : int
        Files marked only ``skip``.
    """

    out: Path
    files: dict[str, dict[str, str]] = field(default_factory=dict)
    n_skipped: int = 0

    @property
    def n_real(self) -> int:
        """Files written to ``true/``."""
        return len(self.files.get(RELABEL_FOLDERS["real"], {}))

    @property
    def n_bogus(self) -> int:
        """Files written to ``false/``."""
        return len(self.files.get(RELABEL_FOLDERS["bogus"], {}))


def _cutout_name(text: str, marks: Path, line: int) -> PurePosixPath:
    """Check a ``file`` cell and return it as a normalised path relative to the cutouts folder."""
    where = f"{marks}: line {line}"
    if not text:
        raise DataError(f"{where}: empty file name")
    if "\0" in text:
        raise DataError(f"{where}: {text!r} holds a NUL character; not a file name")
    name = PurePosixPath(text)
    if name.is_absolute():
        raise DataError(f"{where}: {text!r} is an absolute path; file names are relative to --cutouts")
    if ".." in name.parts:
        raise DataError(f"{where}: {text!r} leaves the --cutouts folder ('..'); file names must stay inside it")
    if not name.parts:
        raise DataError(f"{where}: {text!r} is not a file name")
    if not name.name.lower().endswith(FITS_SUFFIXES):
        raise DataError(f"{where}: {text!r} is not a FITS cutout ({', '.join(FITS_SUFFIXES)})")
    return name


def read_marks(marks: Path) -> list[Mark]:
    """Read the marks CSV that the vetting page exports.

    Parameters
    ----------
    marks : Path
        A UTF-8 CSV file whose header names at least :data:`REQUIRED_COLUMNS`, in any order.
        Blank lines are ignored; marks are read without regard to case or surrounding spaces.

    Returns
    -------
    list of Mark
        Every mark, in file order.

    Raises
    ------
    DataError
        One line naming the file and the problem: not UTF-8, no header, missing columns (named),
        not CSV, a mark other than real/bogus/skip or a bad file name (with its line number).
    """
    try:
        text = marks.read_bytes().decode("utf-8-sig")
    except OSError as error:
        raise DataError(f"{marks}: cannot read it ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{marks}: not UTF-8 text (byte {error.start}: {error.reason})") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None or not any(cell.strip() for cell in header):
            raise DataError(f"{marks}: no header line (expected the columns {','.join(REQUIRED_COLUMNS)})")
        columns: dict[str, int] = {}
        for index, cell in enumerate(header):
            columns.setdefault(cell.strip(), index)
        missing = [name for name in REQUIRED_COLUMNS if name not in columns]
        if missing:
            raise DataError(
                f"{marks}: the header lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                f"(needs {','.join(REQUIRED_COLUMNS)}, in any order)"
            )
        file_column, mark_column = columns["file"], columns["mark"]
        found = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            line = reader.line_num
            mark = (row[mark_column] if mark_column < len(row) else "").strip().lower()
            if mark not in MARKS:
                shown = row[mark_column] if mark_column < len(row) else ""
                raise DataError(f"{marks}: line {line}: mark {shown!r} is not real, bogus or skip")
            name = (row[file_column] if file_column < len(row) else "").strip()
            found.append(Mark(line, _cutout_name(name, marks, line), mark))
    except csv.Error as error:
        raise DataError(f"{marks}: line {reader.line_num}: not valid CSV ({error})") from None
    return found


def label_files(marks: Sequence[Mark], marks_file: Path) -> tuple[dict[PurePosixPath, str], int]:
    """Merge the marks of each file into one label.

    Parameters
    ----------
    marks : sequence of Mark
        As :func:`read_marks` returns them.
    marks_file : Path
        The CSV they come from (for messages).

    Returns
    -------
    dict
        Each file marked real or bogus (at least once) -> ``real`` or ``bogus``, in the order of
        their first mark.
    int
        How many files were marked only ``skip``.

    Raises
    ------
    DataError
        When a file is marked both real and bogus: names the file and a line of each.
    """
    first: dict[PurePosixPath, dict[str, int]] = {}
    for mark in marks:
        first.setdefault(mark.file, {}).setdefault(mark.mark, mark.line)
    contradictions = [(name, lines) for name, lines in first.items() if "real" in lines and "bogus" in lines]
    if contradictions:
        name, lines = contradictions[0]
        more = len(contradictions) - 1
        raise DataError(
            f"{marks_file}: {name} is marked real (line {lines['real']}) and bogus (line {lines['bogus']})"
            f"{f'; so are {more} other file(s)' if more else ''}; keep one mark per file"
        )
    labelled = {name: mark for name, lines in first.items() for mark in ("real", "bogus") if mark in lines}
    return labelled, len(first) - len(labelled)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long for the file system, for one
        return False


def _plan(labels: dict[PurePosixPath, str], config: RelabelConfig) -> dict[str, dict[str, str]]:
    """Check every labelled file and return label folder -> {name: source}; raise DataError otherwise."""
    missing = [name.as_posix() for name in labels if not _is_file(config.cutouts / name)]
    if missing:
        shown = ", ".join(missing[:LISTED_MISSING]) + (", ..." if len(missing) > LISTED_MISSING else "")
        raise DataError(
            f"{config.marks}: {len(missing)} marked file{'s' if len(missing) > 1 else ''} not found under "
            f"{config.cutouts}: {shown}"
        )
    plan: dict[str, dict[str, str]] = {folder: {} for folder in RELABEL_FOLDERS.values()}
    for name, mark in labels.items():
        folder = RELABEL_FOLDERS[mark]
        other = plan[folder].setdefault(name.name, name.as_posix())
        if other != name.as_posix():
            raise DataError(
                f"{config.marks}: {other} and {name} are both marked {mark} and would both be "
                f"{config.out / folder / name.name}; rename one of them"
            )
    return plan


def _place(source: Path, target: Path, mode: str, shown: Path) -> None:
    """Put ``source`` at ``target`` as a copy, an absolute symbolic link or a hard link."""
    try:
        if mode == "copy":
            shutil.copy2(source, target)
        elif mode == "symlink":
            os.symlink(os.path.abspath(source), target)
        else:
            os.link(source, target)
    except OSError as error:
        if mode == "hardlink" and error.errno in (errno.EXDEV, errno.EPERM):
            raise DataError(
                f"{source}: cannot hard-link it into {shown.parent} ({error.strerror}: hard links need one file "
                "system that allows them); use --mode copy"
            ) from None
        raise DataError(f"{source}: cannot {mode} it to {shown} ({error.strerror or error})") from None


def relabel(config: RelabelConfig) -> RelabelReport:
    """Write the labelled tree of a marks CSV (see :class:`~otrain.config.RelabelConfig`).

    Parameters
    ----------
    config : RelabelConfig
        Validated options of otrain-relabel.

    Returns
    -------
    RelabelReport
        What the tree holds.

    Raises
    ------
    DataError
        A bad marks file, a contradiction, a missing file, two files with one name in one label
        folder, nothing marked real or bogus, or a link or copy that failed. Nothing is written.
    """
    labels, n_skipped = label_files(read_marks(config.marks), config.marks)
    if not labels:
        raise DataError(f"{config.marks}: no real or bogus mark ({n_skipped} file(s) skipped); nothing to write")
    plan = _plan(labels, config)
    jobs = [(folder, name, source) for folder, files in plan.items() for name, source in sorted(files.items())]
    with atomic_folder(config.out) as staging:
        for folder in plan:
            (staging / folder).mkdir()
        for folder, name, source in track(jobs, len(jobs), f"relabel ({config.mode})"):
            _place(config.cutouts / source, staging / folder / name, config.mode, config.out / folder / name)
        record = {
            "command": "otrain-relabel",
            "otrain_version": __version__,
            "marks": os.path.abspath(config.marks),
            "cutouts": os.path.abspath(config.cutouts),
            "mode": config.mode,
            "counts": {mark: len(plan[folder]) for mark, folder in RELABEL_FOLDERS.items()} | {"skipped": n_skipped},
            "files": {folder: dict(sorted(files.items())) for folder, files in plan.items()},
        }
        (staging / RELABEL_MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    for mark, folder in RELABEL_FOLDERS.items():
        if not plan[folder]:
            logger.warning(
                "no file is marked %s: %s is empty, and otrain-convert needs cutouts in both label folders",
                mark,
                config.out / folder,
            )
    return RelabelReport(out=config.out, files=plan, n_skipped=n_skipped)
