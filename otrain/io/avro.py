"""Avro object container files, read fast when many files share one schema (alert packets do).

``fastavro`` reads an Avro object container file (a header holding the writer schema, then
blocks of records). Reading thousands of one-packet files with ``fastavro.reader`` spends most of
its time parsing the same schema again; :func:`read_container` parses each distinct schema once
and decodes the blocks with ``fastavro``'s schemaless reader (``null`` and ``deflate`` codecs;
other codecs go through ``fastavro.reader``). :mod:`otrain.io.alerts` reads packets with it.
"""

from __future__ import annotations

import io
import json
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

__all__ = ["read_container"]

_AVRO_MAGIC = b"Obj\x01"


def read_container(stream: BinaryIO) -> tuple[Any, Iterator[dict[str, Any]]]:
    """Open an Avro object container file: its writer schema, and an iterator over its records.

    Parameters
    ----------
    stream : file-like
        The file, from its start.

    Returns
    -------
    object
        The writer schema, as JSON gives it.
    iterator of dict
        The records, decoded as they are read; an error (a truncated or damaged block) is raised
        when the iterator reaches it.

    Notes
    -----
    Every ZTF packet file carries the same 23 KB schema, and parsing it takes eight times as long
    as decoding the packet (``benchmarks/bench_alerts.py``): each distinct schema is parsed once
    per process (:data:`_PARSED`), and the blocks (codecs ``null`` and ``deflate``) are decoded
    with ``fastavro``'s schemaless reader. Other codecs go through ``fastavro.reader``.
    """
    import fastavro
    from fastavro.read import HEADER_SCHEMA

    header = fastavro.schemaless_reader(stream, _parsed("header", HEADER_SCHEMA))
    if header["magic"] != _AVRO_MAGIC:
        raise ValueError("not an Avro object container file")
    meta = header["meta"]
    codec = meta.get("avro.codec", b"null").decode()
    if "avro.schema" not in meta:
        raise ValueError("no schema in the file's header")
    text = meta["avro.schema"].decode()
    if codec not in ("null", "deflate"):
        stream.seek(0)
        reader = fastavro.reader(stream)
        return reader.writer_schema, iter(reader)
    schema = json.loads(text)
    return schema, _blocks(stream, _parsed(text, schema), codec, header["sync"])


#: Parsed Avro schemas by their text (a few distinct ones in practice; the cache stops growing at 64).
_PARSED: dict[str, Any] = {}


def _parsed(key: str, schema: Any) -> Any:
    """Return ``schema`` parsed by ``fastavro``, once per ``key``."""
    import fastavro

    parsed = _PARSED.get(key)
    if parsed is None:
        parsed = fastavro.parse_schema(schema)
        if len(_PARSED) < 64:
            _PARSED[key] = parsed
    return parsed


def _read_long(stream: BinaryIO) -> int | None:
    """Read an Avro long (zig-zag varint); None at the end of the stream, before its first byte."""
    shift = result = 0
    while True:
        byte = stream.read(1)
        if not byte:
            if shift == 0:
                return None
            raise EOFError("the file ends inside a block's header")
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return (result >> 1) ^ -(result & 1)
        shift += 7


def _blocks(stream: BinaryIO, parsed: Any, codec: str, sync: bytes) -> Iterator[dict[str, Any]]:
    """Yield the records of a container file's blocks, checking each block's length and sync marker."""
    import fastavro

    while (count := _read_long(stream)) is not None:
        size = _read_long(stream)
        if size is None or count < 0 or size < 0:
            raise EOFError("the file ends inside a block's header")
        data = stream.read(size)
        if len(data) < size:
            raise EOFError(f"expected {size} bytes, read {len(data)}")
        if stream.read(16) != sync:
            raise ValueError("a block does not end with the file's sync marker")
        block = io.BytesIO(zlib.decompress(data, -15) if codec == "deflate" else data)
        for _ in range(count):
            yield fastavro.schemaless_reader(block, parsed)
