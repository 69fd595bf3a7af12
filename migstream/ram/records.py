"""The "ram" section: block list and page records, indexed as runs of pages.

Every RAM record starts with a be64 word: the bits below the target page
size are flags, the rest a block-relative offset.  Consecutive records of one
kind on consecutive pages (the common case) are recognised in bulk with a
single ``struct`` unpack per chunk, so a run of a million pages costs a handful of Python
steps, not a million.  When the compiled scanner (``migstream.ram._scan``) is built, it
walks the page records first and hands back every record it does not take (block
list, EOS, anything malformed) to the Python code below, which stays the reference:
``MIGSTREAM_PURE_PYTHON=1`` forces it.

QEMU: migration/ram.c (ram_load_precopy)
"""

from __future__ import annotations

import functools
import os
import re
import struct
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from migstream.errors import LimitError, StreamFormatError, UnsupportedError
from migstream.ram.model import MappedRamHeader, PageKind, RamBlock, RunTable
from migstream.wire.constants import ENCODING_FLAG_XBZRLE, MAPPED_RAM_HEADER_SIZE, MAPPED_RAM_VERSION, RamFlag
from migstream.wire.reader import Reader

PAGE_KINDS = RamFlag.ZERO | RamFlag.PAGE | RamFlag.XBZRLE | RamFlag.COMPRESS_PAGE
#: A block list longer than this is not a real VM.
MAX_RAM_BLOCKS = 65536
#: Largest compressed page record accepted (a page never deflates to more than this).
MAX_COMPRESSED_PAGE = 1 << 20


#: ``scan(buf, pos, end, page_size, sizes, by_name, current_block)`` ->
#: ``(pos, current_block, columns, pages, zero, zero_nonzero_fill, xbzrle, compressed)``
ScanFunction = Callable[
    [memoryview, int, int, int, "array[int]", dict[str, int], int],
    tuple[int, int, bytes, int, int, int, int, int],
]


TotalsFunction = Callable[
    ["array[int]", "array[int]", "array[int]", int],
    "list[tuple[int, int, int]] | None",
]


def _load_compiled() -> tuple[ScanFunction | None, TotalsFunction | None]:
    if os.environ.get("MIGSTREAM_PURE_PYTHON", "") not in ("", "0"):
        return None, None
    try:
        from migstream.ram import _scan
    except ImportError:
        return None, None
    return _scan.scan, _scan.page_totals


#: Bytes read ahead of the page records of a one-pass stream: little, so that the same
#: memory (see :mod:`migstream.containers.window`) is read into and scanned while in cache.
ONE_PASS_AHEAD = 4 << 20

#: The compiled record scanner and run summer, or None (not built, or MIGSTREAM_PURE_PYTHON=1).
compiled_scanner, compiled_totals = _load_compiled()


def page_totals(runs: RunTable, nblocks: int) -> list[tuple[int, int, int]]:
    """``(block, kind, pages)`` for each block and kind in the run table, in the order of their first run.

    Runs of blocks outside ``0 .. nblocks-1`` are left out.
    """
    if compiled_totals is not None:
        got = compiled_totals(runs.block, runs.kind, runs.count, nblocks)
        if got is not None:
            return got
    sums: dict[tuple[int, int], int] = {}
    for b, k, c in zip(runs.block, runs.kind, runs.count):
        if 0 <= b < nblocks:
            sums[b, k] = sums.get((b, k), 0) + c
    return [(b, k, c) for (b, k), c in sums.items()]

_FIRST_PROBE = 8
_MAX_PROBE = 1024
#: Largest RAM block accepted: 52-bit guest-physical space (x86-64, aarch64, ppc64 today).
MAX_RAM_BLOCK_SIZE = 1 << 52
_ONES = re.compile("1+")


@dataclass
class RamOptions:
    """Stream-level facts the RAM records depend on."""

    page_size: int = 4096
    ignore_shared: bool = False
    mapped_ram: bool = False
    #: True when a 16-byte POSTCOPY_ADVISE said per-block page sizes may be listed.
    postcopy_page_sizes: bool = False
    #: ADVISE page-size summary (bitwise OR of all block page sizes), when known.
    postcopy_page_summary: int | None = None


@dataclass
class RamState:
    """What the RAM decoder keeps for the whole stream (blocks persist across sections)."""

    options: RamOptions
    blocks: list[RamBlock] = field(default_factory=list)
    by_name: dict[str, int] = field(default_factory=dict)
    runs: RunTable = field(default_factory=RunTable)
    #: Record counts by RamStats field name (pages, zero, xbzrle, ...).
    counters: Counter[str] = field(default_factory=Counter)
    current_block: int | None = None
    block_list_offset: int | None = None
    #: Block sizes by index (what the compiled scanner reads; kept in step with ``blocks``).
    sizes: array[int] = field(default_factory=lambda: array("Q"))


def _flag_names(flags: int) -> str:
    names = [f.name or "" for f in RamFlag if flags & f]
    rest = flags & ~sum(int(f) for f in RamFlag)
    if rest:
        names.append(f"{rest:#x}")
    return "|".join(names) or "0"


class RamDecoder:
    """Parses RAM section payloads into ``state`` (one decoder per stream channel)."""

    def __init__(
        self, state: RamState, channel: int = 0, *, sink: Callable[[RamState], None] | None = None
    ) -> None:
        """``sink``: called with the state before the bytes of the runs indexed so far are given
        back (a one-pass stream), so that their pages can be written out first."""
        self.state = state
        self.channel = channel
        self.sink = sink
        ps = state.options.page_size
        if ps <= 0 or ps & (ps - 1):
            raise StreamFormatError("target page size is not a power of two", found=ps)

    # -- block list -------------------------------------------------------
    def _mem_size(self, r: Reader, total: int) -> None:
        st = self.state
        opts = st.options
        list_offset = r.pos - 8
        # The list is built aside and takes effect only once complete: a list cut short
        # leaves the previous one (which the pages indexed so far refer to) in place.
        blocks: list[RamBlock] = []
        mapped_blocks: list[RamBlock] = []
        remaining = total
        while remaining > 0:
            if len(blocks) >= MAX_RAM_BLOCKS:
                raise LimitError(
                    "too many RAM blocks",
                    offset=r.pos,
                    section=r.context,
                    expected=f"<= {MAX_RAM_BLOCKS}",
                    found=len(blocks),
                )
            entry = r.pos
            name = r.cstr8("a RAM block name")
            used = r.be64("a RAM block length")
            if used > MAX_RAM_BLOCK_SIZE:
                raise LimitError(
                    f"RAM block {name!r} is larger than any guest-physical space",
                    offset=entry,
                    section=r.context,
                    field="ram.blocks",
                    expected=f"<= {MAX_RAM_BLOCK_SIZE:#x}",
                    found=used,
                )
            if used > remaining:
                raise StreamFormatError(
                    f"RAM block {name!r} is longer than what is left of the announced total",
                    offset=entry,
                    section=r.context,
                    field="ram.blocks",
                    expected=f"<= {remaining:#x}",
                    found=used,
                )
            page_size = None
            if opts.postcopy_page_sizes and self._has_page_size(r):
                page_size = r.be64("a RAM block page size")
            mr_addr = None
            if opts.ignore_shared:
                mr_addr = r.be64("a RAM block memory region address")
            mapped = None
            if opts.mapped_ram:
                hstart = r.pos
                version = r.be32("mapped-ram header version")
                mps = r.be64("mapped-ram page size")
                bitmap_offset = r.be64("mapped-ram bitmap offset")
                pages_offset = r.be64("mapped-ram pages offset")
                if version > MAPPED_RAM_VERSION:
                    raise UnsupportedError(
                        "mapped-ram header version is newer than this reader knows",
                        offset=hstart,
                        section=r.context,
                        expected=f"<= {MAPPED_RAM_VERSION}",
                        found=version,
                    )
                assert r.pos - hstart == MAPPED_RAM_HEADER_SIZE
                mapped = MappedRamHeader(version, mps, bitmap_offset, pages_offset)
            block = RamBlock(len(blocks), name, used, entry, page_size, mr_addr, mapped)
            blocks.append(block)
            remaining -= used
            if mapped is not None and pages_offset:
                # The writer jumps over the region that holds this block's pages.
                target = pages_offset + used
                r.ensure(target)
                if target < r.pos or target > r.end:
                    raise StreamFormatError(
                        "mapped-ram pages region lies outside the stream",
                        offset=hstart,
                        section=r.context,
                        field=f"ram.blocks[{name}]",
                        expected=f"{r.pos:#x}..{r.end:#x}",
                        found=target,
                    )
                mapped_blocks.append(block)
                r.pos = target
        if len(st.runs) and st.blocks:
            # Pages were indexed against the previous list: their blocks must keep their
            # places, names and lengths (QEMU looks blocks up by name and keeps them).
            for old_block in st.blocks:
                i = old_block.index
                if i >= len(blocks) or (blocks[i].name, blocks[i].size) != (old_block.name, old_block.size):
                    raise StreamFormatError(
                        "a later RAM block list drops or changes a block that pages were sent for",
                        offset=list_offset,
                        section=r.context,
                        field="ram.blocks",
                        expected=f"{old_block.name!r} ({old_block.size:#x} bytes) at index {i}",
                        found=f"{blocks[i].name!r} ({blocks[i].size:#x} bytes)"
                        if i < len(blocks)
                        else "no block",
                    )
        st.blocks[:] = blocks
        st.sizes = array("Q", [b.size for b in blocks])
        st.by_name.clear()
        st.by_name.update((b.name, b.index) for b in blocks)
        st.block_list_offset = list_offset
        if st.current_block is not None and st.current_block >= len(blocks):
            st.current_block = None
        for block in mapped_blocks:
            assert block.mapped_ram is not None
            self._index_mapped(r, block, block.mapped_ram)

    def _has_page_size(self, r: Reader) -> bool:
        """Whether a per-block page size follows (only for hugepage-backed blocks, postcopy)."""
        summary = self.state.options.postcopy_page_summary
        if summary is not None and summary & (summary - 1) == 0:
            return False
        if r.remaining < 9:
            return False
        candidate = int.from_bytes(r.buf[r.pos : r.pos + 8], "big")
        return candidate >= 4096 and candidate & (candidate - 1) == 0 and candidate <= (1 << 40)

    def _index_mapped(self, r: Reader, block: RamBlock, hdr: MappedRamHeader) -> None:
        ps = hdr.page_size
        if ps != self.state.options.page_size:
            raise StreamFormatError(
                "mapped-ram header page size differs from the stream's page size",
                offset=block.offset,
                section=r.context,
                field=f"ram.blocks[{block.name}].page_size",
                expected=self.state.options.page_size,
                found=ps,
            )
        npages = -(-block.size // ps)
        nbytes = -(-npages // 64) * 8
        r.ensure(hdr.bitmap_offset + nbytes)
        if hdr.bitmap_offset + nbytes > r.end:
            raise StreamFormatError(
                "mapped-ram bitmap lies outside the stream",
                offset=block.offset,
                section=r.context,
                field=f"ram.blocks[{block.name}]",
                expected=f"<= {r.end:#x}",
                found=hdr.bitmap_offset + nbytes,
            )
        # The bitmap is little-endian 64-bit words (x86/ARM hosts): bit i = page i.
        value = int.from_bytes(r.buf[hdr.bitmap_offset : hdr.bitmap_offset + nbytes], "little")
        value &= (1 << npages) - 1
        if not value:
            return
        bits = format(value, "b")[::-1]  # bit i at index i
        st = self.state
        for m in _ONES.finditer(bits):
            a, b = m.start(), m.end()
            st.runs.add(
                block.index, a * ps, b - a, PageKind.MAPPED, hdr.pages_offset + a * ps, ps, 0, 0, self.channel
            )
            st.counters["mapped"] += b - a

    # -- page records -----------------------------------------------------
    def read_section(self, r: Reader, *, release: bool = False) -> None:
        """Consume RAM records up to and including EOS.

        ``release``: a one-pass reader may give back the bytes of the records
        once they are indexed (nothing reads them again).
        """
        st = self.state
        ps = st.options.page_size
        mask = ps - 1
        buf = r.buf
        runs = st.runs
        counters = st.counters
        payload = r.pos
        one_pass = r.window is not None
        while True:
            if one_pass:
                if release:
                    if self.sink is not None:
                        self.sink(st)
                    r.release_before(payload)
                r.refill(ONE_PASS_AHEAD)
            if compiled_scanner is not None:
                self._scan_compiled(r, compiled_scanner)
            start = r.pos
            word = r.be64("a RAM record")
            flags = word & mask
            addr = word & ~mask
            kind_flags = flags & ~RamFlag.CONTINUE
            if kind_flags == RamFlag.EOS:
                counters["eos"] += 1
                if one_pass and release:
                    if self.sink is not None:
                        self.sink(st)
                    r.release_before(payload)
                return
            if kind_flags == RamFlag.MEM_SIZE:
                self._mem_size(r, addr)
                continue
            if kind_flags == RamFlag.MULTIFD_FLUSH:
                counters["multifd_flush"] += 1
                continue
            if kind_flags == RamFlag.HOOK:
                raise UnsupportedError(
                    "RAM HOOK record: this stream was written for RDMA migration, whose pages "
                    "travel outside the stream",
                    offset=start,
                    section=r.context,
                )
            if kind_flags not in (RamFlag.ZERO, RamFlag.PAGE, RamFlag.XBZRLE, RamFlag.COMPRESS_PAGE):
                raise StreamFormatError(
                    "unknown RAM record flags",
                    offset=start,
                    section=r.context,
                    expected="one of ZERO, PAGE, XBZRLE, COMPRESS_PAGE, MEM_SIZE, EOS, "
                    "MULTIFD_FLUSH (optionally with CONTINUE)",
                    found=_flag_names(flags),
                )
            if flags & RamFlag.CONTINUE:
                if st.current_block is None:
                    raise StreamFormatError(
                        "page record continues a block, but no block was named before",
                        offset=start,
                        section=r.context,
                    )
                bi = st.current_block
            else:
                name = r.cstr8("a RAM block name")
                found = st.by_name.get(name)
                if found is None:
                    raise StreamFormatError(
                        "page record names a RAM block that is not in the block list",
                        offset=start,
                        section=r.context,
                        found=repr(name),
                    )
                bi = st.current_block = found
            block = st.blocks[bi]
            if addr + ps > block.size and addr >= block.size:
                raise StreamFormatError(
                    f"page offset lies beyond the end of RAM block {block.name!r}",
                    offset=start,
                    section=r.context,
                    expected=f"< {block.size:#x}",
                    found=addr,
                )
            head = r.pos - start
            if kind_flags == RamFlag.PAGE:
                r.skip(ps, "a page")
                count = 1
                if flags & RamFlag.CONTINUE:
                    count += self._extend(buf, start, head + ps, word, ps, block.size - addr, r.end, -1)
                    r.pos = start + count * (head + ps)
                runs.add(bi, addr, count, PageKind.PAGE, start, head + ps, head, 0, self.channel)
                counters["pages"] += count
            elif kind_flags == RamFlag.ZERO:
                fill = r.u8("a zero page fill byte")
                count = 1
                if flags & RamFlag.CONTINUE:
                    count += self._extend(buf, start, head + 1, word, ps, block.size - addr, r.end, fill)
                    r.pos = start + count * (head + 1)
                runs.add(bi, addr, count, PageKind.ZERO, start, head + 1, head, fill, self.channel)
                counters["zero"] += count
                if fill:
                    counters["zero_nonzero_fill"] += count
            elif kind_flags == RamFlag.XBZRLE:
                enc = r.u8("an XBZRLE encoding flag")
                if enc != ENCODING_FLAG_XBZRLE:
                    raise StreamFormatError(
                        "bad XBZRLE encoding flag",
                        offset=r.pos - 1,
                        section=r.context,
                        expected=ENCODING_FLAG_XBZRLE,
                        found=enc,
                    )
                n = r.be16("an XBZRLE length")
                r.bounded_length(n, ps, "XBZRLE data")
                r.skip(n, "XBZRLE data")
                runs.add(bi, addr, 1, PageKind.XBZRLE, start, 0, r.pos - n - start, n, self.channel)
                counters["xbzrle"] += 1
            else:
                n = r.be32("a compressed page length")
                r.bounded_length(n, MAX_COMPRESSED_PAGE, "a compressed page")
                r.skip(n, "compressed page data")
                runs.add(bi, addr, 1, PageKind.COMPRESS, start, 0, r.pos - n - start, n, self.channel)
                counters["compressed"] += 1

    def _scan_compiled(self, r: Reader, scanner: ScanFunction) -> None:
        """Let the compiled scanner take the page records from ``r.pos`` on, in bulk."""
        st = self.state
        if len(st.sizes) != len(st.blocks):
            st.sizes = array("Q", [b.size for b in st.blocks])
        counters = st.counters
        while True:  # one call returns at most a bounded number of runs
            current = -1 if st.current_block is None else st.current_block
            got = scanner(r.buf, r.pos, r.end, st.options.page_size, st.sizes, st.by_name, current)
            pos, current, columns, pages, zero, zero_fill, xbzrle, compressed = got
            if pos == r.pos:
                return
            r.pos = pos
            st.current_block = current
            st.runs.extend_columns(columns, self.channel)
            for key, n in (
                ("pages", pages),
                ("zero", zero),
                ("zero_nonzero_fill", zero_fill),
                ("xbzrle", xbzrle),
                ("compressed", compressed),
            ):
                if n:
                    counters[key] += n

    @staticmethod
    def _extend(
        buf: memoryview, start: int, stride: int, word: int, ps: int, block_left: int, end: int, fill: int
    ) -> int:
        """How many records right after the one at ``start`` continue its run.

        They must sit every ``stride`` bytes, carry the same flags, name the next
        pages of the same block, and (zero pages) the same fill byte.  Records
        are checked a chunk at a time with one ``struct`` unpack and one tuple
        comparison, so the per-record work runs in C.
        """
        limit = min((block_left // ps) - 1, (end - start) // stride - 1)
        total = 0
        n = _FIRST_PROBE
        first = start + stride
        nxt = word + ps
        with_fill = fill >= 0
        while total < limit:
            n = min(n, limit - total)
            got = _chunk_format(stride, n, with_fill).unpack_from(buf, first)
            words = got[0::2] if with_fill else got
            want = tuple(range(nxt, nxt + n * ps, ps))
            if words == want and (not with_fill or got[1::2] == (fill,) * n):
                total += n
                first += n * stride
                nxt += n * ps
                n = min(n * 4, _MAX_PROBE)
                continue
            fills = got[1::2] if with_fill else (fill,) * n
            k = 0
            while k < n and words[k] == want[k] and fills[k] == fill:
                k += 1
            return total + k
        return total


@functools.lru_cache(maxsize=64)
def _chunk_format(stride: int, n: int, with_fill: bool) -> struct.Struct:
    """Unpacks ``n`` record words (and fill bytes) that sit every ``stride`` bytes."""
    head = "QB" if with_fill else "Q"
    gap = stride - (9 if with_fill else 8)
    one = head + (f"{gap}x" if gap else "")
    return struct.Struct(">" + one * (n - 1) + head)
