"""libvirt save images (``virsh save``, managed save, external snapshot memory).

A 92-byte header, the domain XML (and an optional cookie) padded to
``data_len`` bytes, then the QEMU stream, compressed or not according to
``format``.  The header integers are in the byte order of the host that saved
the image; a ``version`` that reads larger than the current one means the
other byte order.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from migstream.containers._io import pread_exact, pread_upto
from migstream.containers.magic import (
    KIND_BZIP2,
    KIND_GZIP,
    KIND_LZOP,
    KIND_XZ,
    KIND_ZSTD,
    QEMU_SAVE_MAGIC,
    QEMU_SAVE_PARTIAL,
)
from migstream.errors import ContainerError

QEMU_SAVE_VERSION = 2
QEMU_SAVE_HEADER_SIZE = 92
_FIELDS = struct.Struct("5I")  # version, data_len, was_running, format, cookieOffset
_FIELDS_OFFSET = len(QEMU_SAVE_MAGIC)

QEMU_SAVE_FORMAT_RAW = 0
QEMU_SAVE_FORMAT_SPARSE = 6
QEMU_SAVE_FORMATS = ("raw", "gzip", "bzip2", "xz", "lzop", "zstd", "sparse")
"""``format`` values, by number, as libvirt names them."""

FORMAT_COMPRESSION = {1: KIND_GZIP, 2: KIND_BZIP2, 3: KIND_XZ, 4: KIND_LZOP, 5: KIND_ZSTD}
"""``format`` values whose stream is the output of a compressor."""

TEXT_READ_CAP = 16 << 20
"""At most this many bytes of XML or cookie are read into ``details``."""


@dataclass(frozen=True)
class LibvirtHeader:
    version: int
    data_len: int
    was_running: int
    format: int
    cookie_offset: int
    byte_order: str
    xml: str
    cookie: str | None

    @property
    def stream_offset(self) -> int:
        """File offset of the first byte after the header and data area."""
        return QEMU_SAVE_HEADER_SIZE + self.data_len

    @property
    def compression(self) -> str | None:
        """The compressor of the stream (a ``KIND_*`` name), ``None`` when stored as is."""
        if self.version != QEMU_SAVE_VERSION:
            return None  # version 1 images never had a compressed stream
        return FORMAT_COMPRESSION.get(self.format)

    def details(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "format": QEMU_SAVE_FORMATS[self.format],
            "format_id": self.format,
            "was_running": self.was_running,
            "byte_order": self.byte_order,
            "data_len": self.data_len,
            "stream_offset": self.stream_offset,
            "xml": self.xml,
            "cookie": self.cookie,
        }


def read_header(fd: int, base: int, size: int) -> LibvirtHeader:
    """Parse and check the header of the libvirt save image at ``[base, base + size)`` of ``fd``."""
    if size < QEMU_SAVE_HEADER_SIZE:
        raise ContainerError(
            f"libvirt save image is truncated: header needs {QEMU_SAVE_HEADER_SIZE} bytes, file has {size}"
        )
    raw = pread_exact(fd, base, QEMU_SAVE_HEADER_SIZE, "libvirt save image header")
    magic = raw[:_FIELDS_OFFSET]
    if magic == QEMU_SAVE_PARTIAL:
        raise ContainerError(
            "libvirt save image is incomplete (magic LibvirtQemudPart: the save did not finish)"
        )
    if magic != QEMU_SAVE_MAGIC:
        raise ContainerError(f"not a libvirt save image: magic {magic!r}")
    version, data_len, was_running, fmt, cookie_offset, order = _fields(raw)
    _check(version, data_len, fmt, cookie_offset, size)
    xml_len = cookie_offset or data_len
    xml = _text(fd, base + QEMU_SAVE_HEADER_SIZE, xml_len)
    cookie = _text(fd, base + QEMU_SAVE_HEADER_SIZE + xml_len, data_len - xml_len) if cookie_offset else None
    return LibvirtHeader(version, data_len, was_running, fmt, cookie_offset, order, xml, cookie)


def _fields(raw: bytes) -> tuple[int, int, int, int, int, str]:
    for order, prefix in (("little", "<"), ("big", ">")):
        values = struct.unpack_from(prefix + _FIELDS.format, raw, _FIELDS_OFFSET)
        if values[0] <= QEMU_SAVE_VERSION:
            return (*values, order)
    raise ContainerError(f"libvirt save image version {values[0]} is not supported (max {QEMU_SAVE_VERSION})")


def _check(version: int, data_len: int, fmt: int, cookie_offset: int, size: int) -> None:
    if version == 0:
        raise ContainerError("libvirt save image has version 0")
    if fmt >= len(QEMU_SAVE_FORMATS):
        raise ContainerError(f"libvirt save image has unknown format {fmt}")
    if data_len == 0 or QEMU_SAVE_HEADER_SIZE + data_len > size:
        raise ContainerError(
            f"libvirt save image data_len {data_len} does not fit in the file ({size} bytes)"
        )
    if cookie_offset > data_len:
        raise ContainerError(f"libvirt save image cookieOffset {cookie_offset} is beyond data_len {data_len}")


def _text(fd: int, offset: int, length: int) -> str:
    data = pread_upto(fd, offset, min(length, TEXT_READ_CAP))
    return data.split(b"\0", 1)[0].decode("utf-8", "replace")
