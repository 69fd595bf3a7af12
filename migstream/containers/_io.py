"""Small file-descriptor helpers shared by the container readers.

Everything here works on raw descriptors with positional I/O (``os.pread``), so
the same descriptor can be read by several layers without any shared file
position.  Temporary files are created and unlinked at once: they vanish with
the last descriptor, whatever happens to the process.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Protocol

from migstream.errors import ContainerError, UsageError

COPY_CHUNK = 8 << 20
"""Bytes moved per read/write when copying or decompressing."""

DEFAULT_MAX_SIZE = 1 << 40
"""Default cap on bytes written to a temporary file (decompressed, spooled, extracted)."""

TEMP_CAP_ENV = "MIGSTREAM_MAX_TEMP"
"""Environment variable that caps every temporary file (bytes, or with a K/M/G/T suffix)."""

TEMP_RESERVE_MAX = 1 << 30
"""Most free space of the temporary directory kept in reserve (less on small filesystems)."""

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kKmMgGtTpP]?)(?:i?[bB])?")


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


def read_head(
    reader: Readable, size: int, name: str, errors: tuple[type[BaseException], ...] = (OSError, ValueError)
) -> bytes:
    """The first ``size`` bytes of a forward-only reader (fewer only at its end); ``errors`` become
    a :class:`ContainerError` naming ``name``."""
    parts: list[bytes] = []
    try:
        while size > 0:
            chunk = reader.read(size)
            if not chunk:
                break
            parts.append(chunk)
            size -= len(chunk)
    except ContainerError:
        raise
    except errors as exc:
        raise ContainerError(f"cannot read {name}: {getattr(exc, 'strerror', None) or exc}") from None
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


def parse_size(text: str) -> int:
    """``64M``, ``2G``, ``512k``, ``1GiB`` or plain bytes: a size in bytes (binary multiples)."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise UsageError(f"{TEMP_CAP_ENV}={text!r} is not a size (bytes, or a number with K, M, G or T)")
    return int(float(m.group(1)) * (1 << (10 * " KMGTP".index((m.group(2) or " ").upper()))))


@dataclass(frozen=True)
class TempCap:
    """The most bytes one temporary file may hold, and what sets that bound (for error messages)."""

    limit: int
    reason: str

    def check(self, size: int, what: str) -> None:
        if size > self.limit:
            raise ContainerError(
                f"{what} exceeds the temporary-file limit of {self.limit} bytes: {self.reason}"
            )


def temp_cap(limit: int = DEFAULT_MAX_SIZE) -> TempCap:
    """The cap on a new temporary file: ``limit``, ``MIGSTREAM_MAX_TEMP``, and the free space of TMPDIR.

    The free space keeps a reserve (a twentieth of the filesystem, at most
    :data:`TEMP_RESERVE_MAX`), so a temporary file never fills the disk.
    """
    caps = [TempCap(limit, f"the size limit is {limit} bytes")]
    env = os.environ.get(TEMP_CAP_ENV)
    if env:
        size = parse_size(env)
        caps.append(TempCap(size, f"the cap {TEMP_CAP_ENV}={env} ({size} bytes); raise {TEMP_CAP_ENV}"))
    directory = tempfile.gettempdir()
    try:
        fs = os.statvfs(directory)
    except OSError:
        pass
    else:
        reserve = min(TEMP_RESERVE_MAX, fs.f_blocks * fs.f_frsize // 20)
        free = max(0, fs.f_bavail * fs.f_frsize - reserve)
        caps.append(
            TempCap(
                free,
                f"the free space of {directory} ({free} bytes, keeping {reserve} in reserve); "
                f"set TMPDIR to a larger filesystem (or {TEMP_CAP_ENV} to a size)",
            )
        )
    return min(caps, key=lambda c: c.limit)


def copy_capped(reader: Readable, dst: int, limit: int, what: str, first: bytes = b"") -> int:
    """Copy ``first`` then ``reader`` to the start of ``dst`` until EOF, within :func:`temp_cap`."""
    cap = temp_cap(limit)
    total = 0
    chunk = first
    while True:
        if not chunk:
            chunk = reader.read(COPY_CHUNK)
            if not chunk:
                return total
        cap.check(total + len(chunk), what)
        write_all(dst, chunk, total)
        total += len(chunk)
        chunk = b""


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
