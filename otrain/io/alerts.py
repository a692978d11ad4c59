"""Reading survey alert packets: ZTF's and Rubin's Avro alerts, in files, folders and nightly tarballs.

A survey publishes each candidate as an **alert packet** (Avro): the candidate's measurements and
three cutouts (science, template, difference) as FITS bytes, gzipped by ZTF. This module reads them
with ``fastavro`` beside the FITS reader of :mod:`otrain.io.cutouts`:

* **Where packets are.** An Avro container file holding one packet (ZTF's) or several; a
  ``.tar``/``.tar.gz`` nightly archive of such files, read as a stream (nothing is unpacked to
  disk); a folder of either, walked recursively in name order. The format is recognised from the
  first bytes (:func:`sniff`), never from a file's name.
* **Which survey.** A packet whose schema has ``candid``/``candidate`` is ZTF's; one with
  ``diaSource`` is Rubin's (the ``lsst.vX_Y.alert`` schemas of ``lsst-alert-packet``); each
  survey's fields are mapped in :mod:`otrain.io.alert_records`.
* **What is read.** The cutouts become the planes ``IMAGE`` (``cutoutScience``), ``TEMPLATE``
  (``cutoutTemplate``) and ``DIFF`` (``cutoutDifference``), so ``--planes`` and the model card
  work as for STDPipe files; ``DIFF`` alone by default, as there. The measurements fill the same
  :class:`otrain.io.cutoutmeta.CutoutMeta` as a FITS header: the candidate id (``candid`` /
  ``diaSourceId``, an exact int), the object id (``objectId`` / ``diaObjectId``) as ``file`` and
  as the group, magnitude and error, band, FWHM, position, and the sign of the subtraction
  (:attr:`Alert.positive`).
* **Bad packets.** A file that is not Avro, a schema of neither survey, a truncated file, a
  packet without a cutout asked for or whose cutout is not FITS: each is a :class:`BadPacket`
  with its reason; the packets before it are kept.

Each packet is named ``<file>`` (``<archive>/<member>`` inside a tarball), with ``#<n>`` added
for the n-th packet (from 0) of a file holding several; that name fills the table's ``filename``
column as a FITS file's path does.
"""

from __future__ import annotations

import gzip
import io
import os
import posixpath
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np

from otrain.errors import DataError, first_line
from otrain.io.alert_records import PLANE_FIELDS, ZTF_STAMP, Alert, alert_from_record, survey_of
from otrain.io.avro import read_container
from otrain.io.cutoutmeta import CutoutMeta

__all__ = [
    "PLANE_FIELDS",
    "SNIFF_BYTES",
    "ZTF_STAMP",
    "Alert",
    "BadPacket",
    "alert_from_record",
    "iter_alerts",
    "iter_content",
    "iter_file",
    "packet_files",
    "read_alert",
    "read_head",
    "sniff",
    "sniff_file",
]

_AVRO_MAGIC = b"Obj\x01"
_GZIP_MAGIC = b"\x1f\x8b"
#: Bytes of a file's start that tell its format (:func:`sniff`; a tar header is 512 bytes, gzip needs more).
SNIFF_BYTES = 4096

Kind = Literal["avro", "tar", "fits", "parquet"]


@dataclass(frozen=True)
class BadPacket:
    """A packet, or a whole file, that cannot be read: where, and why (one line naming it)."""

    name: str
    reason: str


def sniff(head: bytes) -> Kind | None:
    """Recognise a file from its first bytes (a few kilobytes): Avro, tar, FITS, Parquet, gzipped or not.

    Parameters
    ----------
    head : bytes
        The file's first bytes; 4096 are enough for a gzipped tarball.

    Returns
    -------
    str or None
        ``"avro"`` (an Avro object container), ``"tar"`` (plain or gzipped), ``"fits"`` (plain or
        gzipped), ``"parquet"``; None for anything else.
    """
    if head.startswith(_GZIP_MAGIC):
        try:
            head = zlib.decompressobj(wbits=31).decompress(head, 1024)
        except zlib.error:
            return None
    if head.startswith(_AVRO_MAGIC):
        return "avro"
    if head[257:262] == b"ustar":
        return "tar"
    if head.startswith(b"SIMPLE  ="):
        return "fits"
    if head.startswith(b"PAR1"):
        return "parquet"
    return None


def read_head(path: Path) -> bytes | None:
    """Return a regular file's first :data:`SNIFF_BYTES` bytes; None when it cannot be read or is no file.

    A FIFO, a socket or a device is never opened (reading a FIFO would wait for a writer).
    """
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return None
        with open(path, "rb") as stream:
            return stream.read(SNIFF_BYTES)
    except OSError:
        return None


def sniff_file(path: Path) -> Kind | None:
    """Recognise a regular file from its content (see :func:`sniff`); None when it cannot be read or is no file."""
    head = read_head(path)
    return None if head is None else sniff(head)


def packet_files(location: Path, *, recursive: bool = True, besides: tuple[str, ...] = ()) -> list[Path]:
    """List the files holding packets, in name order: ``location`` itself, or the Avro files and tarballs in a folder.

    Parameters
    ----------
    location : Path
        A file (whatever its content: one that is not packets is reported when read) or a
        folder (its sub-folders too if ``recursive``); hidden files and folders are left out.
    besides : tuple of str
        Lower-case name endings of files left out unread (``FITS_SUFFIXES``: cutouts).
    """
    if not location.is_dir():
        return [location]
    found = []
    for root, folders, files in os.walk(location):
        folders[:] = sorted(folder for folder in folders if not folder.startswith(".")) if recursive else []
        for name in files:
            if name.startswith(".") or (besides and name.lower().endswith(besides)):
                continue
            path = Path(root) / name
            if sniff_file(path) in ("avro", "tar"):
                found.append(path)
    return sorted(found)


def iter_alerts(location: Path) -> Iterator[Alert | BadPacket]:
    """Read every packet under ``location`` in order, as :class:`Alert` or :class:`BadPacket`.

    Parameters
    ----------
    location : Path
        A packet file, a tarball, or a folder of them (:func:`packet_files`).

    Yields
    ------
    Alert or BadPacket
        One per packet; a file that cannot be read at all gives one :class:`BadPacket`, a
        truncated one its packets up to the damage and then one :class:`BadPacket`.
    """
    for path in packet_files(location):
        yield from iter_file(path, str(path))


def iter_file(path: Path, name: str, kind: Kind | None = None) -> Iterator[Alert | BadPacket]:
    """Read the packets of one file, a tarball of Avro files or else an Avro file, as a stream; ``name`` names them.

    ``kind`` is what :func:`sniff` made of the file's head when the caller read it already.
    """
    if (kind or sniff_file(path)) == "tar":
        yield from _iter_tar(path, name)
        return
    try:
        with open(path, "rb") as stream:
            yield from iter_packets(stream, name)
    except OSError as error:
        yield BadPacket(name, f"{name}: cannot read the file ({first_line(error)})")


def _iter_tar(source: Path | bytes, name: str) -> Iterator[Alert | BadPacket]:
    """Read the Avro members of a tarball (a file, or its bytes) as a stream in archive order; skip the others."""
    try:
        stream = source.open("rb") if isinstance(source, Path) else io.BytesIO(source)
        with stream, tarfile.open(fileobj=stream, mode="r|*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                extracted = archive.extractfile(member)
                if extracted is None:
                    continue
                content = extracted.read()
                if sniff(content[:SNIFF_BYTES]) == "avro":
                    member_name = posixpath.normpath(member.name)  # "./night/1.avro" is "night/1.avro"
                    yield from iter_packets(io.BytesIO(content), f"{name}/{member_name}")
    except (OSError, EOFError, tarfile.TarError, zlib.error) as error:
        yield BadPacket(name, f"{name}: the archive is damaged ({first_line(error)})")


def iter_content(content: bytes, name: str) -> Iterator[Alert | BadPacket]:
    """Read the packets of an Avro file or a tarball of them already in memory (Spark's ``binaryFile`` rows).

    Parameters
    ----------
    content : bytes
        The whole file; its format is recognised from its first bytes (:func:`sniff`).
    name : str
        What to call it in packet names and messages (a path or a URI).

    Yields
    ------
    Alert or BadPacket
        As :func:`iter_alerts` for one file; one :class:`BadPacket` for content that is neither.
    """
    kind = sniff(content[:SNIFF_BYTES])
    if kind == "tar":
        yield from _iter_tar(content, name)
    elif kind == "avro":
        yield from iter_packets(io.BytesIO(content), name)
    else:
        yield BadPacket(name, f"{name}: neither an Avro alert file nor a tarball of them")


def iter_packets(stream: BinaryIO, name: str) -> Iterator[Alert | BadPacket]:
    """Read the packets of one Avro container file.

    Parameters
    ----------
    stream : file-like
        The file's bytes, from its start (seekable), gzip-compressed or not.
    name : str
        What to call it in packet names and messages.

    Yields
    ------
    Alert or BadPacket
        One per packet; on damage, the packets before it and one :class:`BadPacket`.
    """
    if stream.read(2) == _GZIP_MAGIC:  # a gzipped Avro file (files and BytesIO can seek back)
        stream.seek(0)
        stream = gzip.GzipFile(fileobj=stream)  # type: ignore[assignment]
    else:
        stream.seek(0)
    try:
        schema, reader = read_container(stream)
    except Exception as error:  # fastavro raises ValueError, EOFError, or its own schema errors
        yield BadPacket(name, f"{name}: not an Avro alert file ({first_line(error)})")
        return
    survey = survey_of(schema)
    if survey is None:
        schema_name = schema.get("name", "?") if isinstance(schema, dict) else "?"
        yield BadPacket(name, f"{name}: schema {schema_name} is neither a ZTF nor a Rubin alert packet")
        return
    records = iter(reader)
    index = 0
    while True:
        label = name if index == 0 else f"{name}#{index}"
        try:
            record = next(records)
        except StopIteration:
            return
        except Exception as error:  # a truncated or corrupt block
            yield BadPacket(label, f"{label}: truncated or damaged after {index} packet(s) ({first_line(error)})")
            return
        try:
            yield alert_from_record(record, label, survey)
        except DataError as error:
            yield BadPacket(label, str(error))
        index += 1


def read_alert(alert: Alert, planes: tuple[str, ...] | None = None) -> tuple[CutoutMeta, np.ndarray]:
    """Read a packet's cutouts as a cutout file's planes are read: float32, channels-last (H, W, C).

    Parameters
    ----------
    alert : Alert
        The packet.
    planes : tuple of str, optional
        Plane names among ``IMAGE``, ``TEMPLATE``, ``DIFF``, stacked in this order; None:
        ``DIFF`` alone (as for an STDPipe file).

    Returns
    -------
    CutoutMeta
        The packet's metadata; ``edge`` is True for a stamp smaller than the survey's whole one
        (:attr:`Alert.stamp`: 63x63 for ZTF's packets; cut at the CCD's edge), as the FITS
        cutouts of ZTF alerts flag it, else False.
    numpy.ndarray
        The planes, unscaled values applied, non-finite pixels kept (the crop and their
        replacement are :mod:`otrain.data.cutouts`'s, as for a file). A whole stamp of a survey
        with a stamp size (ZTF's 63x63) comes without its first row and column: 62x62 with the
        candidate at pixel 30, the layout of the FITS cutouts made from ZTF's packets, so a
        packet and its FITS cutout give a model the same pixels whatever its input size.

    Raises
    ------
    DataError
        When a plane asked for is absent or not a one-plane FITS image, or the planes differ in
        size; the message names the packet and the field.
    """
    from otrain.io.cutouts import read_header, read_pixels

    stacked = []
    for plane in planes or ("DIFF",):
        if plane not in PLANE_FIELDS:
            raise DataError(f"{alert.name}: no plane {plane} in an alert packet (IMAGE, TEMPLATE, DIFF)")
        content = alert.cutouts.get(plane)
        where = Path(f"{alert.name}:{PLANE_FIELDS[plane]}")
        if content is None:
            raise DataError(f"{where}: the packet has no such cutout")
        if content.startswith(_GZIP_MAGIC):  # ZTF's stamps: unpacked once here, not by each reader
            try:
                content = gzip.decompress(content)
            except (OSError, EOFError, zlib.error) as error:
                raise DataError(f"{where}: the cutout is not valid gzip ({first_line(error)})") from None
        _, location = read_header(where, None, content=content)
        pixels = read_pixels(where, location, content=content)
        if pixels.shape[2] != 1:
            raise DataError(f"{where}: the cutout holds {pixels.shape[2]} planes, not one image")
        if stacked and pixels.shape != stacked[0].shape:
            first = stacked[0].shape
            raise DataError(
                f"{where}: the cutout is {pixels.shape[0]}x{pixels.shape[1]}, "
                f"the first plane {first[0]}x{first[1]}: the planes differ in size"
            )
        stacked.append(pixels)
    cut = alert.stamp is not None and min(stacked[0].shape[:2]) < alert.stamp
    pixels = stacked[0] if len(stacked) == 1 else np.concatenate(stacked, axis=2)
    if alert.stamp is not None and pixels.shape[:2] == (alert.stamp, alert.stamp):
        # An odd stamp centre-cropped to an even size and the even cutout cropped alike put
        # the candidate one pixel apart; read as the FITS cutouts hold it, they agree.
        pixels = pixels[1:, 1:]
    return replace(alert.meta, edge=cut), pixels
