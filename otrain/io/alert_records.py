"""What an alert packet holds: ZTF's and Rubin's schemas read into an :class:`Alert`.

A decoded packet (a record as ``fastavro`` gives it, or a row of a Fink-style Parquet table) is
mapped to the fields otrain reads from a FITS cutout's header: the candidate id (``candid`` /
``diaSourceId``, an exact int), the object id (``objectId`` / ``diaObjectId``) as ``file`` and as
the group, magnitude and error (Rubin's fluxes in nJy converted), band, FWHM (Rubin's from the
PSF's second moments), position, the sign of the subtraction, and the three cutouts' FITS bytes
by plane name. Reading packets from files is :mod:`otrain.io.alerts`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from otrain.errors import DataError
from otrain.io.cutoutmeta import CutoutMeta

__all__ = ["NJY_ZERO_POINT", "PLANE_FIELDS", "ZTF_STAMP", "Alert", "alert_from_record", "survey_of"]

#: The packet field holding each plane's cutout, by plane name.
PLANE_FIELDS = {"IMAGE": "cutoutScience", "TEMPLATE": "cutoutTemplate", "DIFF": "cutoutDifference"}
#: Side in pixels of a stamp of ZTF's packets; a smaller one was cut at the CCD's edge (``EDGE``).
ZTF_STAMP = 63
#: ZTF's filter ids.
_ZTF_BANDS = {1: "g", 2: "r", 3: "i"}
#: Zero point of Rubin's fluxes in nJy: AB magnitude = -2.5 log10(flux) + 31.4.
NJY_ZERO_POINT = 31.4
_SIGMA_TO_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))


@dataclass(frozen=True, kw_only=True)
class Alert:
    """One alert packet, decoded; its cutouts stay FITS bytes until :func:`otrain.io.alerts.read_alert`.

    Attributes
    ----------
    name : str
        Where the packet is (:mod:`otrain.io.alerts` names packets).
    survey : {"ztf", "rubin"}
        Whose schema the packet follows.
    meta : CutoutMeta
        The candidate's measurements; ``edge`` is set by :func:`otrain.io.alerts.read_alert`,
        which sees the stamps.
    positive : bool or None
        The sign of the subtraction: True for a source that brightened (ZTF's ``isdiffpos``,
        Rubin's ``not isNegative``), None when the packet does not say.
    cutouts : dict
        FITS bytes (gzipped or not) of each plane present, by plane name (``IMAGE``, ...).
    stamp : int or None
        The side of a whole stamp when the survey's stamps have one (63 for packets that ZTF
        published): a smaller stamp was cut at the CCD's edge, and a whole one is read as the
        even cutout without its first row and column (see :func:`otrain.io.alerts.read_alert`).
        None: no such rule.
    """

    name: str
    survey: Literal["ztf", "rubin"]
    meta: CutoutMeta
    positive: bool | None
    cutouts: dict[str, bytes]
    stamp: int | None = None


def survey_of(schema: Any) -> Literal["ztf", "rubin"] | None:
    """Tell a ZTF alert schema from a Rubin one by their fields; None for neither."""
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
