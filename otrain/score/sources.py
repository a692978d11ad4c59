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
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from otrain.errors import DataError, first_line
from otrain.io.alerts import Alert, BadPacket, iter_alerts, packet_files, read_alert
from otrain.io.cutouts import FITS_SUFFIXES, list_cutouts, read_header

__all__ = ["alert_chunks", "check_model_fits", "packet_sources", "scoring_sources"]

#: Cutouts read, at most, to find one whose size is compared with the model's input.
_PROBES = 20


def packet_sources(location: Path, recursive: bool = False) -> list[Path]:
    """List the packet files of ``location``: the file itself, or a folder's files that hold packets.

    Files with a FITS name are left out unread: they are cutouts (:func:`otrain.io.alerts.packet_files`).
    """
    return packet_files(location, recursive=recursive, besides=FITS_SUFFIXES)


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
        _check_first(_file_probes(files[:_PROBES], planes, channels), planes, fits, refuse, "the others in its folder")
    if packets:
        if planes is None and channels != 1:
            raise DataError(
                f"{model_file}: the model takes {channels} planes, packets are read as DIFF alone by default; "
                "give --planes (IMAGE TEMPLATE DIFF, say)"
            )
        _check_first(_packet_probes(packets, planes), planes, fits, refuse, "the other packets")


#: One cutout or packet to compare with the model: its name; a reading giving whether it is
#: EDGE and its (H, W, C); and, when that reading fails, one with the default planes giving
#: (H, W, C) and why the planes asked for are missing.
_Shape = tuple[int, int, int]
_Probe = tuple[str, Callable[[], tuple[bool, _Shape]], Callable[[Exception], tuple[_Shape, str]]]


def _check_first(
    probes: Iterable[_Probe],
    planes: tuple[str, ...] | None,
    fits: Callable[[tuple[int, ...]], bool],
    refuse: Callable[..., NoReturn],
    others: str,
) -> None:
    """Refuse the model when the first readable probe, not EDGE, does not fit it; or when none holds the planes."""
    without_planes: tuple[str, _Shape, str] | None = None
    for name, read, read_without_planes in probes:
        try:
            edge, shape = read()
        except Exception as error:  # a bad cutout is reported when scoring; look at the next one
            if without_planes is None and planes is not None:
                with contextlib.suppress(Exception):  # readable, but without the planes?
                    without_planes = (name, *read_without_planes(error))
            continue
        if edge:
            continue
        if not fits(shape):
            refuse(name, shape, others=others)
        return
    if without_planes is not None:
        refuse(*without_planes, others=others)


def _file_probes(files: Sequence[Path], planes: tuple[str, ...] | None, channels: int) -> Iterator[_Probe]:
    """Yield the probes of FITS files (see :func:`check_model_fits`)."""
    for path in files:

        def read(path: Path = path) -> tuple[bool, _Shape]:
            meta, location = read_header(path, planes)
            return meta.edge is True, location.height_width_channels

        def read_without_planes(error: Exception, path: Path = path) -> tuple[_Shape, str]:
            found = read_header(path, None)[1].height_width_channels
            why = first_line(error).removeprefix(f"{path}: ")
            return found, "" if found[2] != channels else f" ({why})"

        yield path.name, read, read_without_planes


def _packet_probes(packets: Sequence[Path], planes: tuple[str, ...] | None) -> Iterator[_Probe]:
    """Yield the probes of the first packets; a packet is read with DIFF alone by default."""
    for alert in next(alert_chunks(packets, _PROBES), []):
        if not isinstance(alert, Alert):
            continue

        def read(alert: Alert = alert) -> tuple[bool, _Shape]:
            meta, pixels = read_alert(alert, planes)
            return meta.edge is True, pixels.shape

        def read_without_planes(error: Exception, alert: Alert = alert) -> tuple[_Shape, str]:
            found = read_alert(alert, ("DIFF",))[1].shape
            return (found[0], found[1], 1), f" ({first_line(error)})"

        yield alert.name, read, read_without_planes
