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

from migstream.errors import LimitError, UsageError
from migstream.ram.intervals import DATA, Built, Intervals
from migstream.ram.model import PageKind, RamBlock, RamIndex, RamStats, RunTable
from migstream.ram.pagemap import PageMap
from migstream.ram.writer import Staging, pwrite_all, write_block_range

_EMPTY = np.zeros(0, dtype=np.int64)


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
        self._written: list[_PageSet] = []
        self.present: list[bool] = []
        self.size = 0
        self.done = 0  # runs applied so far
        self._staging: Staging | None = None
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
            self._written.append(_PageSet(pages))
            self.present.append(False)
            self.size += pages * ps
        os.ftruncate(self.fd, self.size)

    # -- applying runs -----------------------------------------------------------------------------------
    def apply(self, page_size: int, blocks: Sequence[RamBlock], runs: RunTable, buffer: memoryview) -> None:
        """Apply runs ``[done, len(runs))``, whose bytes are in ``buffer``, to the file."""
        try:
            self._apply(page_size, blocks, runs, buffer)
        except OSError as exc:
            raise UsageError(f"cannot write the staging file of the pages: {exc.strerror or exc}") from None

    def _apply(self, page_size: int, blocks: Sequence[RamBlock], runs: RunTable, buffer: memoryview) -> None:
        self.page_size = self.page_size or page_size
        if self._staging is None:
            self._staging = Staging(self.page_size, overwrite=True)
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
        """Pages of these runs that hold data are cleared (their records come from the stream: bounded)."""
        for b in np.unique(block).tolist():
            written = self._written[b]
            if not written.chunks:
                continue
            sel = block == b
            pages = _pages_of(first[sel], count[sel])
            self._zero(b, written.take(pages[(pages >= 0) & (pages < written.pages)]))

    def _zero(self, b: int, hit: np.ndarray) -> None:
        ps = self.page_size
        zeros = bytes(ps)
        for p in hit.tolist():  # pages sent as zero, or dropped, after their data: rare
            pwrite_all(self.fd, zeros, self.base[b] + p * ps)

    def _write_block(self, pm: PageMap, b: int) -> None:
        pages = -(-self.blocks[b].size // self.page_size)
        write_block_range(pm, b, 0, pages, self.fd, self.base[b], staging=self._staging)
        first, count, *_ = pm.columns(b)
        self._written[b].add(_pages_of(first, count))

    def discard(self, name: str, ranges: Sequence[Sequence[int]]) -> None:
        """Pages a POSTCOPY_RAM_DISCARD command drops: cleared (they read as zeros)."""
        try:
            self._discard(name, ranges)
        except OSError as exc:
            raise UsageError(f"cannot write the staging file of the pages: {exc.strerror or exc}") from None

    def _discard(self, name: str, ranges: Sequence[Sequence[int]]) -> None:
        ps = self.page_size or 1
        for i, block in enumerate(self.blocks):
            if block.name != name:
                continue
            written = self._written[i]
            for start, length in ranges:
                first = int(start) // ps
                stop = min(written.pages, -(-(int(start) + int(length)) // ps))
                if stop > first:
                    self._zero(i, written.take_range(first, stop))

    # -- the result --------------------------------------------------------------------------------------
    def intervals(self) -> Intervals:
        """The staging file as a page index: per block, its written pages as DATA at stride one page."""
        ps = self.page_size
        bounds = [0]
        starts, ends, srcs = [], [], []
        for b in range(len(self.blocks)):
            s, e = self._written[b].runs()
            starts.append(s)
            ends.append(e)
            srcs.append(self.base[b] + s * ps)
            bounds.append(bounds[-1] + len(s))
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


def _columns(runs: RunTable) -> list[memoryview]:
    return [
        memoryview(c)
        for c in (runs.block, runs.addr, runs.count, runs.kind, runs.offset, runs.stride, runs.skip, runs.aux)
    ]


class _PageSet:
    """Pages of one block, as bits allocated a chunk at a time where pages were written: memory
    follows the pages the stream sent, never the size a block claims."""

    CHUNK_BITS = 15

    def __init__(self, pages: int) -> None:
        self.pages = pages
        self.chunks: dict[int, np.ndarray] = {}

    def _groups(self, pages: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """``pages`` (in range) split by chunk: (chunk id, offsets within it)."""
        if not len(pages):
            return []
        ids = pages >> self.CHUNK_BITS
        order = np.argsort(ids, kind="stable")
        ids, pages = ids[order], pages[order]
        cuts = np.flatnonzero(np.diff(ids)) + 1
        mask = (1 << self.CHUNK_BITS) - 1
        return [(int(part[0]) >> self.CHUNK_BITS, part & mask) for part in np.split(pages, cuts)]

    def add(self, pages: np.ndarray) -> None:
        for cid, offs in self._groups(pages):
            chunk = self.chunks.get(cid)
            if chunk is None:
                chunk = self.chunks[cid] = np.zeros(1 << self.CHUNK_BITS, np.bool_)
            chunk[offs] = True

    def take(self, pages: np.ndarray) -> np.ndarray:
        """The pages of ``pages`` that were in the set, now removed."""
        hits = []
        for cid, offs in self._groups(pages):
            chunk = self.chunks.get(cid)
            if chunk is None:
                continue
            hit = offs[chunk[offs]]
            chunk[hit] = False
            hits.append(hit + (cid << self.CHUNK_BITS))
        return np.concatenate(hits) if hits else _EMPTY

    def take_range(self, first: int, stop: int) -> np.ndarray:
        """The pages of ``[first, stop)`` that were in the set, now removed (by chunk, not by page)."""
        hits = []
        lo, hi = first >> self.CHUNK_BITS, (stop - 1) >> self.CHUNK_BITS
        for cid in sorted(c for c in self.chunks if lo <= c <= hi):
            base = cid << self.CHUNK_BITS
            a, b = max(first - base, 0), min(stop - base, 1 << self.CHUNK_BITS)
            chunk = self.chunks[cid]
            hit = np.flatnonzero(chunk[a:b]) + a
            chunk[hit] = False
            hits.append(hit + base)
        return np.concatenate(hits) if hits else _EMPTY

    def runs(self) -> tuple[np.ndarray, np.ndarray]:
        """``(starts, ends)`` of the set's page runs, in order."""
        starts, ends = [], []
        for cid in sorted(self.chunks):
            chunk = self.chunks[cid]
            edges = np.flatnonzero(np.diff(np.concatenate(([False], chunk, [False])).astype(np.int8)))
            base = cid << self.CHUNK_BITS
            starts.append(edges[0::2] + base)
            ends.append(edges[1::2] + base)
        if not starts:
            return _EMPTY, _EMPTY
        s, e = np.concatenate(starts).astype(np.int64), np.concatenate(ends).astype(np.int64)
        joined = np.flatnonzero(s[1:] == e[:-1])  # runs across a chunk border are one run
        keep = np.ones(len(s), np.bool_)
        keep[joined + 1] = False
        e_out = np.delete(e, joined)
        return s[keep], e_out


def _pages_of(first: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Every page of the runs ``[first, first + count)``, concatenated."""
    total = int(count.sum())
    if not total:
        return _EMPTY
    return np.repeat(first - np.cumsum(count) + count, count) + np.arange(total, dtype=np.int64)
