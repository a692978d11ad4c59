"""Reading survey alert packets: ZTF's and Rubin's Avro alerts, in files, folders and nightly tarballs.

A survey publishes each candidate as an **alert packet** (Avro): the candidate's measurements and
three cutouts (science, template, difference) as FITS bytes, gzipped by ZTF. This module reads them
with ``fastavro`` beside the FITS reader of :mod:`otrain.io.cutouts`:

* **Where packets are.** An Avro container file holding one packet (ZTF's) or several; a
  ``.tar``/``.tar.gz`` nightly archive of such files, read as a stream (nothing is unpacked to
  disk); a folder of either, walked recursively in name order. The format is recognised from the
  first bytes (:func:`sniff`), never from a file's name.
* **Which survey.** A packet whose schema has ``candid``/``candidate`` is ZTF's; one with
  ``diaSource`` is Rubin's (the ``lsst.vX_Y.alert`` schemas of ``lsst-alert-packet``).
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
import math
import os
import posixpath
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from otrain.errors import DataError, first_line
from otrain.io.avro import read_container
from otrain.io.cutoutmeta import CutoutMeta

__all__ = [
    "NJY_ZERO_POINT",
    "PLANE_FIELDS",
    "SNIFF_BYTES",
    "ZTF_STAMP",
    "Alert",
    "BadPacket",
    "alert_from_record",
    "iter_alerts",
    "iter_content",
    "packet_files",
    "read_alert",
    "sniff",
    "sniff_file",
]

#: The packet field holding each plane's cutout, by plane name.
PLANE_FIELDS = {"IMAGE": "cutoutScience", "TEMPLATE": "cutoutTemplate", "DIFF": "cutoutDifference"}
#: Side in pixels of a stamp of ZTF's packets; a smaller one was cut at the CCD's edge (``EDGE``).
ZTF_STAMP = 63
#: ZTF's filter ids.
_ZTF_BANDS = {1: "g", 2: "r", 3: "i"}
#: Zero point of Rubin's fluxes in nJy: AB magnitude = -2.5 log10(flux) + 31.4.
NJY_ZERO_POINT = 31.4
_SIGMA_TO_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))
_AVRO_MAGIC = b"Obj\x01"
_GZIP_MAGIC = b"\x1f\x8b"
#: Bytes of a file's start that tell its format (:func:`sniff`; a tar header is 512 bytes, gzip needs more).
SNIFF_BYTES = 4096

Kind = Literal["avro", "tar", "fits", "parquet"]


@dataclass(frozen=True, kw_only=True)
class Alert:
    """One alert packet, decoded; its cutouts stay FITS bytes until :func:`read_alert`.

    Attributes
    ----------
    name : str
        Where the packet is (see the module's description).
    survey : {"ztf", "rubin"}
        Whose schema the packet follows.
    meta : CutoutMeta
        The candidate's measurements; ``edge`` is set by :func:`read_alert`, which sees the stamps.
    positive : bool or None
        The sign of the subtraction: True for a source that brightened (ZTF's ``isdiffpos``,
        Rubin's ``not isNegative``), None when the packet does not say.
    cutouts : dict
        FITS bytes (gzipped or not) of each plane present, by plane name (``IMAGE``, ...).
    stamp : int or None
        The side of a whole stamp when the survey's stamps have one (63 for packets that ZTF
        published): a smaller stamp was cut at the CCD's edge, and a whole one is read as the
        even cutout without its first row and column (see :func:`read_alert`). None: no such rule.
    """

    name: str
    survey: Literal["ztf", "rubin"]
    meta: CutoutMeta
    positive: bool | None
    cutouts: dict[str, bytes]
    stamp: int | None = None


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


def sniff_file(path: Path) -> Kind | None:
    """Recognise a regular file from its content (see :func:`sniff`); None when it cannot be read or is no file.

    A FIFO, a socket or a device is never opened (reading a FIFO would wait for a writer).
    """
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return None
        with open(path, "rb") as stream:
            return sniff(stream.read(SNIFF_BYTES))
    except OSError:
        return None


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
        kind = sniff_file(path)
        if kind == "tar":
            yield from _iter_tar(path, str(path))
            continue
        try:
            with open(path, "rb") as stream:
                yield from iter_packets(stream, str(path))
        except OSError as error:
            yield BadPacket(str(path), f"{path}: cannot read the file ({first_line(error)})")


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
    survey = _survey(schema)
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


def _survey(schema: Any) -> Literal["ztf", "rubin"] | None:
    """Tell a ZTF alert schema from a Rubin one by their fields."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    fields = {field["name"] for field in schema.get("fields", [])}
    if not fields >= set(PLANE_FIELDS.values()):
        return None
    if {"candid", "candidate", "objectId"} <= fields:
        return "ztf"
    if "diaSource" in fields:
        return "rubin"
    return None


def _number(value: Any) -> float | None:
    """Return a measurement as float; None (absent) for null and NaN."""
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _cutouts(record: dict[str, Any], survey: str) -> dict[str, bytes]:
    """Return the FITS bytes of each plane present: ZTF wraps them as ``{"stampData": ...}``, Rubin gives bytes."""
    cutouts = {}
    for plane, field in PLANE_FIELDS.items():
        value = record.get(field)
        if survey == "ztf" and isinstance(value, dict):
            value = value.get("stampData")
        if value:
            cutouts[plane] = bytes(value)
    return cutouts


def alert_from_record(record: dict[str, Any], name: str, survey: Literal["ztf", "rubin"]) -> Alert:
    """Build an :class:`Alert` from a decoded packet.

    Parameters
    ----------
    record : dict
        The packet as ``fastavro`` decodes it.
    name : str
        Where it is, for the table and for messages.
    survey : {"ztf", "rubin"}
        Whose schema it follows.

    Returns
    -------
    Alert

    Raises
    ------
    DataError
        When the packet lacks its candidate id or its candidate record.
    """
    if survey == "ztf":
        return _ztf_alert(record, name)
    return _rubin_alert(record, name)


def _ztf_alert(record: dict[str, Any], name: str) -> Alert:
    candidate = record.get("candidate")
    if not isinstance(candidate, dict) or record.get("candid") is None:
        raise DataError(f"{name}: the packet has no candidate")
    object_id = record.get("objectId")
    object_id = None if object_id is None else str(object_id)
    band = _ZTF_BANDS.get(candidate.get("fid"))  # type: ignore[arg-type]
    sign = candidate.get("isdiffpos")
    meta = CutoutMeta(
        convention="alert",
        candid=int(record["candid"]),
        mag=_number(candidate.get("magpsf")),
        magerr=_number(candidate.get("sigmapsf")),
        filter=band,
        fwhm=_number(candidate.get("fwhm")),
        edge=None,
        ra=_number(candidate.get("ra")),
        dec=_number(candidate.get("dec")),
        file=object_id,
        xpos=_number(candidate.get("xpos")),
        ypos=_number(candidate.get("ypos")),
        group=object_id,
    )
    positive = None if sign is None else str(sign).strip().lower() in ("t", "1", "true")
    stamp = ZTF_STAMP if str(record.get("publisher") or "").startswith("ZTF") else None
    return Alert(name=name, survey="ztf", meta=meta, positive=positive, cutouts=_cutouts(record, "ztf"), stamp=stamp)


def _rubin_alert(record: dict[str, Any], name: str) -> Alert:
    source = record.get("diaSource")
    if not isinstance(source, dict) or source.get("diaSourceId") is None:
        raise DataError(f"{name}: the packet has no diaSource")
    object_id = source.get("diaObjectId")
    if object_id is None and isinstance(record.get("diaObject"), dict):
        object_id = record["diaObject"].get("diaObjectId")
    group = None
    if object_id is not None:
        group = str(object_id)
    elif source.get("ssObjectId") is not None:  # a solar-system source: its own object
        group = f"ss{source['ssObjectId']}"
    flux, flux_error = _number(source.get("psfFlux")), _number(source.get("psfFluxErr"))
    mag = magerr = None
    if flux is not None and flux != 0.0:
        mag = -2.5 * math.log10(abs(flux)) + NJY_ZERO_POINT
        magerr = None if flux_error is None else 2.5 / math.log(10.0) * flux_error / abs(flux)
    fwhm = None
    ixx, iyy = _number(source.get("ixxPSF")), _number(source.get("iyyPSF"))
    if ixx is not None and iyy is not None and ixx + iyy > 0:
        fwhm = _SIGMA_TO_FWHM * math.sqrt((ixx + iyy) / 2.0)
    negative = source.get("isNegative")
    meta = CutoutMeta(
        convention="alert",
        candid=int(source["diaSourceId"]),
        mag=mag,
        magerr=magerr,
        filter=source.get("band"),
        fwhm=fwhm,
        edge=None,
        ra=_number(source.get("ra")),
        dec=_number(source.get("dec")),
        file=group,
        xpos=_number(source.get("x")),
        ypos=_number(source.get("y")),
        group=group,
    )
    positive = None if negative is None else not bool(negative)
    return Alert(name=name, survey="rubin", meta=meta, positive=positive, cutouts=_cutouts(record, "rubin"))


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
