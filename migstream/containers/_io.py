"""Small file-descriptor helpers shared by the container readers.

Everything here works on raw descriptors with positional I/O (``os.pread``), so
the same descriptor can be read by several layers without any shared file
position.  Temporary files are created and unlinked at once: they vanish with
the last descriptor, whatever happens to the process.
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import Protocol

from migstream.errors import ContainerError

COPY_CHUNK = 8 << 20
"""Bytes moved per read/write when copying or decompressing."""

DEFAULT_MAX_SIZE = 1 << 40
"""Default cap on bytes written to a temporary file (decompressed, spooled, extracted)."""


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def file_size(fd: int) -> int:
    return os.fstat(fd).st_size


def pread_exact(fd: int, offset: int, length: int, what: str) -> bytes:
    """Read exactly ``length`` bytes at ``offset`` or raise ContainerError naming ``what``."""
    data = pread_upto(fd, offset, length)
    if len(data) != length:
        raise ContainerError(
            f"{what} is truncated: needs {length} bytes at offset {offset:#x}, file has {len(data)}"
        )
    return data


def pread_upto(fd: int, offset: int, length: int) -> bytes:
    """Read up to ``length`` bytes at ``offset`` (fewer only at end of file)."""
    parts: list[bytes] = []
    while length > 0:
        try:
            chunk = os.pread(fd, min(length, COPY_CHUNK), offset)
        except OSError as exc:
            raise ContainerError(f"read error at offset {offset:#x}: {exc.strerror}") from None
        if not chunk:
            break
        parts.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return b"".join(parts)


def new_temp_fd() -> int:
    """An empty read-write temporary file that is already unlinked."""
    try:
        fd, path = tempfile.mkstemp(prefix="migstream-")
    except OSError as exc:
        raise ContainerError(f"cannot create a temporary file: {exc.strerror}") from None
    os.unlink(path)
    return fd


def write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` of ``fd``."""
    view = memoryview(data)
    while view:
        try:
            done = os.pwrite(fd, view, offset)
        except OSError as exc:
            raise ContainerError(f"cannot write the temporary file: {exc.strerror}") from None
        view = view[done:]
        offset += done


def copy_range(src: int, src_offset: int, dst: int, dst_offset: int, length: int) -> int:
    """Copy ``length`` bytes between descriptors (in-kernel when possible).

    Returns the number of bytes copied; fewer than ``length`` only when the
    source ends first.
    """
    done = 0
    use_kernel = hasattr(os, "copy_file_range")
    while done < length:
        count = min(length - done, 1 << 30)
        if use_kernel:
            try:
                moved = os.copy_file_range(src, dst, count, src_offset + done, dst_offset + done)
            except OSError:
                use_kernel = False
                continue
        else:
            chunk = pread_upto(src, src_offset + done, min(count, COPY_CHUNK))
            write_all(dst, chunk, dst_offset + done)
            moved = len(chunk)
        if moved == 0:
            break
        done += moved
    return done


def copy_capped(reader: Readable, dst: int, limit: int, what: str) -> int:
    """Copy ``reader`` to the start of ``dst`` until EOF; more than ``limit`` bytes is an error."""
    total = 0
    while True:
        chunk = reader.read(COPY_CHUNK)
        if not chunk:
            return total
        if total + len(chunk) > limit:
            raise ContainerError(f"{what} exceeds the size limit of {limit} bytes; refusing to go on")
        write_all(dst, chunk, total)
        total += len(chunk)


class WindowReader(io.RawIOBase):
    """A read-only, forward-only file object over bytes ``[base, base + size)`` of ``fd``."""

    def __init__(self, fd: int, base: int, size: int) -> None:
        super().__init__()
        self._fd = fd
        self._pos = base
        self._end = base + size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self._end - self._pos)
        if want <= 0:
            return 0
        try:
            data = os.pread(self._fd, want, self._pos)
        except OSError as exc:
            raise ContainerError(f"read error at offset {self._pos:#x}: {exc.strerror}") from None
        memoryview(buffer)[: len(data)] = data
        self._pos += len(data)
        return len(data)


def buffered_window(fd: int, base: int, size: int) -> io.BufferedReader:
    """:class:`WindowReader` with a large buffer, for decompressors that read in small pieces."""
    return io.BufferedReader(WindowReader(fd, base, size), buffer_size=1 << 20)
