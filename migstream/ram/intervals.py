"""Page runs resolved into intervals: per block, sorted disjoint page ranges with one source each.

QEMU: migration/ram.c (ram_load_precopy, ram_discard_range)

The runs of a stream are applied in order (main stream in arrival order,
with the POSTCOPY_RAM_DISCARD commands at their place among them, then the
multifd channels in packet number order) and the last copy of a page wins.
Nothing here is sized by a block or by the span of addresses a stream names:
every array has one entry per run, per discarded range or per interval.

Where no run overlaps another (one pass over RAM, the common case) the
intervals are the runs themselves: a sort and a check.  Runs that overlap are
resolved by a sweep over their boundaries, cluster by cluster.

An XBZRLE page is applied to what its page held when the record arrived: the
covering run of highest order below it, which the sweep finds.  Built pages
(XBZRLE results, compressed pages) are kept as references to their records,
never as copies.
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from migstream.errors import LimitError
from migstream.ram.model import PageKind, RamIndex

Ints = npt.NDArray[np.int64]

# Source kinds of an interval (and of a resolved run).
ABSENT = 0  # never sent, or discarded: a hole
ZERO = 1  # a zero page: a hole
DATA = 2  # page bytes in a channel: page k at src + k * stride
FILL = 3  # every byte is src
XBZRLE = 4  # built: src = index in the built table
COMPRESS = 5  # built: src = index in the built table

#: Most XBZRLE pages named one by one in warnings (the rest are counted).
MAX_WARNINGS = 16


@dataclass
class Built:
    """XBZRLE and compressed page records, and what each XBZRLE record applies to.

    Row i: ``kind`` (XBZRLE or COMPRESS), ``channel``, ``data`` (stream offset of
    the encoded bytes), ``length``; for XBZRLE, the page it is applied to:
    ``base_kind`` (ABSENT, ZERO, DATA, FILL, XBZRLE, COMPRESS), ``base_channel``
    and ``base_src`` (DATA: offset of the page's bytes; FILL: the byte; built
    kinds: the row of that page).
    """

    kind: Ints
    channel: Ints
    data: Ints
    length: Ints
    base_kind: Ints
    base_channel: Ints
    base_src: Ints


@dataclass
class Intervals:
    """Per block ``b``: rows ``bounds[b]:bounds[b+1]`` of the columns, sorted by ``start``.

    Pages ``[start, end)`` of the block come from one source (``kind`` DATA,
    FILL, XBZRLE or COMPRESS; holes are not listed): DATA page ``start + k`` is
    at offset ``src + k * stride`` of channel ``channel``.
    """

    bounds: list[int]
    start: Ints
    end: Ints
    kind: Ints
    channel: Ints
    src: Ints
    stride: Ints
    present: list[bool]
    built: Built
    warnings: list[str]


def _col(a: array[int]) -> Ints:
    return np.frombuffer(a, dtype=np.int64) if len(a) else np.zeros(0, dtype=np.int64)


def _discard_ops(
    ram: RamIndex, ps: int, discards: Sequence[tuple[int, str, Sequence[Sequence[int]]]]
) -> tuple[Ints, Ints, Ints, Ints, Ints]:
    """(command number, block, first page, page count) of every discarded range, and each command's offset."""
    by_name = {b.name: b.index for b in ram.blocks}
    cmd: list[int] = []
    blk: list[int] = []
    first: list[int] = []
    count: list[int] = []
    offs: list[int] = []
    for offset, name, ranges in discards:
        bi = by_name.get(name)
        if bi is None:
            continue
        k = len(offs)
        offs.append(offset)
        npages = -(-ram.blocks[bi].size // ps)
        for start, length in ranges:
            a = min(start // ps, npages)
            e = min(-(-(start + length) // ps), npages)
            if e > a:
                cmd.append(k)
                blk.append(bi)
                first.append(a)
                count.append(e - a)
    cols = [np.array(x, dtype=np.int64) for x in (cmd, blk, first, count, offs)]
    return cols[0], cols[1], cols[2], cols[3], cols[4]


def resolve(
    ram: RamIndex, discards: Sequence[tuple[int, str, Sequence[Sequence[int]]]] = ()
) -> Intervals:
    """The intervals of every block of ``ram`` (see the module docstring)."""
    ps = ram.page_size
    runs = ram.runs
    nblocks = len(ram.blocks)
    block_pages = [-(-b.size // ps) for b in ram.blocks]
    bases = [0]
    for n in block_pages:
        bases.append(bases[-1] + n)
    if bases[-1] >= 1 << 62:
        raise LimitError("RAM blocks too large to index", expected="< 2**62 pages", found=bases[-1])
    base_arr = np.array(bases, dtype=np.int64)

    r_block = _col(runs.block)
    r_kind = _col(runs.kind)
    r_ch = _col(runs.channel)
    r_aux = _col(runs.aux)
    r_off = _col(runs.offset)
    nruns = len(r_block)

    # -- order of application ---------------------------------------------------
    multifd = r_ch != 0
    order = np.lexsort((np.arange(nruns), np.where(multifd, r_aux, 0), multifd))
    nmain = int(nruns - np.count_nonzero(multifd))
    key = np.empty(nruns, dtype=np.int64)
    key[order] = 2 * np.arange(nruns, dtype=np.int64) + 1
    d_cmd, d_block, d_first, d_count, d_offs = _discard_ops(ram, ps, discards)
    if len(d_cmd):
        # Discard command k is applied before the first main run whose offset is past it.
        main_off = r_off[order[:nmain]]
        applied = np.maximum.accumulate(np.searchsorted(d_offs, main_off, "left")) if nmain else main_off
        at = np.searchsorted(applied, d_cmd + 1, "left")
        d_key = np.where(at < nmain, 2 * at, 2 * nruns + 2 + d_cmd)
    else:
        d_key = d_cmd

    # -- one row per run or discarded range -------------------------------------
    first = np.concatenate((_col(runs.addr) // ps, d_first))
    blocks = np.concatenate((r_block, d_block))
    bp = np.array(block_pages, dtype=np.int64)
    count = np.concatenate((_col(runs.count), d_count))
    if len(blocks):
        count = np.minimum(count, bp[blocks] - first)
    keys = np.concatenate((key, d_key))
    seq = np.empty(len(keys), dtype=np.int64)
    seq[np.argsort(keys, kind="stable")] = np.arange(len(keys), dtype=np.int64)
    del keys, key
    kind = np.full(len(blocks), ABSENT, dtype=np.int64)
    rk = kind[:nruns]
    fill = r_aux
    rk[(r_kind == PageKind.PAGE) | (r_kind == PageKind.MAPPED) | (r_kind == PageKind.MULTIFD)] = DATA
    rk[((r_kind == PageKind.ZERO) & (fill == 0)) | (r_kind == PageKind.MULTIFD_ZERO)] = ZERO
    rk[(r_kind == PageKind.ZERO) & (fill != 0)] = FILL
    rk[r_kind == PageKind.XBZRLE] = XBZRLE
    rk[r_kind == PageKind.COMPRESS] = COMPRESS
    src = np.zeros(len(blocks), dtype=np.int64)
    data_at = r_off + _col(runs.skip)
    src[:nruns] = np.where(rk == FILL, fill, data_at)
    stride = np.zeros(len(blocks), dtype=np.int64)
    stride[:nruns] = np.where(kind[:nruns] == DATA, _col(runs.stride), 0)
    channel = np.zeros(len(blocks), dtype=np.int64)
    channel[:nruns] = r_ch
    del data_at, rk

    # Built rows: every XBZRLE/COMPRESS run, numbered in run order.
    is_built = (kind == XBZRLE) | (kind == COMPRESS)
    built_row = np.cumsum(is_built) - 1
    nb = int(np.count_nonzero(is_built))
    built = Built(
        kind=kind[is_built].copy(),
        channel=channel[is_built].copy(),
        data=src[is_built].copy(),
        length=np.concatenate((r_aux, np.zeros(len(d_cmd), np.int64)))[is_built],
        base_kind=np.full(nb, ABSENT, dtype=np.int64),
        base_channel=np.zeros(nb, dtype=np.int64),
        base_src=np.zeros(nb, dtype=np.int64),
    )
    src[is_built] = built_row[is_built]

    keep = count > 0
    gfirst = base_arr[blocks] + first
    idx = np.flatnonzero(keep)
    idx = idx[np.lexsort((seq[idx], gfirst[idx]))]
    gf = gfirst[idx]
    ge = gf + count[idx]
    del gfirst, keep

    # -- clusters of overlapping rows -------------------------------------------
    if len(idx):
        reach = np.maximum.accumulate(ge)
        new = np.empty(len(idx), dtype=bool)
        new[0] = True
        new[1:] = gf[1:] >= reach[:-1]
        cstart = np.flatnonzero(new)
        del reach, new
    else:
        cstart = np.zeros(0, dtype=np.int64)
    csize = np.diff(np.append(cstart, len(idx)))
    single = cstart[csize == 1]
    seg_gs = [gf[single]]
    seg_ge = [ge[single]]
    seg_row = [idx[single]]
    base_of: dict[int, int] = {}  # XBZRLE row -> row it applies to
    multi = csize > 1
    for c, n in zip(cstart[multi].tolist(), csize[multi].tolist()):
        part = slice(c, c + n)
        s, e, r = _sweep(gf[part].tolist(), ge[part].tolist(), idx[part].tolist(), seq, kind, base_of)
        seg_gs.append(np.array(s, dtype=np.int64))
        seg_ge.append(np.array(e, dtype=np.int64))
        seg_row.append(np.array(r, dtype=np.int64))
    gs = np.concatenate(seg_gs)
    gend = np.concatenate(seg_ge)
    row = np.concatenate(seg_row)
    del seg_gs, seg_ge, seg_row
    o = np.argsort(gs, kind="stable")
    gs, gend, row = gs[o], gend[o], row[o]

    # -- what each XBZRLE page applies to ------------------------------------------
    xrows = np.flatnonzero(kind == XBZRLE)
    warn_rows: list[int] = []
    for x in xrows.tolist():
        b = base_of.get(x)
        bk = ABSENT if b is None else int(kind[b])
        i = int(built_row[x])
        built.base_kind[i] = bk
        if bk == ABSENT:
            warn_rows.append(x)
        elif bk == DATA:
            built.base_channel[i] = channel[b]
            built.base_src[i] = src[b] + (first[x] - first[b]) * stride[b]
        elif bk in (FILL, XBZRLE, COMPRESS):
            built.base_src[i] = src[b]
    warn_rows.sort(key=lambda x: int(seq[x]))
    warnings = [
        f"XBZRLE page at {ram.blocks[int(blocks[x])].name}+{int(first[x]) * ps:#x} (stream offset "
        f"{int(r_off[x]):#x}) is encoded against a copy that is not in the stream; decoded against zeros"
        for x in warn_rows[:MAX_WARNINGS]
    ]
    if len(warn_rows) > MAX_WARNINGS:
        warnings.append(
            f"{len(warn_rows) - MAX_WARNINGS} more XBZRLE pages are encoded against copies that are not "
            "in the stream; decoded against zeros"
        )

    # -- per-block columns -------------------------------------------------------------
    rkind = kind[row]
    seg_block = np.searchsorted(base_arr, gs, "right") - 1
    present = [False] * nblocks
    for bi in np.unique(seg_block[rkind != ABSENT]).tolist():
        present[bi] = True
    held = rkind > ZERO
    gs, gend, row, rkind, seg_block = gs[held], gend[held], row[held], rkind[held], seg_block[held]
    local = gs - base_arr[seg_block]
    rstride = stride[row]
    rsrc = src[row] + (gs - (base_arr[blocks[row]] + first[row])) * rstride
    bounds = np.searchsorted(seg_block, np.arange(nblocks + 1), "left").tolist()
    return Intervals(
        bounds=bounds,
        start=local,
        end=gend - base_arr[seg_block],
        kind=rkind,
        channel=channel[row],
        src=rsrc,
        stride=rstride,
        present=present,
        built=built,
        warnings=warnings,
    )


def _sweep(
    gf: list[int], ge: list[int], rows: list[int], seq: Ints, kind: Ints, base_of: dict[int, int]
) -> tuple[list[int], list[int], list[int]]:
    """Last-copy-wins over one cluster of overlapping rows (sorted by start).

    Returns the pieces (start, end, row) and fills ``base_of`` for the XBZRLE rows.
    """
    sq = [int(seq[r]) for r in rows]
    kd = [int(kind[r]) for r in rows]
    bounds = sorted(set(gf) | set(ge))
    heap: list[tuple[int, int]] = []
    active: dict[int, None] = {}
    ending: dict[int, list[int]] = {}
    out_s: list[int] = []
    out_e: list[int] = []
    out_r: list[int] = []
    n = len(rows)
    p = 0
    for j in range(len(bounds) - 1):
        lo, hi = bounds[j], bounds[j + 1]
        for q in ending.pop(lo, ()):
            del active[q]
        xbz = []
        while p < n and gf[p] == lo:
            heapq.heappush(heap, (-sq[p], p))
            active[p] = None
            ending.setdefault(ge[p], []).append(p)
            if kd[p] == XBZRLE:
                xbz.append(p)
            p += 1
        while heap and ge[heap[0][1]] <= lo:
            heapq.heappop(heap)
        if not heap:
            continue
        if xbz:
            # Everything covering this page, oldest first: each XBZRLE record applies to the one before it.
            cover = sorted(active, key=sq.__getitem__)
            for prev, cur in zip(cover, cover[1:]):
                if kd[cur] == XBZRLE:
                    base_of[rows[cur]] = rows[prev]
        top = heap[0][1]
        if out_r and out_r[-1] == rows[top] and out_e[-1] == lo:
            out_e[-1] = hi
        else:
            out_s.append(lo)
            out_e.append(hi)
            out_r.append(rows[top])
    return out_s, out_e, out_r
