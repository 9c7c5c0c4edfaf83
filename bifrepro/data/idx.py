"""The IDX file format of (Fashion-)MNIST: parse with checks, and write (tests, conversions).

An IDX file is a 4-byte magic number ``00 00 <type> <ndim>``, then ``ndim`` big-endian uint32
sizes, then the values in C order. Only unsigned bytes (type ``0x08``) occur in the MNIST family,
so only those are read. Every malformed file (wrong magic, wrong rank, truncated or overlong
data, a broken gzip stream) raises :class:`IDXFormatError` naming the file, so a corrupt download
or package is reported instead of turning into garbage images.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["IDX_UBYTE", "IDXFormatError", "parse_idx", "read_idx", "idx_bytes"]

#: Type code of unsigned bytes in the IDX magic number.
IDX_UBYTE = 0x08


class IDXFormatError(ValueError):
    """An IDX file is malformed (wrong magic number, wrong shape, truncated, broken gzip)."""


def parse_idx(data: bytes, name: str = "<bytes>", ndim: int | None = None) -> np.ndarray:
    """The uint8 array stored in the IDX bytes ``data`` (``name`` appears in errors).

    Args:
        ndim: expected number of dimensions (``None``: any).

    Raises:
        IDXFormatError: the bytes are not a well-formed unsigned-byte IDX file.
    """
    if len(data) < 4:
        raise IDXFormatError(f"{name}: {len(data)} bytes, too short for an IDX header")
    zero, type_code, rank = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise IDXFormatError(
            f"{name}: wrong magic number 0x{data[:4].hex()} (an IDX file starts with 00 00)"
        )
    if type_code != IDX_UBYTE:
        raise IDXFormatError(
            f"{name}: element type 0x{type_code:02x} is not unsigned byte (0x08), magic "
            f"0x{data[:4].hex()}"
        )
    if ndim is not None and rank != ndim:
        raise IDXFormatError(f"{name}: {rank} dimensions in the magic number, expected {ndim}")
    header = 4 + 4 * rank
    if len(data) < header:
        raise IDXFormatError(f"{name}: truncated header ({len(data)} of {header} bytes)")
    shape = struct.unpack(f">{rank}I", data[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise IDXFormatError(
            f"{name}: {what}: {len(data)} bytes, expected {expected} for shape {tuple(shape)}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path: str | os.PathLike[str], ndim: int | None = None) -> np.ndarray:
    """:func:`parse_idx` of a file; a name ending in ``.gz`` is decompressed first."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise IDXFormatError(f"{path}: cannot be read or decompressed ({err})") from err
    return parse_idx(raw, str(path), ndim)


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array (the inverse of :func:`parse_idx`)."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"IDX writing supports uint8 arrays only, got {array.dtype}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX arrays have 1 to 255 dimensions, got {array.ndim}")
    header = struct.pack(">HBB", 0, IDX_UBYTE, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()
