"""Alert packets as otrain-convert's cutouts: labelled by a table, read in the same two passes as files.

:func:`labelled_packets` reads every packet under ``--alerts`` (:func:`otrain.io.alerts.iter_alerts`)
and keeps those whose candidate id the labels table lists, matched as text
(:func:`otrain.io.ids.candidate_key`). :func:`read_packet_headers` is the worker task of the
first pass: the packet's metadata, EDGE flag and plane shape, with the checks a cutout file gets.
:class:`PacketPixels` then stands where a file's :class:`otrain.io.cutouts.PixelLocation` does,
so the selection, balancing and cube writing of :mod:`otrain.data.convert` serve both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from otrain.data.cutouts import TRAINING_KEYWORDS, require_keywords
from otrain.errors import DataError
from otrain.io.alerts import Alert, BadPacket, iter_alerts, read_alert
from otrain.io.cutoutmeta import CutoutMeta
from otrain.io.ids import candidate_key

__all__ = ["GROUP_FIELDS", "PacketPixels", "PacketScan", "group_keyword_of", "labelled_packets", "read_packet_headers"]

#: The packet field whose value is a packet's group (its object), by survey.
GROUP_FIELDS = {"ztf": "objectId", "rubin": "diaObjectId"}


@dataclass(frozen=True)
class PacketPixels:
    """Where a packet's planes are: the packet (its FITS bytes), the planes asked for, their stacked shape."""

    alert: Alert
    planes: tuple[str, ...] | None
    height_width_channels: tuple[int, int, int]

    def read(self) -> np.ndarray:
        """Return the planes as float32 (H, W, C), as :func:`otrain.io.alerts.read_alert` reads them."""
        return read_alert(self.alert, self.planes)[1]


@dataclass
class PacketScan:
    """The packets found under ``--alerts``, and what the labels table made of them.

    Attributes
    ----------
    labelled : list
        (label, packet) of each packet the table labels, in reading order.
    bad : list
        (name, reason) of each packet or file that could not be read.
    n_packets : int
        Packets read, the bad ones included.
    n_unlabelled : int
        Packets whose candidate id the table does not list (left out).
    n_labels_without_packet : int
        Ids of the table that no packet carries.
    """

    labelled: list[tuple[int, Alert]] = field(default_factory=list)
    bad: list[tuple[Path, str]] = field(default_factory=list)
    n_packets: int = 0
    n_unlabelled: int = 0
    n_labels_without_packet: int = 0


def labelled_packets(location: Path, labels: dict[str, int]) -> PacketScan:
    """Read the packets under ``location`` and keep those ``labels`` lists.

    Parameters
    ----------
    location : Path
        A packet file, a tarball or a folder of them.
    labels : dict
        Candidate key -> 1 (real) or 0 (bogus), as :func:`otrain.io.labels.read_labels` gives it.

    Returns
    -------
    PacketScan
    """
    scan = PacketScan()
    seen: set[str] = set()
    for item in iter_alerts(location):
        scan.n_packets += 1
        if isinstance(item, BadPacket):
            scan.bad.append((Path(item.name), item.reason))
            continue
        key = candidate_key(item.meta.candid)
        label = labels.get(key)
        if label is None:
            scan.n_unlabelled += 1
            continue
        seen.add(key)
        scan.labelled.append((label, item))
    scan.n_labels_without_packet = len(labels) - len(seen)
    return scan


def read_packet_headers(
    jobs: Sequence[tuple[Alert, tuple[str, ...] | None]],
) -> list[tuple[CutoutMeta, PacketPixels] | str]:
    """Worker task: read the metadata and plane shape of a chunk of (packet, planes); an error becomes its message."""
    results: list[tuple[CutoutMeta, PacketPixels] | str] = []
    for alert, planes in jobs:
        name = Path(alert.name)
        try:
            meta, pixels = read_alert(alert, planes)
            if meta.edge is not True:
                require_keywords(meta, name, TRAINING_KEYWORDS, "training")
                if meta.group is None:
                    raise DataError(f"{name}: the packet has no {GROUP_FIELDS[alert.survey]} (the cube's group)")
            height, width, channels = pixels.shape
            results.append((meta, PacketPixels(alert, planes, (height, width, channels))))
        except DataError as error:
            results.append(str(error))
        except Exception as error:  # a worker must report, never die, on a strange packet
            results.append(f"{name}: unexpected error reading the packet ({type(error).__name__}: {error})")
    return results


def group_keyword_of(alerts: Sequence[Alert]) -> str:
    """Name what the groups of a cube of ``alerts`` are: ``objectId``, ``diaObjectId``, or both joined by ``+``."""
    surveys = {alert.survey for alert in alerts}
    return "+".join(GROUP_FIELDS[survey] for survey in ("ztf", "rubin") if survey in surveys)
