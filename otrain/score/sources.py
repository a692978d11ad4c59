"""What otrain-infer reads: FITS cutouts by their names, alert packets by their content.

``--cutouts`` is a folder or one file. A folder's FITS cutouts are listed by name, as they
always were (:func:`otrain.io.cutouts.list_cutouts`); every other file of it whose content is
Avro alert packets, or a tarball of them, is a packet source (:func:`otrain.io.alerts.sniff_file`),
read after the FITS files. A file given alone is a packet source, whatever its name.

Packets are a stream (:func:`otrain.io.alerts.iter_alerts`): :func:`alert_chunks` cuts it into
chunks as the FITS files are chunked (:func:`otrain.io.parallel.map_stream` hands them to the
readers), so a night is never held in memory at once. Before scoring,
:func:`check_model_fits` compares the model's input with the first readable cutouts of both kinds.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from otrain.errors import DataError, first_line
from otrain.io.alerts import Alert, BadPacket, iter_alerts, read_alert, sniff_file
from otrain.io.cutouts import FITS_SUFFIXES, list_cutouts, read_header

__all__ = ["alert_chunks", "check_model_fits", "packet_sources", "scoring_sources"]

#: Cutouts read, at most, to find one whose size is compared with the model's input.
_PROBES = 20


def packet_sources(location: Path, recursive: bool = False) -> list[Path]:
    """List the packet files of ``location``: the file itself, or a folder's files that hold packets.

    Parameters
    ----------
    location : Path
        A file (a packet file or a tarball, or anything else, reported when read) or a folder.
    recursive : bool
        Also look in sub-folders (hidden ones left out), as for FITS cutouts.

    Returns
    -------
    list of Path
        The files whose content is Avro or a tar archive, FITS names left out (they are
        cutouts), in name order.
    """
    if not location.is_dir():
        return [location]
    found = []
    for root, folders, files in os.walk(location):
        folders[:] = sorted(folder for folder in folders if not folder.startswith(".")) if recursive else []
        for name in files:
            if name.startswith(".") or name.lower().endswith(FITS_SUFFIXES):
                continue
            path = Path(root) / name
            if sniff_file(path) in ("avro", "tar"):
                found.append(path)
    return sorted(found)


def scoring_sources(location: Path, recursive: bool = False) -> tuple[list[Path], list[Path]]:
    """Return what ``--cutouts`` holds: its FITS cutouts (none for a file), then its packet files."""
    if not location.is_dir():
        return [], [location]
    return list_cutouts(location, recursive=recursive), packet_sources(location, recursive)


def alert_chunks(sources: Sequence[Path], size: int) -> Iterator[list[Alert | BadPacket]]:
    """Read the packets of ``sources`` in order, ``size`` at a time (the last chunk may be shorter)."""
    stream = itertools.chain.from_iterable(iter_alerts(source) for source in sources)
    while chunk := list(itertools.islice(stream, size)):
        yield chunk


def check_model_fits(
    model_file: Path,
    shape: tuple[int, int, int],
    files: Sequence[Path],
    packets: Sequence[Path],
    planes: tuple[str, ...] | None,
) -> None:
    """Compare the model's input with the first readable cutout's size, and packet's, before scoring starts.

    A model for other cutouts (another size, other planes) is one mistake, not one problem per
    file: say so once, naming the model and both shapes. So are cutouts that lack the model's
    planes (a triplet model on a night of differences): when none of the first cutouts that
    can be read holds them; a few cutouts without them are skipped and counted when scoring.

    Raises
    ------
    DataError
        Naming the model, its input and the first cutout or packet that does not fit it.
    """
    height, width, channels = shape
    if planes is not None and len(planes) != channels:
        raise DataError(
            f"{model_file}: the model takes {channels} plane(s), --planes names {len(planes)} ({' '.join(planes)})"
        )

    def refuse(name: str, cutout_shape: tuple[int, int, int], reason: str = "", others: str = "") -> NoReturn:
        cutout_height, cutout_width, cutout_channels = cutout_shape
        read = f" (planes {' '.join(planes)})" if planes is not None else ""
        raise DataError(
            f"{model_file}: the model takes {height}x{width}x{channels} cutouts{read}, but {name} (and probably "
            f"{others}) is {cutout_height}x{cutout_width}x{cutout_channels}{reason}"
        )

    def fits(found: tuple[int, ...]) -> bool:
        return found[2] == channels and found[0] >= height and found[1] >= width

    if files:
        others = "the others in its folder"
        without_planes: list[tuple[str, tuple[int, int, int], str]] = []
        for path in files[:_PROBES]:
            try:
                meta, location = read_header(path, planes)
            except Exception as error:  # a bad file is reported when scoring; look at the next one
                if planes is not None:
                    with contextlib.suppress(Exception):  # readable, but without the planes?
                        found = read_header(path, None)[1].height_width_channels
                        why = first_line(error).removeprefix(f"{path}: ")
                        without_planes.append((path.name, found, "" if found[2] != channels else f" ({why})"))
                continue
            if meta.edge is True:
                continue
            if not fits(location.height_width_channels):
                refuse(path.name, location.height_width_channels, others=others)
            break
        else:
            if without_planes:
                refuse(*without_planes[0], others=others)
    if packets:
        _probe_packets(packets, planes, channels, model_file, fits, refuse)


def _probe_packets(
    packets: Sequence[Path],
    planes: tuple[str, ...] | None,
    channels: int,
    model_file: Path,
    fits: Callable[[tuple[int, ...]], bool],
    refuse: Callable[..., NoReturn],
) -> None:
    """Check the first readable packets (see :func:`check_model_fits`); a packet is read with DIFF alone by default."""
    others = "the other packets"
    if planes is None and channels != 1:
        raise DataError(
            f"{model_file}: the model takes {channels} planes, packets are read as DIFF alone by default; "
            "give --planes (IMAGE TEMPLATE DIFF, say)"
        )
    without_planes: tuple[str, tuple[int, int, int], str] | None = None
    alerts = (item for item in next(alert_chunks(packets, _PROBES), []) if isinstance(item, Alert))
    for alert in alerts:
        try:
            meta, pixels = read_alert(alert, planes)
        except DataError as error:  # a bad packet is reported when scoring; look at the next one
            if without_planes is None and planes is not None:
                with contextlib.suppress(DataError):
                    found = read_alert(alert, ("DIFF",))[1].shape
                    without_planes = (alert.name, (found[0], found[1], 1), f" ({first_line(error)})")
            continue
        if meta.edge is True:
            continue
        if not fits(pixels.shape):
            refuse(alert.name, pixels.shape, others=others)
        return
    if without_planes is not None:
        refuse(*without_planes, others=others)
