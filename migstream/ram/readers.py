"""Read-only, seekable file objects over guest memory: one RAM block, or guest-physical space.

>>> with migstream.open("vm.mig") as s:
...     phys = s.physical()
...     phys.seek(0x100000); data = phys.read(4096)
...     data = phys.pread(0x1_0000_0000, 16)    # above 4 GiB on a large x86 guest

Bytes nobody wrote (zero pages, holes between RAM ranges, pages not in the
stream) read as zeros.  Pages are resolved once (the last copy in the stream
wins) into intervals and read straight from the mapped stream, an interval
at a time.
"""

from __future__ import annotations

import io
from bisect import bisect_right

from migstream.errors import UsageError
from migstream.ram.layout import MemoryMap
from migstream.ram.pagemap import PageMap


class _PagedReader(io.RawIOBase):
    """A read-only raw file of ``size`` bytes whose content ``_read_at`` produces."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size
        self._pos = 0

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        bases = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}
        if whence not in bases or not _is_int(offset):
            raise UsageError("seek() takes an integer offset and SEEK_SET, SEEK_CUR or SEEK_END")
        if bases[whence] + offset < 0:
            raise UsageError(f"seek() to a negative position ({bases[whence] + offset})")
        self._pos = bases[whence] + offset
        return self._pos

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.pread(self._pos, len(b))
        n = len(data)
        b[:n] = data
        self._pos += n
        return n

    def pread(self, offset: int, n: int) -> bytes:
        """``n`` bytes from ``offset`` (fewer at the end), without moving the position."""
        if not _is_int(offset) or not _is_int(n):
            raise UsageError("pread() takes an integer offset and length")
        if offset < 0 or n < 0:
            raise UsageError(f"pread() with a negative offset or length ({offset}, {n})")
        if self._closed():
            raise UsageError("the stream of this reader is closed")
        n = max(0, min(n, self._size - offset))
        return self._read_at(offset, n) if n else b""

    def _read_at(self, offset: int, n: int) -> bytes:
        raise NotImplementedError

    def _closed(self) -> bool:
        return self.closed


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class BlockReader(_PagedReader):
    """One RAM block, at block offsets."""

    def __init__(self, pagemap: PageMap, block: int) -> None:
        super().__init__(pagemap.blocks[block].size)
        self._pm = pagemap
        self._block = block
        self.name = pagemap.blocks[block].name

    def _closed(self) -> bool:
        return self.closed or any(getattr(src, "closed", False) for src in self._pm.sources)

    def _read_at(self, offset: int, n: int) -> bytes:
        return self._pm.read(self._block, offset, n)


class PhysicalReader(_PagedReader):
    """Guest-physical memory: byte at offset X is the guest's byte at address X."""

    def __init__(self, pagemap: PageMap, memmap: MemoryMap) -> None:
        super().__init__(max((p.gpa_end for p in memmap.placements), default=0))
        self.memory_map = memmap
        by_name = {b.name: b.index for b in pagemap.blocks}
        self._starts = [p.gpa for p in memmap.placements]
        self._places = memmap.placements
        self._blocks = {p.block: BlockReader(pagemap, by_name[p.block]) for p in memmap.placements}
        self._pm = pagemap

    def _closed(self) -> bool:
        return self.closed or any(getattr(src, "closed", False) for src in self._pm.sources)

    def _read_at(self, offset: int, n: int) -> bytes:
        out = bytearray(n)
        end = offset + n
        i = max(bisect_right(self._starts, offset) - 1, 0)
        while i < len(self._places):
            p = self._places[i]
            if p.gpa >= end:
                break
            lo, hi = max(offset, p.gpa), min(end, p.gpa_end)
            if lo < hi:
                data = self._blocks[p.block].pread(p.block_offset + lo - p.gpa, hi - lo)
                out[lo - offset : lo - offset + len(data)] = data
            i += 1
        return bytes(out)
