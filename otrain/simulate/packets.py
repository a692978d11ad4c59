"""Writing alert packets as the surveys publish them: ZTF's and Rubin's Avro alerts, from pixels and measurements.

The tests and ``benchmarks/bench_alerts.py`` make their packets here, so that nothing depends on
real data being present. ZTF packets follow ZTF's alert schema 3.3 exactly as a real packet
carries it in its header (``schemas/ztf_alert_3.3.avsc``, read from a packet of ZTF's public
stream): the cutouts are gzipped FITS stamps in ``{"fileName", "stampData"}`` records. Rubin
packets follow an ``lsst.vX_Y.alert`` schema of the ``lsst-alert-packet`` package (a
development dependency, imported only here): the cutouts are plain FITS bytes.

Every field the schemas require and the caller does not give gets a neutral value (null where
the schema allows it, else zero, an empty text or list).
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "NIGHT_PACKETS",
    "PacketAlert",
    "fits_stamp",
    "night_packets",
    "rubin_record",
    "rubin_schema",
    "write_packets",
    "ztf_record",
    "ztf_schema",
]

#: The night as ZTF alert packets, beside night/ (otrain-simulate --night-packets).
NIGHT_PACKETS = "night_alerts.tar.gz"
_ZTF_SCHEMA = Path(__file__).parent / "schemas" / "ztf_alert_3.3.avsc"
_ZTF_FIDS = {"g": 1, "r": 2, "i": 3}
# Restated here, not imported from otrain.io.alerts: packets written from the surveys' own
# definitions check the reader rather than agree with it whatever it holds.
_NJY_ZERO_POINT = 31.4


@dataclass(kw_only=True)
class PacketAlert:
    """What a simulated alert holds: its ids, measurements and the three planes (2-D float32 arrays).

    ``planes`` maps ``IMAGE``, ``TEMPLATE`` and ``DIFF`` to the science, template and difference
    stamps; a plane left out makes a packet without that cutout. A ZTF packet's ``publisher``
    starting with ``ZTF`` makes a reader apply ZTF's stamp-size rule for ``EDGE``; a band ZTF does
    not have is written as ``r``.
    """

    candid: int
    object_id: str | int
    planes: dict[str, np.ndarray]
    mag: float = 18.0
    magerr: float = 0.05
    band: str = "r"
    fwhm: float = 2.5
    ra: float = 150.0
    dec: float = 2.0
    xpos: float = 1024.0
    ypos: float = 1024.0
    positive: bool = True
    publisher: str = "otrain simulation"
    extra: dict[str, Any] = field(default_factory=dict)


@cache
def ztf_schema() -> dict[str, Any]:
    """ZTF's alert schema 3.3, as a real packet's header holds it."""
    return json.loads(_ZTF_SCHEMA.read_text(encoding="utf-8"))


def rubin_schema(version: str | None = None) -> dict[str, Any]:
    """Return a Rubin alert schema of ``lsst-alert-packet``: ``"7.4"`` style, or the latest.

    Raises
    ------
    ImportError
        When ``lsst-alert-packet`` is not installed.
    """
    from lsst.alert.packet import Schema, get_schema_path

    if version is None:
        return Schema.from_file().definition
    major, minor = version.split(".")
    path = Path(get_schema_path(int(major), int(minor))) / f"lsst.v{major}_{minor}.alert.avsc"
    return Schema.from_file(str(path)).definition


def fits_stamp(pixels: np.ndarray, *, compress: bool) -> bytes:
    """One plane as FITS bytes (a primary image, float32), gzipped when ``compress`` (ZTF's stamps are)."""
    from astropy.io import fits

    buffer = io.BytesIO()
    fits.PrimaryHDU(np.asarray(pixels, dtype=np.float32)).writeto(buffer)
    content = buffer.getvalue()
    return gzip.compress(content, compresslevel=6, mtime=0) if compress else content


def _default(schema: Any, named: dict[str, Any]) -> Any:
    """Return a neutral value of an Avro type: null if allowed, else zero, empty text or list, defaults."""
    if isinstance(schema, list):
        return None if "null" in schema else _default(schema[0], named)
    if isinstance(schema, str):
        if schema in named:
            return _default(named[schema], named)
        return {
            "null": None,
            "boolean": False,
            "int": 0,
            "long": 0,
            "float": 0.0,
            "double": 0.0,
            "bytes": b"",
            "string": "",
        }[schema]
    kind = schema["type"]
    if kind == "record":
        named[schema["name"]] = schema
        if "namespace" in schema:
            named[f"{schema['namespace']}.{schema['name']}"] = schema
        return {item["name"]: _default(item["type"], named) for item in schema["fields"]}
    if kind == "array":
        return []
    if kind == "map":
        return {}
    if kind == "enum":
        return schema["symbols"][0]
    if kind == "fixed":
        return bytes(schema["size"])
    return _default(kind, named)


def _field_type(schema: dict[str, Any], name: str) -> Any:
    for item in schema["fields"]:
        if item["name"] == name:
            return item["type"]
    raise KeyError(name)


def _record_type(union: Any) -> dict[str, Any]:
    """Return the record of a (possibly nullable) field's type."""
    for option in union if isinstance(union, list) else [union]:
        if isinstance(option, dict) and option.get("type") == "record":
            return option
    raise KeyError("record")


def ztf_record(alert: PacketAlert) -> dict[str, Any]:
    """Build a ZTF alert packet (schema 3.3) holding ``alert``: gzipped FITS stamps, the candidate's measurements."""
    schema = ztf_schema()
    named: dict[str, Any] = {}
    _default(schema, named)  # registers the named types
    candidate = _default(_record_type(_field_type(schema, "candidate")), named)
    candidate.update(
        candid=int(alert.candid),
        magpsf=alert.mag,
        sigmapsf=alert.magerr,
        fid=_ZTF_FIDS.get(alert.band.lower(), _ZTF_FIDS["r"]),
        fwhm=alert.fwhm,
        ra=alert.ra,
        dec=alert.dec,
        xpos=alert.xpos,
        ypos=alert.ypos,
        isdiffpos="t" if alert.positive else "f",
        **alert.extra,
    )
    record = {
        "schemavsn": "3.3",
        "publisher": alert.publisher,
        "objectId": str(alert.object_id),
        "candid": int(alert.candid),
        "candidate": candidate,
        "prv_candidates": None,
    }
    for plane, name in (("IMAGE", "cutoutScience"), ("TEMPLATE", "cutoutTemplate"), ("DIFF", "cutoutDifference")):
        pixels = alert.planes.get(plane)
        record[name] = (
            None
            if pixels is None
            else {
                "fileName": f"candid{alert.candid}_{plane.lower()}.fits.gz",
                "stampData": fits_stamp(pixels, compress=True),
            }
        )
    return record


def rubin_record(alert: PacketAlert, schema: dict[str, Any]) -> dict[str, Any]:
    """Build a Rubin packet of ``schema`` (:func:`rubin_schema`) holding ``alert``: FITS cutouts, nJy fluxes."""
    named: dict[str, Any] = {}
    record = _default(schema, named)
    source = _default(_record_type(_field_type(schema, "diaSource")), named)
    flux = 10 ** ((_NJY_ZERO_POINT - alert.mag) / 2.5)
    sigma = alert.fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    source.update(
        diaSourceId=int(alert.candid),
        diaObjectId=int(alert.object_id),
        ra=alert.ra,
        dec=alert.dec,
        x=alert.xpos,
        y=alert.ypos,
        psfFlux=flux,
        psfFluxErr=flux * alert.magerr * np.log(10.0) / 2.5,
        band=alert.band,
        isNegative=not alert.positive,
        ixxPSF=sigma**2,
        iyyPSF=sigma**2,
        **alert.extra,
    )
    record["diaSourceId"] = int(alert.candid)
    record["diaSource"] = source
    for plane, name in (("IMAGE", "cutoutScience"), ("TEMPLATE", "cutoutTemplate"), ("DIFF", "cutoutDifference")):
        pixels = alert.planes.get(plane)
        record[name] = None if pixels is None else fits_stamp(pixels, compress=False)
    return record


def write_packets(path: Path, records: Iterable[dict[str, Any]], schema: dict[str, Any], codec: str = "null") -> None:
    """Write packets into one Avro container file (one packet per file is ZTF's way; several are allowed)."""
    import fastavro

    parsed = fastavro.parse_schema(schema)
    with open(path, "wb") as stream:
        fastavro.writer(stream, parsed, records, codec=codec)


def night_packets(root: Path, rows: Iterable[dict[str, Any]], planes: tuple[str, ...], archive: Path) -> int:
    """Write the night's cutouts as ZTF alert packets, one Avro file each, into a gzipped tarball.

    Parameters
    ----------
    root : Path
        The survey folder the rows' paths are relative to.
    rows : iterable of dict
        truth.csv's rows; those of the night (``set == "night"``) not flagged EDGE become packets.
    planes : tuple of str
        The planes of the night's (gmadet) cutouts, in file order.
    archive : Path
        The tarball to write.

    Returns
    -------
    int
        The number of packets written.
    """
    import hashlib
    import tarfile

    import fastavro

    from otrain.io.cutouts import read_header, read_pixels

    schema = fastavro.parse_schema(ztf_schema())
    written = 0
    # Byte for byte the same from the same survey: no time in the gzip header, the members or
    # the Avro files (whose sync marker is otherwise random). The stamps are gzipped already.
    with (
        gzip.GzipFile(archive, "wb", compresslevel=1, mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for row in rows:
            if row["set"] != "night" or row["edge"]:
                continue
            path = root / str(row["path"])
            meta, location = read_header(path, None, "OBJECTID")
            pixels = read_pixels(path, location)
            alert = PacketAlert(
                candid=int(str(meta.candid)),
                object_id=meta.group or f"SIM{meta.candid}",
                planes={plane: pixels[:, :, index] for index, plane in enumerate(planes)},
                mag=float(meta.mag or 0.0),
                magerr=float(meta.magerr or 0.0),
                band=meta.filter or "r",
                fwhm=float(meta.fwhm or 0.0),
                ra=float(meta.ra or 0.0),
                dec=float(meta.dec or 0.0),
                xpos=float(meta.xpos or 0.0),
                ypos=float(meta.ypos or 0.0),
            )
            buffer = io.BytesIO()
            marker = hashlib.sha256(str(alert.candid).encode()).digest()[:16]
            fastavro.writer(buffer, schema, [ztf_record(alert)], sync_marker=marker)
            info = tarfile.TarInfo(f"night_alerts/{alert.candid}.avro")
            info.size = buffer.tell()
            buffer.seek(0)
            tar.addfile(info, buffer)
            written += 1
    return written
