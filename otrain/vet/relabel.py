"""otrain-relabel: the marks exported from a vetting page, turned into a labelled cutout tree.

The vetting page's "Export marks" button writes a CSV with one line per mark: the candidate
(``cand_ID``), its cutout (``file``, relative to the folder the page was made from), the mark
(``real``, ``bogus`` or ``skip``) and the score the page showed (``p_real``). This module reads
it, merges the marks of each file (``skip`` is no label, so it yields to the other marks; real
and bogus together are a contradiction), adds the labelled cutouts of the ``--include`` folders
(their ``true/`` and ``false/``, listed as otrain-convert lists them), checks that every labelled
file exists, that no file has two labels and that no two files land on the same name, and only
then writes ``<out>/true`` and ``<out>/false`` at once, with the marker file ``RELABEL_MARKER``
at the root recording what the tree holds. That is the layout otrain-convert reads; it looks only
into ``true/`` and ``false/``.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from otrain import __version__
from otrain.errors import DataError
from otrain.io.atomic import atomic_folder
from otrain.io.cutouts import list_cutouts
from otrain.io.labels import csv_rows
from otrain.io.markers import write_marker
from otrain.io.progress import track
from otrain.options import FITS_SUFFIXES, RELABEL_FOLDERS, RelabelConfig

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
        Label folder (``true``, ``false``) -> {name in that folder: its source}: a path relative
        to the cutouts folder for a marked file, an absolute path for an included one.
    n_skipped : int
        Files marked only ``skip``.
    included : dict
        Each ``--include`` folder, as given -> label folder -> how many of its files the tree
        holds (a file also marked with the same label counts as marked, not here).
    """

    out: Path
    files: dict[str, dict[str, str]] = field(default_factory=dict)
    n_skipped: int = 0
    included: dict[Path, dict[str, int]] = field(default_factory=dict)

    def _marked(self, mark: str) -> int:
        folder = RELABEL_FOLDERS[mark]
        return len(self.files.get(folder, {})) - sum(counts.get(folder, 0) for counts in self.included.values())

    @property
    def n_real(self) -> int:
        """Files marked real (written to ``true/``)."""
        return self._marked("real")

    @property
    def n_bogus(self) -> int:
        """Files marked bogus (written to ``false/``)."""
        return self._marked("bogus")


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
    found = []
    for line, cells in csv_rows(marks, (REQUIRED_COLUMNS,), f"needs {','.join(REQUIRED_COLUMNS)}, in any order"):
        mark = cells["mark"].strip().lower()
        if mark not in MARKS:
            raise DataError(f"{marks}: line {line}: mark {cells['mark']!r} is not real, bogus or skip")
        found.append(Mark(line, _cutout_name(cells["file"].strip(), marks, line), mark))
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


@dataclass(frozen=True)
class _Entry:
    """One file of the tree to write: where it comes from and who labelled it."""

    source: Path  # the file placed into the tree
    record: str  # its source as the marker records it
    folder: str  # its label folder
    origin: str  # who gave it its label, for messages
    included: Path | None = None  # its --include folder, None for a marked file


def _identity(path: Path) -> tuple[int, int]:
    """Return the device and inode of the file ``path`` names, links followed (what os.path.samefile compares)."""
    try:
        info = os.stat(path)
    except OSError as error:
        raise DataError(f"{path}: cannot read it ({error.strerror or error})") from None
    return info.st_dev, info.st_ino


def _entries(labels: dict[PurePosixPath, str], config: RelabelConfig, marks: Sequence[Mark]) -> list[_Entry]:
    """List the marked files, then the files of each included folder; raise DataError for missing ones."""
    missing = [name.as_posix() for name in labels if not _is_file(config.cutouts / name)]
    if missing:
        shown = ", ".join(missing[:LISTED_MISSING]) + (", ..." if len(missing) > LISTED_MISSING else "")
        raise DataError(
            f"{config.marks}: {len(missing)} marked file{'s' if len(missing) > 1 else ''} not found under "
            f"{config.cutouts}: {shown}"
        )
    lines: dict[tuple[PurePosixPath, str], int] = {}
    for mark in marks:
        lines.setdefault((mark.file, mark.mark), mark.line)
    entries = [
        _Entry(
            config.cutouts / name,
            name.as_posix(),
            RELABEL_FOLDERS[mark],
            f"marked {mark} on line {lines[name, mark]} of {config.marks}",
        )
        for name, mark in labels.items()
    ]
    for included in config.include:
        for folder in RELABEL_FOLDERS.values():
            entries += [
                _Entry(path, os.path.abspath(path), folder, f"labelled {folder} in --include {included}", included)
                for path in list_cutouts(included / folder)
            ]
    return entries


def _plan(entries: Sequence[_Entry], config: RelabelConfig) -> dict[str, dict[str, _Entry]]:
    """Return label folder -> {name: entry}, one entry per file; raise DataError on two labels or one name."""
    plan: dict[str, dict[str, _Entry]] = {folder: {} for folder in RELABEL_FOLDERS.values()}
    seen: dict[tuple[int, int], _Entry] = {}
    for entry in entries:
        identity = _identity(entry.source)
        known = seen.get(identity)
        if known is not None:
            if known.folder == entry.folder:
                continue  # one file given twice with one label: one entry, the first
            files = str(known.source)
            if known.source != entry.source:
                files += f" and {entry.source} (one file)"
            why = (
                "the vetting contradicts the training label"
                if (known.included is None) != (entry.included is None)
                else "one file cannot be both"
            )
            raise DataError(f"{files}: {known.origin}, but {entry.origin}: {why}; correct one of them")
        name = entry.source.name
        other = plan[entry.folder].get(name)
        if other is not None:
            target = config.out / entry.folder / name
            if other.included is None and entry.included is None:
                raise DataError(
                    f"{config.marks}: {other.record} and {entry.record} are both marked "
                    f"{'real' if entry.folder == RELABEL_FOLDERS['real'] else 'bogus'} and would both be {target}; "
                    "rename one of them"
                )
            raise DataError(
                f"{other.source} ({other.origin}) and {entry.source} ({entry.origin}) would both be {target}; "
                "rename one of them"
            )
        plan[entry.folder][name] = entry
        seen[identity] = entry
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
    """Write the labelled tree of a marks CSV (see :class:`~otrain.options.data.RelabelConfig`).

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
        A bad marks file, a contradiction, a missing file, one file with two labels (marked one
        way and included the other, for one), two files with one name in one label folder,
        nothing marked real or bogus, or a link or copy that failed. Nothing is written.
    """
    marks = read_marks(config.marks)
    labels, n_skipped = label_files(marks, config.marks)
    if not labels:
        raise DataError(f"{config.marks}: no real or bogus mark ({n_skipped} file(s) skipped); nothing to write")
    plan = _plan(_entries(labels, config, marks), config)
    included = {
        folder: {label: sum(entry.included == folder for entry in plan[label].values()) for label in plan}
        for folder in config.include
    }
    marked = {
        mark: sum(entry.included is None for entry in plan[label].values()) for mark, label in RELABEL_FOLDERS.items()
    }
    jobs = [(folder, name, entry.source) for folder, files in plan.items() for name, entry in sorted(files.items())]
    with atomic_folder(config.out) as staging:
        for folder in plan:
            (staging / folder).mkdir()
        for folder, name, source in track(jobs, len(jobs), f"relabel ({config.mode})"):
            _place(source, staging / folder / name, config.mode, config.out / folder / name)
        record = {
            "otrain_version": __version__,
            "marks": os.path.abspath(config.marks),
            "cutouts": os.path.abspath(config.cutouts),
            "mode": config.mode,
            "counts": marked | {"skipped": n_skipped},
            "included": [{"folder": os.path.abspath(folder), "counts": counts} for folder, counts in included.items()],
            "files": {
                folder: {name: entry.record for name, entry in sorted(files.items())} for folder, files in plan.items()
            },
        }
        write_marker(staging, "otrain-relabel", record)
    for mark, folder in RELABEL_FOLDERS.items():
        if not plan[folder]:
            logger.warning(
                "no file is marked %s: %s is empty, and otrain-convert needs cutouts in both label folders",
                mark,
                config.out / folder,
            )
    return RelabelReport(
        out=config.out,
        files={folder: {name: entry.record for name, entry in files.items()} for folder, files in plan.items()},
        n_skipped=n_skipped,
        included=included,
    )
