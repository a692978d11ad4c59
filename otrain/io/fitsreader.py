"""A fast reader for plain FITS files, as cutouts are, on disk or gzip-compressed.

astropy parses a header in about a millisecond, and fitsio (CFITSIO) needs about 1.5 times the
time of this reader per cutout (``benchmarks/bench_fits.py`` measures all three). This reader
walks the HDUs by their headers, parses the value cards (fixed and free format, ``HIERARCH``,
commentary cards ignored) and locates each HDU's data. A gzip-compressed file is decompressed
once into memory and read the same way.

Anything else raises :class:`NotSimpleError`: ``CONTINUE`` long strings, a non-standard value
indicator, a value it cannot parse, a header without ``END`` in its first 64 blocks, a file that
does not start like FITS or an extension without ``XTENSION``. The caller then reads the file
with astropy, which handles every FITS layout and names what is wrong.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = [
    "BLOCK",
    "FITS_DTYPES",
    "INTEGER",
    "HDUHeader",
    "NotSimpleError",
    "gunzip_content",
    "is_gzipped",
    "is_image",
    "iter_hdus",
    "open_fits",
    "parse_header",
    "read_array",
]

#: Size of a FITS block in bytes; headers and data are padded to whole blocks.
BLOCK = 2880
_CARD = 80
#: Headers longer than this many blocks are left to astropy.
_MAX_HEADER_BLOCKS = 64
_GZIP_MAGIC = b"\x1f\x8b"
#: Keywords whose cards are commentary, whatever columns 9-10 hold.
_COMMENTARY = frozenset({"COMMENT", "HISTORY", ""})

#: Big-endian numpy dtype of each image BITPIX.
FITS_DTYPES = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([EeDd][+-]?\d+)?")
#: A FITS integer value (also how otrain tells a whole-number candidate id written as text).
INTEGER = re.compile(r"[+-]?\d+")


class NotSimpleError(Exception):
    """The file uses a FITS feature this reader leaves to astropy."""


@dataclass(frozen=True)
class HDUHeader:
    """One HDU as the reader sees it.

    Attributes
    ----------
    index : int
        Position of the HDU in the file (0 is the primary HDU).
    cards : dict
        Value of each keyword, by upper-cased name (``HIERARCH`` names without the prefix); the
        first card wins when a keyword is repeated, as in astropy.
    data_offset : int
        Byte offset of the HDU's data, in the decompressed content for a gzip file.
    data_size : int
        Size of the data in bytes, without the padding to a whole block.
    """

    index: int
    cards: dict[str, Any]
    data_offset: int
    data_size: int


def _parse_value(text: str) -> Any:
    """Parse the value field of a fixed-format or free-format card."""
    text = text.strip()
    if text.startswith("'"):
        chars, index = [], 1
        while index < len(text):
            char = text[index]
            if char == "'":
                if text[index + 1 : index + 2] == "'":
                    chars.append("'")
                    index += 2
                    continue
                return "".join(chars).rstrip()
            chars.append(char)
            index += 1
        raise NotSimpleError("unterminated string")
    value = text.split("/", 1)[0].strip()
    if value == "":
        return None
    if value == "T":
        return True
    if value == "F":
        return False
    if INTEGER.fullmatch(value):
        return int(value)
    if _NUMBER.fullmatch(value):
        return float(value.replace("D", "E").replace("d", "e"))
    raise NotSimpleError(f"value {value!r}")


def parse_header(raw: bytes) -> tuple[dict[str, Any], int] | None:
    """Parse the header at the start of ``raw``.

    Parameters
    ----------
    raw : bytes
        Whole blocks, starting with the header's first card.

    Returns
    -------
    tuple or None
        (cards, header length in bytes, padding included), or None when ``raw`` holds no
        ``END`` card.

    Raises
    ------
    NotSimpleError
        On a ``CONTINUE`` card, a non-standard value indicator or a value it cannot parse.
    UnicodeDecodeError
        On bytes that are not ASCII.
    """
    cards: dict[str, Any] = {}
    for start in range(0, len(raw) - _CARD + 1, _CARD):
        card = raw[start : start + _CARD].decode("ascii")
        keyword = card[:8].rstrip()
        if keyword == "END" and not card[8:].strip():
            return cards, (start // BLOCK + 1) * BLOCK
        if keyword in _COMMENTARY:
            continue
        if keyword == "HIERARCH":
            name, sep, value = card[8:].partition("=")
            if not sep:
                continue
            cards.setdefault(name.strip().upper(), _parse_value(value))
        elif keyword == "CONTINUE":
            raise NotSimpleError("long string")
        elif card[8:10] == "= ":
            cards.setdefault(keyword.upper(), _parse_value(card[10:]))
        elif card[8] == "=":
            raise NotSimpleError("non-standard value indicator")
    return None


def _read_header_at(stream: BinaryIO, offset: int) -> tuple[dict[str, Any], int]:
    """Parse the header starting at byte ``offset``; return (cards, offset of its data)."""
    stream.seek(offset)
    raw = stream.read(4 * BLOCK)
    parsed = parse_header(raw)
    while parsed is None and len(raw) < _MAX_HEADER_BLOCKS * BLOCK:
        more = stream.read(4 * BLOCK)
        if not more:
            break
        raw += more
        parsed = parse_header(raw)
    if parsed is None:
        raise NotSimpleError("header without END")
    cards, length = parsed
    return cards, offset + length


def _data_size(cards: dict[str, Any]) -> int:
    naxis = int(cards.get("NAXIS", 0))
    if naxis == 0:
        return 0
    elements = math.prod(int(cards[f"NAXIS{axis}"]) for axis in range(1, naxis + 1))
    return abs(int(cards["BITPIX"])) // 8 * int(cards.get("GCOUNT", 1)) * (int(cards.get("PCOUNT", 0)) + elements)


def iter_hdus(stream: BinaryIO, size: int) -> Iterator[HDUHeader]:
    """Walk the HDUs of a FITS file, from the primary HDU on, by their headers.

    Parameters
    ----------
    stream : binary file
        The file, or its decompressed content; seekable.
    size : int
        Its length in bytes.

    Yields
    ------
    HDUHeader
        Each HDU in turn; the data is not read. A caller that has found what it needs may stop.

    Raises
    ------
    NotSimpleError
        If the file does not start like FITS, a header cannot be parsed, or the bytes after an
        HDU are not an extension.
    KeyError, TypeError, ValueError
        If a header lacks, or has a bad, ``BITPIX``, ``NAXISn``, ``PCOUNT`` or ``GCOUNT``.
    """
    stream.seek(0)
    if stream.read(9) != b"SIMPLE  =":
        raise NotSimpleError("not a FITS file")
    position, index = 0, 0
    while index == 0 or position < size:
        cards, data_offset = _read_header_at(stream, position)
        if index == 0 and cards.get("SIMPLE") is not True:
            raise NotSimpleError("the primary header does not say SIMPLE = T")
        if index > 0 and "XTENSION" not in cards:
            raise NotSimpleError(f"the bytes after HDU {index - 1} are not an extension")
        data_size = _data_size(cards)
        yield HDUHeader(index=index, cards=cards, data_offset=data_offset, data_size=data_size)
        position = data_offset + -(-data_size // BLOCK) * BLOCK
        index += 1


def is_image(cards: dict[str, Any]) -> bool:
    """Tell a 2-D or 3-D image with a valid ``BITPIX`` from anything else."""
    return cards.get("NAXIS") in (2, 3) and cards.get("BITPIX") in FITS_DTYPES


def is_gzipped(path: Path, content: bytes | None = None) -> bool:
    """Tell a gzip-compressed file by its content, whatever its name.

    Parameters
    ----------
    path : Path
        The file.
    content : bytes, optional
        The file's bytes, already in memory (read from a URI by Spark, say): ``path`` is not opened.

    Raises
    ------
    OSError
        If the file cannot be read.
    """
    if content is not None:
        return content[:2] == _GZIP_MAGIC
    with open(path, "rb") as stream:
        return stream.read(2) == _GZIP_MAGIC


@contextmanager
def open_fits(path: Path, content: bytes | None = None) -> Iterator[tuple[BinaryIO, int, bool]]:
    """Open a FITS file for :func:`iter_hdus`, decompressing it into memory when it is gzipped.

    Compression is told by the content, whatever the file's name.

    Parameters
    ----------
    path : Path
        The file.
    content : bytes, optional
        The file's bytes, already in memory: read instead of ``path``.

    Yields
    ------
    tuple
        (seekable binary stream, its length in bytes, whether the file is gzip-compressed).

    Raises
    ------
    OSError
        If the file cannot be read, or is not a valid gzip file (``gzip.BadGzipFile``).
    EOFError, zlib.error
        If its gzip stream is truncated or damaged.
    """
    if content is not None:
        compressed = content[:2] == _GZIP_MAGIC
        data = gunzip_content(content) if compressed else content
        yield io.BytesIO(data), len(data), compressed
        return
    with open(path, "rb") as stream:
        if stream.read(2) == _GZIP_MAGIC:
            content = _gunzip(stream)
            yield io.BytesIO(content), len(content), True
        else:
            yield stream, os.fstat(stream.fileno()).st_size, False


#: The last file decompressed, when small: its identity and content. A reader asks for a file's
#: headers and then for its pixels; this spares the second decompression. The identity is
#: (device, inode, size, modification time): a file rewritten in place with the same size within
#: the file system's time resolution would be read stale, which a cutout pipeline does not do.
_last_gunzipped: tuple[tuple[int, int, int, int], bytes] | None = None
_MAX_CACHED_BYTES = 16 * 2**20


def _gunzip(stream: BinaryIO) -> bytes:
    global _last_gunzipped
    status = os.fstat(stream.fileno())
    identity = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
    cached = _last_gunzipped
    if cached is not None and cached[0] == identity:
        return cached[1]
    stream.seek(0)
    content = gzip.decompress(stream.read())
    _last_gunzipped = (identity, content) if len(content) <= _MAX_CACHED_BYTES else None
    return content


#: The last bytes in memory decompressed, when small: the same bytes object and its content.
#: Spark's ``binaryFile`` rows reach the readers as bytes, asked for headers and then pixels.
_last_content: tuple[bytes, bytes] | None = None


def gunzip_content(content: bytes) -> bytes:
    """Decompress a gzipped file's bytes held in memory; asked again for the same object, decompress it once.

    Raises
    ------
    OSError, EOFError, zlib.error
        If the bytes are not a valid, complete gzip stream.
    """
    global _last_content
    cached = _last_content
    if cached is not None and cached[0] is content:
        return cached[1]
    data = gzip.decompress(content)
    _last_content = (content, data) if len(data) <= _MAX_CACHED_BYTES else None
    return data


def read_array(
    path: Path, offset: int, dtype: str, shape: tuple[int, ...], compressed: bool, content: bytes | None = None
) -> np.ndarray | None:
    """Read an array of stored values from a file, without any scaling.

    Parameters
    ----------
    path : Path
        The file.
    offset : int
        Byte offset of the array, in the decompressed content when ``compressed``.
    dtype : str
        Stored (big-endian) numpy dtype.
    shape : tuple of int
        Array shape in numpy order.
    compressed : bool
        The file is gzip-compressed.
    content : bytes, optional
        The file's bytes, already in memory: read instead of ``path``.

    Returns
    -------
    numpy.ndarray or None
        The array, or None if the file ends before it does.

    Raises
    ------
    OSError, EOFError, zlib.error
        If the file cannot be read or decompressed.
    """
    count = math.prod(shape)
    if content is not None:
        data = gunzip_content(content) if compressed else content
        if len(data) < offset + count * np.dtype(dtype).itemsize:
            return None
        raw = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    elif compressed:
        with open(path, "rb") as stream:
            content = _gunzip(stream)
        if len(content) < offset + count * np.dtype(dtype).itemsize:
            return None
        raw = np.frombuffer(content, dtype=dtype, count=count, offset=offset)
    else:
        raw = np.fromfile(path, dtype=dtype, count=count, offset=offset)
        if raw.size != count:
            return None
    return raw.reshape(shape)
