"""The alert packets of a scored night, found by the names otrain-infer gave them in its table.

otrain-infer names a packet ``<file>``, ``<file>#<n>`` or ``<archive>/<member>`` as it was given
``--cutouts`` (:mod:`otrain.io.alerts`); otrain-report may be given the same folder or file under
another spelling. The packets are read once, as a stream, and those the table names are kept,
by their name relative to ``--cutouts`` (the folder's name left out, a file's name kept), so that
the page finds each row's pixels as it finds a FITS file's.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from otrain.io.alerts import Alert, iter_alerts
from otrain.score.inference import printable_path
from otrain.score.sources import packet_sources

__all__ = ["PacketIndex", "index_packets"]


class PacketIndex:
    """The packets under ``--cutouts`` that a table names, and how many packets there are.

    Attributes
    ----------
    alerts : dict
        Name relative to ``--cutouts`` (as :func:`otrain.score.inference.printable_path` spells
        it) -> the packet, for the packets whose name ends a name of the table.
    n_top : int
        Packets (bad ones included) in the folder's own files, or in the file given.
    n_all : int
        Packets in its sub-folders too.
    nested : set of str
        The names of :attr:`alerts` in files of sub-folders.
    """

    def __init__(self) -> None:
        self.alerts: dict[str, Alert] = {}
        self.nested: set[str] = set()
        self.n_top = 0
        self.n_all = 0


def _relative(name: str, source: Path, cutouts: Path) -> str:
    """Return a packet's name relative to ``--cutouts``: inside a folder, or after a file's name."""
    within = name[len(str(source)) :]  # "", "#n" or "/member" (a packet's name starts with its file's)
    if source == cutouts:
        return cutouts.name + within
    return source.relative_to(cutouts).as_posix() + within


def index_packets(cutouts: Path, names: Iterable[str]) -> PacketIndex:
    """Read the packets under ``cutouts`` once and keep those ``names`` (the table's) may be.

    Parameters
    ----------
    cutouts : Path
        ``--cutouts``: a folder (walked with its sub-folders) or a packet file or tarball.
    names : iterable of str
        The table's file names.

    Returns
    -------
    PacketIndex
    """
    endings: set[str] = set()
    for name in names:
        parts = PurePosixPath(name).parts
        endings.update("/".join(parts[start:]) for start in range(len(parts)))
    index = PacketIndex()
    for source in packet_sources(cutouts, recursive=True):
        top = source == cutouts or source.parent == cutouts
        for item in iter_alerts(source):
            index.n_all += 1
            index.n_top += top
            if isinstance(item, Alert):
                relative = printable_path(_relative(item.name, source, cutouts))
                if relative in endings:
                    index.alerts[relative] = item
                    if not top:
                        index.nested.add(relative)
    return index
