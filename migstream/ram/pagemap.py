"""The final content of every guest page: intervals of pages with one source each.

QEMU: migration/ram.c (ram_load_precopy, load_xbzrle, decompress_data_with_multi_threads)

:mod:`migstream.ram.intervals` resolves the runs (the last copy of a page
wins) into, per block, sorted disjoint intervals of pages: bytes in a channel
(page k at ``src + k * stride``), a fill byte, or one built page (an XBZRLE
result or a compressed page).  Zero pages and pages never sent are holes.
Memory is proportional to the runs, never to a block's size.

Built pages are decoded when their bytes are asked for, from their records:
an XBZRLE page from the page it applies to (itself possibly built), so a
page never costs more work than the records that name it.  A few recently
built pages are kept, within a byte budget.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import numpy as np

from migstream.containers.source import Source
from migstream.errors import StreamFormatError
from migstream.ram.intervals import ABSENT, COMPRESS, DATA, FILL, XBZRLE, ZERO, Intervals, Ints, resolve
from migstream.ram.model import RamIndex
from migstream.ram.xbzrle import apply_xbzrle

#: Bytes of built pages kept for reuse.
CACHE_BYTES = 32 << 20
#: Intervals turned into Python numbers at a time.
_SPAN_CHUNK = 4096

__all__ = ["ABSENT", "COMPRESS", "DATA", "FILL", "XBZRLE", "ZERO", "PageMap", "Span", "inflate_page"]


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


#: An interval clipped to a page range: (first page, pages, kind, channel, src of its first page, stride).
Span = tuple[int, int, int, int, int, int]


class PageMap:
    """Final page sources of every block of a stream."""

    def __init__(
        self,
        ram: RamIndex,
        sources: Sequence[Source],
        discards: Sequence[tuple[int, str, Sequence[Sequence[int]]]] = (),
        *,
        index: Intervals | None = None,
    ) -> None:
        """``sources``: the main stream, then each multifd channel; ``discards``: the
        POSTCOPY_RAM_DISCARD commands as (stream offset, block name, [(start, length), ...]).
        ``index``: intervals already resolved (pages staged elsewhere), instead of ``ram``'s runs."""
        self.ram = ram
        self.sources = tuple(sources)
        self.page_size = ram.page_size
        self.blocks = ram.blocks
        self.index: Intervals = resolve(ram, discards) if index is None else index
        self.warnings: list[str] = list(self.index.warnings)
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cached_bytes = 0

    # -- intervals ---------------------------------------------------------------------
    def spans(self, block: int, first: int = 0, count: int | None = None) -> Iterator[Span]:
        """The intervals of ``block`` that hold pages of ``[first, first + count)``, clipped to it."""
        ix = self.index
        lo, hi = ix.bounds[block], ix.bounds[block + 1]
        end = ix.end[lo:hi]
        a = lo + int(np.searchsorted(end, first, "right"))
        if count is None:
            b = hi
            stop = 1 << 62
        else:
            stop = first + count
            b = lo + int(np.searchsorted(ix.start[lo:hi], stop, "left"))
        for c in range(a, b, _SPAN_CHUNK):
            d = min(b, c + _SPAN_CHUNK)
            cols = zip(
                ix.start[c:d].tolist(),
                ix.end[c:d].tolist(),
                ix.kind[c:d].tolist(),
                ix.channel[c:d].tolist(),
                ix.src[c:d].tolist(),
                ix.stride[c:d].tolist(),
            )
            for s, e, k, ch, src, st in cols:
                s2, e2 = max(s, first), min(e, stop)
                yield s2, e2 - s2, k, ch, src + (s2 - s) * st, st

    def columns(
        self, block: int, first: int = 0, count: int | None = None
    ) -> tuple[Ints, Ints, Ints, Ints, Ints, Ints]:
        """:meth:`spans` as numpy columns: (first page, pages, kind, channel, src, stride)."""
        ix = self.index
        lo, hi = ix.bounds[block], ix.bounds[block + 1]
        a = lo + int(np.searchsorted(ix.end[lo:hi], first, "right"))
        stop = (1 << 62) if count is None else first + count
        b = hi if count is None else lo + int(np.searchsorted(ix.start[lo:hi], stop, "left"))
        b = max(a, b)
        start = ix.start[a:b]
        s = np.maximum(start, first)
        e = np.minimum(ix.end[a:b], stop)
        src = ix.src[a:b] + (s - start) * ix.stride[a:b]
        return s, e - s, ix.kind[a:b], ix.channel[a:b], src, ix.stride[a:b]

    def channel_buffer(self, channel: int) -> memoryview:
        return self.sources[channel].buffer

    # -- page bytes --------------------------------------------------------------------------
    def built_page(self, row: int, absent_base: bytes | None = None) -> bytes:
        """The bytes of built page ``row`` (an XBZRLE result or an inflated page).

        ``absent_base``: what the page held before the runs indexed here, for an
        XBZRLE page applied to a page none of them sent (default: zeros).
        """
        hit = self._cache.get(row)
        if hit is not None:
            self._cache.move_to_end(row)
            return hit
        bt = self.index.built
        ps = self.page_size
        chain = [row]
        while bt.kind[chain[-1]] == XBZRLE and bt.base_kind[chain[-1]] in (XBZRLE, COMPRESS):
            nxt = int(bt.base_src[chain[-1]])
            if nxt in self._cache:
                break
            chain.append(nxt)
        last = chain[-1]
        page: bytearray
        if bt.kind[last] == COMPRESS:
            page = bytearray(self._inflate(last))
            chain.pop()
        elif bt.base_kind[last] in (XBZRLE, COMPRESS):
            page = bytearray(self._cache[int(bt.base_src[last])])
        elif bt.base_kind[last] == DATA:
            off = int(bt.base_src[last])
            page = bytearray(self.channel_buffer(int(bt.base_channel[last]))[off : off + ps])
        elif bt.base_kind[last] == FILL:
            page = bytearray(bytes([int(bt.base_src[last])]) * ps)
        elif bt.base_kind[last] == ABSENT and absent_base is not None:
            page = bytearray(absent_base)
        else:
            page = bytearray(ps)
        for r in reversed(chain):
            at = int(bt.data[r])
            delta = bytes(self.channel_buffer(int(bt.channel[r]))[at : at + int(bt.length[r])])
            try:
                apply_xbzrle(delta, page)
            except StreamFormatError as exc:
                raise exc.located(offset=at, section="ram") from None
        out = bytes(page)
        self._remember(row, out)
        return out

    def _inflate(self, row: int) -> bytes:
        bt = self.index.built
        at = int(bt.data[row])
        data = bytes(self.channel_buffer(int(bt.channel[row]))[at : at + int(bt.length[row])])
        return inflate_page(data, self.page_size, at)

    def _remember(self, row: int, data: bytes) -> None:
        if len(data) > CACHE_BYTES:
            return
        self._cache[row] = data
        self._cached_bytes += len(data)
        while self._cached_bytes > CACHE_BYTES:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= len(old)

    def gather(self, block: int, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Pages ``[first, first + count)`` of ``block`` as a ``(count, page_size)`` uint8 array, and a
        flag per page that is True for holes (zero pages, pages never sent).  One numpy copy per
        interval: strided gathers for pages between record headers."""
        ps = self.page_size
        out = np.zeros((count, ps), dtype=np.uint8)
        hole = np.ones(count, dtype=np.bool_)
        for p0, cnt, kind, ch, src, stride in self.spans(block, first, count):
            i = p0 - first
            hole[i : i + cnt] = False
            if kind == DATA:
                rows = np.ndarray(
                    (cnt, ps), dtype=np.uint8, buffer=self.channel_buffer(ch), offset=src, strides=(stride, 1)
                )
                out[i : i + cnt] = rows
            elif kind == FILL:
                out[i : i + cnt] = src
            else:
                out[i : i + cnt] = np.frombuffer(self.built_page(src), dtype=np.uint8)
        return out, hole

    def read(self, block: int, offset: int, n: int) -> bytes:
        """``n`` bytes of ``block`` from byte ``offset`` (holes read as zeros)."""
        if n <= 0:
            return b""
        ps = self.page_size
        first = offset // ps
        pages, _hole = self.gather(block, first, -(-(offset + n) // ps) - first)
        start = offset - first * ps
        return pages.reshape(-1)[start : start + n].tobytes()

    def page_bytes(self, block: int, page: int) -> bytes:
        """The final bytes of one page."""
        return self.read(block, page * self.page_size, self.page_size)

    # -- queries -------------------------------------------------------------------
    def data_bytes(self, block: int, first: int = 0, count: int | None = None) -> int:
        """Bytes of page data (not zero, not absent) among pages ``[first, first + count)`` of a block."""
        ix = self.index
        lo, hi = ix.bounds[block], ix.bounds[block + 1]
        stop = (1 << 62) if count is None else first + count
        s = np.clip(ix.start[lo:hi], first, stop)
        e = np.clip(ix.end[lo:hi], first, stop)
        return int((e - s).sum()) * self.page_size

    def present(self, block: int) -> bool:
        """Whether any page of the block came in the stream (zero pages count)."""
        return self.index.present[block]
