"""Resolve page runs into the final content of every page (the last copy wins).

For each RAM block a numpy array holds one entry per page:

* ``>= 0``: the page's bytes are at that offset of a channel (bits 56+ = channel
  number, 0 = main stream);
* ``ZERO`` (-2): all zero (written as a hole); ``ABSENT`` (-1): never sent;
* ``<= -3``: a page built here (XBZRLE result, decompressed page, non-zero
  fill), kept in :attr:`PageMap.special`.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from migstream.containers.source import Source
from migstream.errors import LimitError, StreamFormatError
from migstream.ram.model import PageKind, RamIndex
from migstream.ram.xbzrle import apply_xbzrle

ABSENT = -1
#: Pages indexed at the most (8 bytes each): guests of up to 4 TiB with 4 KiB pages.
MAX_INDEXED_PAGES = 1 << 30
ZERO = -2
CHANNEL_SHIFT = 56


def inflate_page(data: bytes, page_size: int, offset: int) -> bytes:
    """A COMPRESS_PAGE record's zlib data, inflated to exactly one page."""
    d = zlib.decompressobj()
    try:
        page = d.decompress(data, page_size + 1)
    except zlib.error as exc:
        raise StreamFormatError(
            f"compressed page does not inflate: {exc}", offset=offset, section="ram"
        ) from None
    if len(page) != page_size:
        raise StreamFormatError(
            "compressed page does not inflate to one page",
            offset=offset,
            section="ram",
            expected=page_size,
            found=len(page),
        )
    return page


class PageMap:
    """Final page sources of every block of a stream."""

    def __init__(
        self,
        ram: RamIndex,
        sources: Sequence[Source],
        discards: Sequence[tuple[int, str, Sequence[Sequence[int]]]] = (),
    ) -> None:
        """``sources``: the main stream, then each multifd channel; ``discards``: the
        POSTCOPY_RAM_DISCARD commands as (stream offset, block name, [(start, length), ...])."""
        self.ram = ram
        self.sources = tuple(sources)
        self._discard_cmds = discards
        self.page_size = ram.page_size
        self.blocks = ram.blocks
        self.maps = [np.full(n, ABSENT, dtype=np.int64) for n in self._index_lengths()]
        self.special: list[bytes] = []
        self.warnings: list[str] = []
        self._fill_pages: dict[int, int] = {}
        self._resolve()

    def _index_lengths(self) -> list[int]:
        """Pages to index per block: up to the last page any record names (the rest was never sent)."""
        runs = self.ram.runs
        ends = [0] * len(self.blocks)
        if len(runs):
            block = np.frombuffer(runs.block, dtype=np.int64)
            last = np.frombuffer(runs.addr, dtype=np.int64) // self.page_size + np.frombuffer(
                runs.count, dtype=np.int64
            )
            for bi in range(len(self.blocks)):
                mine = last[block == bi]
                if len(mine):
                    ends[bi] = int(mine.max())
        lengths = [min(e, -(-b.size // self.page_size)) for e, b in zip(ends, self.blocks)]
        if sum(lengths) > MAX_INDEXED_PAGES:
            raise LimitError(
                "too much guest RAM named in the stream to index its pages",
                expected=f"<= {MAX_INDEXED_PAGES} pages",
                found=sum(lengths),
            )
        return lengths

    # -- page bytes ------------------------------------------------------------
    def channel_buffer(self, channel: int) -> memoryview:
        return self.sources[channel].buffer

    def page_bytes(self, block: int, page: int) -> bytes:
        m = self.maps[block]
        v = int(m[page]) if page < len(m) else ABSENT
        ps = self.page_size
        if v >= 0:
            ch, off = v >> CHANNEL_SHIFT, v & ((1 << CHANNEL_SHIFT) - 1)
            return bytes(self.channel_buffer(ch)[off : off + ps])
        if v <= -3:
            return self.special[-3 - v]
        return bytes(ps)

    def _special(self, data: bytes) -> int:
        self.special.append(data)
        return -3 - (len(self.special) - 1)

    # -- resolution --------------------------------------------------------------
    def _resolve(self) -> None:
        runs = self.ram.runs
        ps = self.page_size
        buf = self.sources[0].buffer
        discards = self._discards()
        di = 0
        order = sorted(
            range(len(runs)), key=lambda i: (runs.channel[i] != 0, runs.aux[i] if runs.channel[i] else 0, i)
        )
        for i in order:
            ch = runs.channel[i]
            if ch == 0:
                while di < len(discards) and discards[di][0] < runs.offset[i]:
                    self._discard(*discards[di][1:])
                    di += 1
            bi, addr, n, kind = runs.block[i], runs.addr[i], runs.count[i], runs.kind[i]
            first = addr // ps
            target = self.maps[bi][first : first + n]
            n = len(target)
            if kind in (PageKind.PAGE, PageKind.MAPPED, PageKind.MULTIFD):
                start = runs.offset[i] + runs.skip[i]
                target[:] = (np.arange(n, dtype=np.int64) * runs.stride[i] + start) | (ch << CHANNEL_SHIFT)
            elif kind == PageKind.ZERO:
                fill = runs.aux[i]
                if fill == 0:
                    target[:] = ZERO
                else:
                    if fill not in self._fill_pages:
                        self._fill_pages[fill] = self._special(bytes([fill]) * ps)
                    target[:] = self._fill_pages[fill]
            elif kind == PageKind.MULTIFD_ZERO:
                target[:] = ZERO
            elif kind == PageKind.XBZRLE:
                data_at = runs.offset[i] + runs.skip[i]
                delta = bytes(buf[data_at : data_at + runs.aux[i]])
                if target[0] == ABSENT:
                    self.warnings.append(
                        f"XBZRLE page at {self.blocks[bi].name}+{addr:#x} (stream offset "
                        f"{runs.offset[i]:#x}) is encoded against a copy that is not in the "
                        "stream; decoded against zeros"
                    )
                page = bytearray(self.page_bytes(bi, first))
                try:
                    apply_xbzrle(delta, page)
                except StreamFormatError as exc:
                    raise exc.located(offset=data_at, section="ram") from None
                target[0] = self._special(bytes(page))
            elif kind == PageKind.COMPRESS:
                data_at = runs.offset[i] + runs.skip[i]
                target[0] = self._special(
                    inflate_page(bytes(buf[data_at : data_at + runs.aux[i]]), ps, data_at)
                )
        while di < len(discards):
            self._discard(*discards[di][1:])
            di += 1

    def _discards(self) -> list[tuple[int, int, Sequence[Sequence[int]]]]:
        by_name = {b.name: b.index for b in self.blocks}
        return [
            (offset, by_name[name], ranges) for offset, name, ranges in self._discard_cmds if name in by_name
        ]

    def _discard(self, bi: int, ranges: Sequence[Sequence[int]]) -> None:
        ps = self.page_size
        m = self.maps[bi]
        for start, length in ranges:
            m[start // ps : -(-(start + length) // ps)] = ABSENT

    # -- queries -------------------------------------------------------------------
    def data_bytes(self, block: int, first: int = 0, count: int | None = None) -> int:
        """Bytes of page data (not zero, not absent) among pages ``[first, first + count)`` of a block."""
        m = self.maps[block][first : None if count is None else first + count]
        return int((m >= 0).sum()) * self.page_size

    def present(self, block: int) -> bool:
        """Whether any page of the block came in the stream."""
        return bool((self.maps[block] != ABSENT).any())
