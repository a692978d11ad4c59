"""Candidate ids: the one rule every command reads, writes and matches them by.

An id is text and is compared as text, never through ``float``: ZTF's candids have 19 digits,
and ``1285423380015015016`` and ``1285423380015015017`` are one float64. Two directions of
reading share the rule:

* :func:`header_candid` reads the id of a cutout's header (``CANDID``, or STDPipe's ``NAME``).
  It gives an ``int`` only for a whole number whose text is exactly that int's (``123``, a
  19-digit candid); everything else stays the text the file holds (``00123`` keeps its zeros,
  ``ZTF21abc`` is text). ``str()`` of what it returns is the id's spelling, the one otrain-infer
  writes into ``infer_results.dat`` and otrain-convert keeps in the cube (an all-int column is
  stored as int64, as the original did).
* :func:`candidate_key` reads a table's cell (``infer_results.dat``, gmadet's ``crossmatch.dat``)
  or any id value into the text two ids are matched by. A whole number keeps its spelling; a
  decimal spelling of a whole number of up to :data:`LONGEST_ID` digits (``3000020.0``,
  ``3.00002e+06``: a column written through floats) becomes that integer, exactly; ``None``,
  ``nan``, ``--`` and an empty cell are the missing id ``""``.

The two agree: ``candidate_key(header_candid(value))`` is ``candidate_key(value)`` for any
header value, so a header's id and the table row written from it always match.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np

from otrain.errors import DataError
from otrain.io.fitsreader import INTEGER

__all__ = ["LONGEST_ID", "MISSING", "candidate_key", "header_candid"]

#: Digits of the longest whole number spelled as a decimal that a table's id is read as (ZTF's have 19).
LONGEST_ID = 30
#: How a table spells a missing candidate id (lower-cased; crossmatch.dat: no candidate detected).
MISSING = ("none", "nan", "--", "")
_INT64_MAX = 2**63 - 1
#: Whole floats up to here are exact integers; beyond, a float's digits are not the id's.
_FLOAT_EXACT = 2**53


def header_candid(value: Any, path: Path) -> int | str | None:
    """Read a cutout header's candidate id.

    Parameters
    ----------
    value : object
        The keyword's value as the FITS reader gives it (int, float, text, None).
    path : Path
        The file, for messages.

    Returns
    -------
    int, str or None
        An int for a whole number that round-trips exactly (within int64; a float header value
        up to 2**53), the text otherwise (``00123`` stays ``00123``; a float beyond 2**53 is its
        ``repr``), None for a missing or blank value.

    Raises
    ------
    DataError
        When the value is a FITS logical; the message names the file and the keyword.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise DataError(f"{path}: keyword CANDID must be an identifier, not a logical")
    if isinstance(value, (int, np.integer)):
        number = int(value)
        return number if abs(number) <= _INT64_MAX else str(number)
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) <= _FLOAT_EXACT else repr(value)
    text = str(value).strip()
    if not text:
        return None
    # "00123" stays text: turning it into 123 would lose the identifier.
    if INTEGER.fullmatch(text) and str(int(text)) == text and abs(int(text)) <= _INT64_MAX:
        return int(text)
    return text


def candidate_key(value: Any) -> str:
    """Return the text under which a candidate id is matched (``3000020.0`` as ``3000020``).

    Parameters
    ----------
    value : object
        A table cell or a header's candidate id (int, float, text, None, masked).

    Returns
    -------
    str
        The id's spelling (see the module's rule); ``""`` for a missing one (``None``, ``nan``,
        ``--``, empty).
    """
    text = "" if value is None else str(value).strip()
    if text.lower() in MISSING:
        return ""
    if INTEGER.fullmatch(text):
        return text
    try:
        number = Decimal(text)
    except InvalidOperation:
        return text
    if not number.is_finite():
        return "" if number.is_nan() else text
    # Only ids of a plausible length: 1e999999999 is text, not a billion digits.
    if number.adjusted() < LONGEST_ID and number == number.to_integral_value():
        return str(int(number))
    return text
