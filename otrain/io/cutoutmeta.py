"""A cutout's metadata, from the keywords of its FITS headers.

Two conventions are understood (docs/original-otrain.md#cutout-fits-files): a **gmadet** cutout
keeps the candidate's keywords in its primary HDU, ``EDGE`` as the string ``"True"``/``"False"``;
an **STDPipe** cutout keeps them in a data-less primary HDU (``HIERARCH mag_calib``, ``NAME``,
...), with fallbacks on its ``DIFF`` extension. ``EDGE`` may be a string or a FITS logical; both
mean the same everywhere. Header values become numbers, logicals and text here; the candidate
id follows the one rule of :mod:`otrain.io.ids`.

The readers of :mod:`otrain.io.cutouts` build a :class:`CutoutMeta` with :func:`cutout_meta`,
from astropy's headers or from the cards of :mod:`otrain.io.fitsreader`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from otrain.errors import DataError
from otrain.io.ids import header_candid

__all__ = ["CutoutMeta", "card_value", "cutout_meta"]

_TRUE_STRINGS = {"true", "t", "1", "yes", "y"}
_FALSE_STRINGS = {"false", "f", "0", "no", "n"}


@dataclass(frozen=True, kw_only=True)
class CutoutMeta:
    """Candidate metadata from a cutout's header; ``None`` where a keyword is absent.

    ``group`` is the value, as text, of the keyword asked for by ``group_keyword`` in
    :func:`otrain.io.cutouts.read_header` (for example ``FILE``, a ZTF objectId in STDPipe cutouts of ZTF alerts).
    """

    convention: Literal["gmadet", "stdpipe", "alert"]
    candid: int | str | None
    mag: float | None
    magerr: float | None
    filter: str | None
    fwhm: float | None
    edge: bool | None
    ra: float | None = None
    dec: float | None = None
    file: str | None = None
    xpos: float | None = None
    ypos: float | None = None
    fwhmpsf: float | None = None
    group: str | None = None

    def value_of(self, keyword: str) -> Any:
        """Return the value standing for a FITS keyword name such as ``"MAGERR"``."""
        return getattr(self, keyword.lower())


if TYPE_CHECKING:  # astropy is imported only for the files the fast reader declines (100 ms of start-up)
    from astropy.io import fits

    Header = fits.Header | dict[str, Any]


def card_value(header: Header, *keywords: str) -> Any:
    """Return the first defined value among ``keywords`` in ``header``, else None.

    ``header`` is an astropy header or the upper-cased cards of :class:`otrain.io.fitsreader.HDUHeader`;
    look-ups are case-insensitive in both.
    """
    for keyword in keywords:
        if isinstance(header, dict):
            value = header.get(keyword.upper())
        else:
            from astropy.io.fits.card import Undefined

            value = header.get(keyword)
            value = None if isinstance(value, Undefined) else value
        if value is not None:
            return value
    return None


def _as_float(value: Any, keyword: str, path: Path) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise DataError(f"{path}: keyword {keyword} must be a number, not a logical")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"{path}: keyword {keyword} must be a number, got {value!r}") from None


def _as_edge(value: Any, path: Path) -> bool | None:
    """Read EDGE as a FITS logical or as the strings gmadet writes; both mean the same."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE_STRINGS:
        return True
    if text in _FALSE_STRINGS:
        return False
    raise DataError(f"{path}: keyword EDGE must be True or False, got {value!r}")


def _as_group(value: Any) -> str | None:
    """Read a group keyword's value as text; a blank value counts as absent."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def cutout_meta(primary: Header, diff: Header | None, path: Path, group_keyword: str | None = None) -> CutoutMeta:
    """Collect metadata; STDPipe files use the original's fallbacks (docs/original-otrain.md#cutout-fits-files).

    Parameters
    ----------
    primary : astropy.io.fits.Header or dict
        The primary header (astropy's, or the cards of :class:`otrain.io.fitsreader.HDUHeader`).
    diff : astropy.io.fits.Header or dict or None
        The ``DIFF`` extension's header of an STDPipe cutout; None for a gmadet cutout.
    path : Path
        The file, for messages.
    group_keyword : str, optional
        The keyword whose value becomes :attr:`CutoutMeta.group`.

    Raises
    ------
    DataError
        When a keyword has a value of the wrong kind; the message names the file.
    """
    if diff is None:
        convention: Literal["gmadet", "stdpipe"] = "gmadet"
        mag, magerr = card_value(primary, "MAG"), card_value(primary, "MAGERR")
        band = card_value(primary, "FILTER")
        candid = card_value(primary, "CANDID")
        xpos, ypos = card_value(primary, "XPOS"), card_value(primary, "YPOS")
    else:
        convention = "stdpipe"
        mag = card_value(primary, "mag_calib", "MAG")
        magerr = card_value(primary, "mag_calib_err", "MAGERR")
        band = card_value(primary, "FILTER")
        if band is None:
            band = card_value(diff, "FILTER")
        if band is None:
            band = "Clear"  # the original's documented fallback for STDPipe cutouts
        candid = card_value(primary, "CANDID", "NAME")
        xpos, ypos = card_value(primary, "XPOS", "X"), card_value(primary, "YPOS", "Y")
    file = card_value(primary, "FILE")
    return CutoutMeta(
        convention=convention,
        candid=header_candid(candid, path),
        mag=_as_float(mag, "MAG", path),
        magerr=_as_float(magerr, "MAGERR", path),
        filter=None if band is None else str(band).strip(),
        fwhm=_as_float(card_value(primary, "FWHM"), "FWHM", path),
        edge=_as_edge(card_value(primary, "EDGE"), path),
        ra=_as_float(card_value(primary, "RA"), "RA", path),
        dec=_as_float(card_value(primary, "DEC"), "DEC", path),
        file=None if file is None else str(file),
        xpos=_as_float(xpos, "XPOS", path),
        ypos=_as_float(ypos, "YPOS", path),
        fwhmpsf=_as_float(card_value(primary, "FWHMPSF"), "FWHMPSF", path),
        group=_as_group(card_value(primary, group_keyword)) if group_keyword is not None else None,
    )
