"""RAM as the stream carries it: blocks, and runs of pages with their file offsets.

Guest RAM is never copied into Python objects.  The RAM decoder records
*runs*: ``count`` consecutive pages of one block, of one kind, whose records
sit at a fixed stride in the stream.  A run of plain pages says where every
page's bytes are; a run of zero pages says which byte fills them.  Outputs
resolve runs in stream order (the last copy of a page wins) and copy bytes in
large slices.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any


class PageKind(IntEnum):
    PAGE = 1  # raw page bytes in the stream
    ZERO = 2  # filled with one byte value (aux = fill byte)
    XBZRLE = 3  # delta against the previous copy (aux = encoded length)
    COMPRESS = 4  # zlib-compressed page (aux = compressed length)
    MAPPED = 5  # mapped-ram: page bytes at a fixed file offset, stride = page size
    MULTIFD = 6  # page bytes in a multifd channel capture (aux = channel number)
    MULTIFD_ZERO = 7  # zero page listed in a multifd packet


@dataclass(frozen=True)
class MappedRamHeader:
    version: int
    page_size: int
    bitmap_offset: int
    pages_offset: int

    def to_json(self) -> dict[str, int]:
        return {
            "version": self.version,
            "page_size": self.page_size,
            "bitmap_offset": self.bitmap_offset,
            "pages_offset": self.pages_offset,
        }


@dataclass(frozen=True)
class RamBlock:
    """A RAMBlock announced in the MEM_SIZE list."""

    index: int
    name: str
    size: int  # used_length, bytes
    offset: int  # stream offset of the entry's name length byte
    page_size: int | None = None  # per-block page size (postcopy, hugepage blocks)
    mr_addr: int | None = None  # guest address of the MemoryRegion (x-ignore-shared)
    mapped_ram: MappedRamHeader | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "size": self.size, "offset": self.offset}
        if self.page_size is not None:
            out["page_size"] = self.page_size
        if self.mr_addr is not None:
            out["mr_addr"] = self.mr_addr
        if self.mapped_ram is not None:
            out["mapped_ram"] = self.mapped_ram.to_json()
        return out


@dataclass(frozen=True)
class PageRun:
    """``count`` pages of block ``block`` from block offset ``addr`` on.

    Page *k* of the run is described by the record at ``stream_offset + k*stride``;
    its page bytes (PAGE, MAPPED, MULTIFD) start ``data_skip`` bytes after that.
    ``channel`` is 0 for the main stream, n for multifd capture n.
    """

    block: int
    addr: int
    count: int
    kind: PageKind
    stream_offset: int
    stride: int
    data_skip: int
    aux: int
    channel: int = 0


_ROW_FIELDS = 8
#: Bulk runs held back at most (64 bytes each) before they join the columns.
_MAX_PENDING_RUNS = 1 << 20


class RunTable:
    """Columns of page runs in arrival order (compact: 8 bytes per column per run).

    Columns are ``array('q')`` attributes.  Runs appended in bulk (:meth:`extend_columns`)
    wait as blocks and join the columns in one pass when a column is next read, so
    many small bulk appends cost one copy, not one column resize each.
    """

    __slots__ = (
        "_block", "_addr", "_count", "_kind", "_offset", "_stride", "_skip", "_aux", "_channel",
        "_pending", "_pending_runs",
    )

    def __init__(self) -> None:
        self._block = array("q")
        self._addr = array("q")
        self._count = array("q")
        self._kind = array("q")
        self._offset = array("q")
        self._stride = array("q")
        self._skip = array("q")
        self._aux = array("q")
        self._channel = array("q")
        #: Bulk runs not yet in the columns: (8 columns of n int64 values, n, channel).
        self._pending: list[tuple[bytes, int, int]] = []
        self._pending_runs = 0

    def _merge(self) -> None:
        pending, self._pending = self._pending, []
        self._pending_runs = 0
        columns = [self._block, self._addr, self._count, self._kind]
        columns += [self._offset, self._stride, self._skip, self._aux]
        for i, col in enumerate(columns):
            parts = [memoryview(data)[i * n * 8 : (i + 1) * n * 8] for data, n, _ in pending]
            col.frombytes(parts[0] if len(parts) == 1 else b"".join(parts))
        channels = array("q")
        for _, n, channel in pending:
            channels.extend(array("q", [channel]) * n)
        self._channel.extend(channels)

    @property
    def block(self) -> array[int]:
        if self._pending:
            self._merge()
        return self._block

    @property
    def addr(self) -> array[int]:
        if self._pending:
            self._merge()
        return self._addr

    @property
    def count(self) -> array[int]:
        if self._pending:
            self._merge()
        return self._count

    @property
    def kind(self) -> array[int]:
        if self._pending:
            self._merge()
        return self._kind

    @property
    def offset(self) -> array[int]:
        if self._pending:
            self._merge()
        return self._offset

    @property
    def stride(self) -> array[int]:
        if self._pending:
            self._merge()
        return self._stride

    @property
    def skip(self) -> array[int]:
        if self._pending:
            self._merge()
        return self._skip

    @property
    def aux(self) -> array[int]:
        if self._pending:
            self._merge()
        return self._aux

    @property
    def channel(self) -> array[int]:
        if self._pending:
            self._merge()
        return self._channel

    def add(
        self,
        block: int,
        addr: int,
        count: int,
        kind: int,
        offset: int,
        stride: int,
        skip: int,
        aux: int,
        channel: int = 0,
    ) -> None:
        if self._pending:
            self._merge()
        self._block.append(block)
        self._addr.append(addr)
        self._count.append(count)
        self._kind.append(kind)
        self._offset.append(offset)
        self._stride.append(stride)
        self._skip.append(skip)
        self._aux.append(aux)
        self._channel.append(channel)

    def extend_columns(self, data: bytes, channel: int = 0) -> int:
        """Append runs given column by column: ``data`` holds n native int64 values of each of
        block, addr, count, kind, offset, stride, skip, aux, in that order.

        Returns n, the number of runs appended.
        """
        n, rest = divmod(len(data), 8 * _ROW_FIELDS)
        if rest:
            raise ValueError("bulk runs are 8 columns of int64 values")
        if n:
            self._pending.append((bytes(data), n, channel))
            self._pending_runs += n
            if self._pending_runs >= _MAX_PENDING_RUNS:
                self._merge()
        return n

    def __len__(self) -> int:
        return len(self.block)

    def __getitem__(self, i: int) -> PageRun:
        return PageRun(
            self.block[i],
            self.addr[i],
            self.count[i],
            PageKind(self.kind[i]),
            self.offset[i],
            self.stride[i],
            self.skip[i],
            self.aux[i],
            self.channel[i],
        )

    def __iter__(self) -> Iterator[PageRun]:
        for i in range(len(self)):
            yield self[i]


@dataclass(frozen=True)
class RamStats:
    """Page counts per kind, over the whole stream (every iteration counted)."""

    pages: int = 0
    zero: int = 0
    zero_nonzero_fill: int = 0
    xbzrle: int = 0
    compressed: int = 0
    mapped: int = 0
    multifd_flush: int = 0
    eos: int = 0
    discards: int = 0

    def to_json(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class RamIndex:
    """RAM blocks and every page run of the stream."""

    page_size: int
    blocks: tuple[RamBlock, ...]
    runs: RunTable
    stats: RamStats
    section_id: int | None = None
    ignore_shared: bool = False
    mapped_ram: bool = False
