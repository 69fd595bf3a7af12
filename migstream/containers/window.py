"""One pass over a pipe or a decompressor: stream bytes at their own offsets, read as the parser asks.

A :class:`StreamWindow` reserves an address range as large as the biggest
stream accepted (anonymous memory that costs nothing until written) and reads
its input into it front to back, so every byte sits at its stream offset and
the parser, the compiled scanner and the device decoders work on it as on a
mapped file.  Nothing goes to disk.  What the reader no longer needs (the
pages of RAM records once indexed) is given back with ``MADV_DONTNEED``:
resident memory stays at the look-ahead plus the small records kept (device
sections, the description), whatever the stream's size.
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Callable
from typing import Protocol

from migstream.errors import ContainerError

#: Linux's MAP_NORESERVE (the mmap module does not name it): no swap is reserved for the range.
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)
#: Bytes asked of the input per read.
READ_CHUNK = 1 << 20
#: Memory is given back in pieces of this alignment (a transparent huge page).
RELEASE_ALIGN = 2 << 20


class ReadsInto(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


class StreamWindow:
    """The bytes of a stream read once, each at its own offset of :attr:`buffer`.

    ``buffer`` spans ``capacity`` bytes; only ``[0, filled)`` holds data.
    :meth:`fill` reads more; :meth:`release` gives back memory the caller is
    done with (those bytes then read as zeros).
    """

    def __init__(
        self,
        reader: ReadsInto,
        name: str,
        capacity: int,
        *,
        head: bytes = b"",
        closer: Callable[[], None] | None = None,
        errors: tuple[type[BaseException], ...] = (OSError,),
    ) -> None:
        self.name = name
        self._asked = capacity
        self._reader = reader
        self._closer = closer
        self._errors = errors
        self._map: mmap.mmap | None = _reserve(name, capacity)
        #: Less than asked for when the address space is limited (``ulimit -v``).
        self.capacity = capacity = len(self._map)
        self._limited = capacity < self._asked
        with contextlib.suppress(OSError, AttributeError):
            self._map.madvise(mmap.MADV_HUGEPAGE)
        self.buffer = memoryview(self._map)
        self.filled = 0
        self.eof = False
        self.released = 0
        if head:
            if len(head) > capacity:
                raise ContainerError(f"{name}: the stream exceeds the size limit of {capacity} bytes")
            self.buffer[: len(head)] = head
            self.filled = len(head)

    def fill(self, upto: int) -> int:
        """Read until ``upto`` bytes are held or the input ends; returns the bytes held."""
        upto = min(upto, self.capacity + 1)
        while self.filled < upto and not self.eof:
            n = min(READ_CHUNK, self.capacity - self.filled)
            if n <= 0:
                why = (
                    "the address space this process may reserve (ulimit -v); "
                    "give a file instead of a pipe, or raise the limit"
                    if self._limited
                    else "the size limit"
                )
                raise ContainerError(f"{self.name}: the stream exceeds {self.capacity} bytes, {why}")
            try:
                got = self._reader.readinto(self.buffer[self.filled : self.filled + n])
            except ContainerError:
                raise
            except self._errors as exc:
                raise ContainerError(
                    f"{self.name}: read error after {self.filled} bytes: "
                    f"{getattr(exc, 'strerror', None) or exc}"
                ) from None
            if not got:
                self.eof = True
            else:
                self.filled += got
        return self.filled

    def release(self, start: int, stop: int) -> None:
        """Give back the memory of ``[start, stop)`` (whole aligned pieces only)."""
        if self._map is None:
            return
        start = max(start, self.released)
        lo = -(-start // RELEASE_ALIGN) * RELEASE_ALIGN
        hi = min(stop, self.filled) // RELEASE_ALIGN * RELEASE_ALIGN
        if hi - lo < RELEASE_ALIGN:
            return
        with contextlib.suppress(OSError):
            self._map.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        self.released = hi

    def close(self) -> None:
        with contextlib.suppress(BufferError):
            self.buffer.release()
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a view is still exported; it goes with the process
                self._map.close()
            self._map = None
        if self._closer is not None:
            closer, self._closer = self._closer, None
            with contextlib.suppress(Exception):
                closer()


#: Smallest reservation tried when the address space is limited.
MIN_RESERVE = 64 << 20


def _reserve(name: str, capacity: int) -> mmap.mmap:
    """An anonymous mapping of ``capacity`` bytes, or less when the address space is limited."""
    size = capacity
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE
    while True:
        try:
            found = mmap.mmap(-1, size, flags=flags)
        except (OSError, ValueError, OverflowError) as exc:
            if size <= MIN_RESERVE:
                raise ContainerError(f"{name}: cannot reserve address space for the stream: {exc}") from None
            size = max(MIN_RESERVE, size // 2)
            continue
        if size == capacity or size <= MIN_RESERVE:
            return found
        # Limited: leave as much again to the rest of the process.
        found.close()
        return mmap.mmap(-1, max(MIN_RESERVE, size // 2), flags=flags)
