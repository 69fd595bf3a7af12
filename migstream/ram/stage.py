"""Guest pages of a stream read once, written as they arrive into a sparse staging file.

QEMU: migration/ram.c (ram_load_precopy: records applied in arrival order)

A stream read once (a pipe, a decompressor) cannot be read again for its
pages, and the guest-physical layout is known only from device state at its
end.  :class:`PageStage` takes the page records while their bytes are still
at hand and applies them, in order, to a file holding every block one after
the other: each batch of runs is resolved as a whole (the last copy of a page
wins, XBZRLE pages apply to what their page held), pages zeroed after they
were written are cleared, and zero pages never written stay holes.  At the
end, :meth:`PageStage.intervals` describes the file as the page index of an
ordinary stream, so every output reads it as it reads a mapped stream file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from migstream.errors import LimitError
from migstream.ram.intervals import DATA, FILL, Built, Intervals
from migstream.ram.model import PageKind, RamBlock, RamIndex, RamStats, RunTable
from migstream.ram.pagemap import PageMap

_EMPTY = np.zeros(0, dtype=np.int64)
#: Pages gathered per write from between record headers.
_GATHER_PAGES = 2048


class _View:
    """A channel of a batch: the bytes of the stream read so far."""

    def __init__(self, buffer: memoryview) -> None:
        self.buffer = buffer
        self.fd = -1
        self.base = 0


class PageStage:
    """Applies page runs, batch by batch, to a sparse file of all blocks (see the module docstring)."""

    def __init__(self, fd: int, *, limit: int = 1 << 62) -> None:
        self.fd = fd
        self.page_size = 0  # known with the first runs
        self.limit = limit
        self.blocks: list[RamBlock] = []
        self.base: list[int] = []
        self._written: list[np.ndarray | None] = []
        self.present: list[bool] = []
        self.size = 0
        self.done = 0  # runs applied so far
        self.warnings: list[str] = []

    # -- layout ------------------------------------------------------------------------------------
    def _layout(self, blocks: Sequence[RamBlock]) -> None:
        ps = self.page_size
        for block in blocks[len(self.blocks) :]:
            pages = -(-block.size // ps)
            if self.size + pages * ps > self.limit:
                raise LimitError(
                    "the guest's RAM blocks exceed what the staging file may hold",
                    expected=f"<= {self.limit} bytes",
                    found=self.size + pages * ps,
                )
            self.blocks.append(block)
            self.base.append(self.size)
            self._written.append(None)
            self.present.append(False)
            self.size += pages * ps
        os.ftruncate(self.fd, self.size)

    def _bits(self, block: int) -> np.ndarray:
        bits = self._written[block]
        if bits is None:
            bits = self._written[block] = np.zeros(-(-self.blocks[block].size // self.page_size), np.bool_)
        return bits

    # -- applying runs -----------------------------------------------------------------------------------
    def apply(self, page_size: int, blocks: Sequence[RamBlock], runs: RunTable, buffer: memoryview) -> None:
        """Apply runs ``[done, len(runs))``, whose bytes are in ``buffer``, to the file."""
        self.page_size = self.page_size or page_size
        n = len(runs)
        if len(blocks) > len(self.blocks):
            self._layout(blocks)
        if n <= self.done:
            return
        lo, self.done = self.done, n
        cols = [np.frombuffer(col, dtype=np.int64)[lo:n] for col in _columns(runs)]
        block, addr, count, kind, _offset, _stride, _skip, aux = cols
        ps = self.page_size
        for b in np.unique(block).tolist():
            self.present[b] = True
        # Pages zeroed in this batch that held data: cleared first (data written after wins).
        zero = (kind == PageKind.ZERO) & (aux == 0)
        if zero.any():
            self._clear_written(block[zero], addr[zero] // ps, count[zero])
        batch = RunTable()
        batch.extend_columns(np.concatenate([c for c in cols]).tobytes())
        index = RamIndex(ps, tuple(self.blocks), batch, RamStats())
        pm = PageMap(index, [_View(buffer)])  # type: ignore[list-item]
        self.warnings += pm.warnings
        for b in np.unique(block).tolist():
            self._write_block(pm, b)

    def _clear_written(self, block: np.ndarray, first: np.ndarray, count: np.ndarray) -> None:
        ps = self.page_size
        for b in np.unique(block).tolist():
            bits = self._written[b]
            if bits is None:
                continue
            sel = block == b
            starts, counts = first[sel], count[sel]
            pages = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
            pages = pages[pages < len(bits)]
            hit = pages[bits[pages]]
            if not len(hit):
                continue
            bits[hit] = False
            zeros = bytes(ps)
            for p in hit.tolist():  # pages re-sent as zero after their data: rare
                _pwrite_all(self.fd, zeros, self.base[b] + p * ps)

    def _write_block(self, pm: PageMap, b: int) -> None:
        ps = self.page_size
        base = self.base[b]
        bits = self._bits(b)
        view = pm.channel_buffer(0)
        for p0, cnt, kind, _ch, src, stride in pm.spans(b):
            dst = base + p0 * ps
            if kind == DATA and stride == ps:
                _pwrite_all(self.fd, view[src : src + cnt * ps], dst)
            elif kind == DATA:
                for c0 in range(0, cnt, _GATHER_PAGES):
                    k = min(_GATHER_PAGES, cnt - c0)
                    rows = np.ndarray(
                        (k, ps), dtype=np.uint8, buffer=view, offset=src + c0 * stride, strides=(stride, 1)
                    )
                    _pwrite_all(self.fd, np.ascontiguousarray(rows).data, dst + c0 * ps)
            elif kind == FILL:
                _pwrite_all(self.fd, bytes([src]) * (cnt * ps), dst)
            else:
                absent = os.pread(self.fd, ps, dst).ljust(ps, b"\0")
                _pwrite_all(self.fd, pm.built_page(src, absent_base=absent), dst)
            bits[p0 : p0 + cnt] = True

    def discard(self, name: str, ranges: Sequence[Sequence[int]]) -> None:
        """Pages a POSTCOPY_RAM_DISCARD command drops: cleared (they read as zeros)."""
        ps = self.page_size
        for i, block in enumerate(self.blocks):
            if block.name != name:
                continue
            starts = np.array([int(r[0]) // ps for r in ranges], dtype=np.int64)
            counts = np.array([-(-int(r[1]) // ps) for r in ranges], dtype=np.int64)
            if len(starts):
                self._clear_written(np.full(len(starts), i, dtype=np.int64), starts, counts)

    # -- the result --------------------------------------------------------------------------------------
    def intervals(self) -> Intervals:
        """The staging file as a page index: per block, its written pages as DATA at stride one page."""
        ps = self.page_size
        bounds = [0]
        starts, ends, srcs = [], [], []
        for b in range(len(self.blocks)):
            bits = self._written[b]
            if bits is not None and bits.any():
                edges = np.flatnonzero(np.diff(np.concatenate(([False], bits, [False])).astype(np.int8)))
                s, e = edges[0::2].astype(np.int64), edges[1::2].astype(np.int64)
                starts.append(s)
                ends.append(e)
                srcs.append(self.base[b] + s * ps)
                bounds.append(bounds[-1] + len(s))
            else:
                bounds.append(bounds[-1])
        start = np.concatenate(starts) if starts else _EMPTY
        n = len(start)
        empty_built = Built(*(_EMPTY for _ in range(7)))
        return Intervals(
            bounds=bounds,
            start=start,
            end=np.concatenate(ends) if ends else _EMPTY,
            kind=np.full(n, DATA, dtype=np.int64),
            channel=np.zeros(n, dtype=np.int64),
            src=np.concatenate(srcs) if srcs else _EMPTY,
            stride=np.full(n, ps, dtype=np.int64),
            present=list(self.present),
            built=empty_built,
            warnings=list(self.warnings),
        )

    @property
    def data_bytes(self) -> int:
        return sum(int(b.sum()) for b in self._written if b is not None) * self.page_size


def _columns(runs: RunTable) -> list[memoryview]:
    return [
        memoryview(c)
        for c in (runs.block, runs.addr, runs.count, runs.kind, runs.offset, runs.stride, runs.skip, runs.aux)
    ]


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
