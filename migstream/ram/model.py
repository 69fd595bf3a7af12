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


class RunTable:
    """Columns of page runs in arrival order (compact: 8 bytes per column per run)."""

    __slots__ = ("block", "addr", "count", "kind", "offset", "stride", "skip", "aux", "channel")

    def __init__(self) -> None:
        self.block = array("q")
        self.addr = array("q")
        self.count = array("q")
        self.kind = array("q")
        self.offset = array("q")
        self.stride = array("q")
        self.skip = array("q")
        self.aux = array("q")
        self.channel = array("q")

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
        self.block.append(block)
        self.addr.append(addr)
        self.count.append(count)
        self.kind.append(kind)
        self.offset.append(offset)
        self.stride.append(stride)
        self.skip.append(skip)
        self.aux.append(aux)
        self.channel.append(channel)

    def extend_rows(self, rows: bytes, channel: int = 0) -> int:
        """Append runs given as native int64 rows (block, addr, count, kind, offset, stride, skip, aux).

        Returns the number of runs appended.  Each column grows with one slice copy.
        """
        flat = array("q")
        flat.frombytes(rows)
        n = len(flat) // _ROW_FIELDS
        if n * _ROW_FIELDS != len(flat):
            raise ValueError("run rows are 8 int64 fields each")
        if n:
            columns = [self.block, self.addr, self.count, self.kind]
            columns += [self.offset, self.stride, self.skip, self.aux]
            for i, col in enumerate(columns):
                col.extend(flat[i::_ROW_FIELDS])
            self.channel.extend(array("q", [channel]) * n)
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
