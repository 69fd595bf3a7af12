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


def _kinds(ram: RamIndex, rows: Ints) -> Ints:
    """The source kind of each row (rows past the runs are discarded ranges)."""
    runs = ram.runs
    n = len(runs)
    inside = rows < n
    r = np.where(inside, rows, 0)
    rk = _col(runs.kind)[r] if n else np.zeros(len(rows), dtype=np.int64)
    aux = _col(runs.aux)[r] if n else rk
    out = np.full(len(rows), ABSENT, dtype=np.int64)
    out[(rk == PageKind.PAGE) | (rk == PageKind.MAPPED) | (rk == PageKind.MULTIFD)] = DATA
    out[((rk == PageKind.ZERO) & (aux == 0)) | (rk == PageKind.MULTIFD_ZERO)] = ZERO
    out[(rk == PageKind.ZERO) & (aux != 0)] = FILL
    out[rk == PageKind.XBZRLE] = XBZRLE
    out[rk == PageKind.COMPRESS] = COMPRESS
    out[~inside] = ABSENT
    return out


def _order(ram: RamIndex, d_cmd: Ints, d_offs: Ints) -> Ints | None:
    """Each row's place in the order of application; None when it is the row order itself."""
    runs = ram.runs
    nruns = len(runs)
    r_ch = _col(runs.channel)
    multifd = r_ch != 0
    if not len(d_cmd) and not multifd.any():
        return None
    r_aux = _col(runs.aux)
    order = np.lexsort((np.arange(nruns), np.where(multifd, r_aux, 0), multifd))
    nmain = int(nruns - np.count_nonzero(multifd))
    key = np.empty(nruns + len(d_cmd), dtype=np.int64)
    key[order] = 2 * np.arange(nruns, dtype=np.int64) + 1
    if len(d_cmd):
        # Discard command k is applied before the first main run whose offset is past it.
        main_off = _col(runs.offset)[order[:nmain]]
        applied = np.maximum.accumulate(np.searchsorted(d_offs, main_off, "left")) if nmain else main_off
        at = np.searchsorted(applied, d_cmd + 1, "left")
        key[nruns:] = np.where(at < nmain, 2 * at, 2 * nruns + 2 + d_cmd)
    seq = np.empty(len(key), dtype=np.int64)
    seq[np.argsort(key, kind="stable")] = np.arange(len(key), dtype=np.int64)
    return seq


def resolve(ram: RamIndex, discards: Sequence[tuple[int, str, Sequence[Sequence[int]]]] = ()) -> Intervals:
    """The intervals of every block of ``ram`` (see the module docstring)."""
    ps = ram.page_size
    runs = ram.runs
    nblocks = len(ram.blocks)
    bases = [0]
    for b in ram.blocks:
        bases.append(bases[-1] + -(-b.size // ps))
    if bases[-1] >= 1 << 62:
        raise LimitError("RAM blocks too large to index", expected="< 2**62 pages", found=bases[-1])
    base_arr = np.array(bases, dtype=np.int64)
    r_block = _col(runs.block)
    r_off = _col(runs.offset)

    # -- rows: the runs, then the discarded ranges, as global page ranges ----------
    d_cmd, d_block, d_first, d_count, d_offs = _discard_ops(ram, ps, discards)
    gstart = base_arr[r_block]
    gstart += _col(runs.addr) // ps
    gend = base_arr[1:][r_block]
    np.minimum(gend, gstart + _col(runs.count), out=gend)
    if len(d_cmd):
        ds = base_arr[d_block] + d_first
        gstart = np.concatenate((gstart, ds))
        gend = np.concatenate((gend, ds + d_count))
    seq = _order(ram, d_cmd, d_offs)
    if (gend <= gstart).any():
        idx = np.flatnonzero(gend > gstart)
        idx = idx[np.lexsort((idx if seq is None else seq[idx], gstart[idx]))]
    else:
        idx = np.argsort(gstart, kind="stable") if seq is None else np.lexsort((seq, gstart))
    gf = gstart[idx]
    ge = gend[idx]
    del gstart, gend

    # -- clusters of overlapping rows: single rows stand as they are, the rest are swept --
    n = len(idx)
    new = np.ones(n + 1, dtype=bool)
    if n:
        new[1:n] = gf[1:] >= np.maximum.accumulate(ge)[:-1]
    single = new[:-1] & new[1:]
    base_of: dict[int, int] = {}  # XBZRLE row -> row it applies to
    swept: list[tuple[list[int], list[int], list[int]]] = []
    if not single.all():
        cstart = np.flatnonzero(new)
        csize = np.diff(cstart)
        multi = csize > 1
        for c, k in zip(cstart[:-1][multi].tolist(), csize[multi].tolist()):
            part = slice(c, c + k)
            rows = idx[part]
            sq = rows if seq is None else seq[rows]
            swept.append(_sweep(gf[part].tolist(), ge[part].tolist(), rows, sq, _kinds(ram, rows), base_of))
        del cstart, csize, multi
    del new
    gs, gend, row = gf[single], ge[single], idx[single]
    del gf, ge, idx, single
    if swept:
        gs = np.concatenate([gs, *(np.array(p[0], dtype=np.int64) for p in swept)])
        gend = np.concatenate([gend, *(np.array(p[1], dtype=np.int64) for p in swept)])
        row = np.concatenate([row, *(np.array(p[2], dtype=np.int64) for p in swept)])
        del swept
        o = np.argsort(gs, kind="stable")
        gs, gend, row = gs[o], gend[o], row[o]
        del o

    # -- built pages, and what each XBZRLE page applies to -------------------------
    r_kind = _col(runs.kind)
    brows = np.flatnonzero((r_kind == PageKind.XBZRLE) | (r_kind == PageKind.COMPRESS))
    bkind = _kinds(ram, brows)
    nb = len(brows)
    built = Built(
        kind=bkind,
        channel=_col(runs.channel)[brows],
        data=r_off[brows] + _col(runs.skip)[brows],
        length=_col(runs.aux)[brows],
        base_kind=np.full(nb, ABSENT, dtype=np.int64),
        base_channel=np.zeros(nb, dtype=np.int64),
        base_src=np.zeros(nb, dtype=np.int64),
    )
    warn_rows = _link_xbzrle(ram, brows, bkind, base_of, built)
    if seq is not None:
        warn_rows.sort(key=lambda x: int(seq[x]))
    names = [b.name for b in ram.blocks]
    r_addr = _col(runs.addr)
    warnings = [
        f"XBZRLE page at {names[int(r_block[x])]}+{int(r_addr[x]):#x} (stream offset "
        f"{int(r_off[x]):#x}) is encoded against a copy that is not in the stream; decoded against zeros"
        for x in warn_rows[:MAX_WARNINGS]
    ]
    if len(warn_rows) > MAX_WARNINGS:
        warnings.append(
            f"{len(warn_rows) - MAX_WARNINGS} more XBZRLE pages are encoded against copies that are not "
            "in the stream; decoded against zeros"
        )

    # -- per-block columns of the intervals that hold bytes ----------------------------
    rkind = _kinds(ram, row)
    seg_block = np.searchsorted(base_arr, gs, "right") - 1
    present = [False] * nblocks
    for bi in np.unique(seg_block[rkind != ABSENT]).tolist():
        present[bi] = True
    held = np.flatnonzero(rkind > ZERO)
    gs, gend, row, rkind, seg_block = gs[held], gend[held], row[held], rkind[held], seg_block[held]
    del held
    block_base = base_arr[seg_block]
    data = rkind == DATA
    stride = np.where(data, _col(runs.stride)[row], 0)
    row_first = base_arr[r_block[row]] + r_addr[row] // ps
    src = np.where(data, r_off[row] + _col(runs.skip)[row] + (gs - row_first) * stride, _col(runs.aux)[row])
    del row_first
    isb = (rkind == XBZRLE) | (rkind == COMPRESS)
    src[isb] = np.searchsorted(brows, row[isb])
    return Intervals(
        bounds=np.searchsorted(seg_block, np.arange(nblocks + 1), "left").tolist(),
        start=gs - block_base,
        end=gend - block_base,
        kind=rkind,
        channel=_col(runs.channel)[row],
        src=src,
        stride=stride,
        present=present,
        built=built,
        warnings=warnings,
    )


def _link_xbzrle(ram: RamIndex, brows: Ints, bkind: Ints, base_of: dict[int, int], built: Built) -> list[int]:
    """Fill the base columns of the XBZRLE rows of ``built``; returns the rows whose base is absent."""
    runs = ram.runs
    ps = ram.page_size
    xs = np.flatnonzero(bkind == XBZRLE)
    if not len(xs):
        return []
    linked = [(int(i), base_of.get(int(brows[i]), -1)) for i in xs]
    missing = [int(brows[i]) for i, b in linked if b < 0]
    have = [(i, b) for i, b in linked if b >= 0]
    if have:
        bi = np.array([i for i, _ in have], dtype=np.int64)
        br = np.array([b for _, b in have], dtype=np.int64)
        bk = _kinds(ram, br)
        built.base_kind[bi] = bk
        missing += [int(brows[i]) for i in bi[bk == ABSENT].tolist()]
        xr = brows[bi]
        safe = np.minimum(br, len(runs) - 1)
        step = (_col(runs.addr)[xr] - _col(runs.addr)[safe]) // ps
        data_src = _col(runs.offset)[safe] + _col(runs.skip)[safe] + step * _col(runs.stride)[safe]
        src = np.where(bk == DATA, data_src, np.where(bk == FILL, _col(runs.aux)[safe], 0))
        isb = (bk == XBZRLE) | (bk == COMPRESS)
        src[isb] = np.searchsorted(brows, br[isb])
        built.base_src[bi] = src
        built.base_channel[bi] = np.where(bk == DATA, _col(runs.channel)[safe], 0)
    return sorted(missing)


def _sweep(
    gf: list[int], ge: list[int], row_arr: Ints, seq: Ints, kind: Ints, base_of: dict[int, int]
) -> tuple[list[int], list[int], list[int]]:
    """Last-copy-wins over one cluster of overlapping rows (sorted by start; ``seq`` and ``kind``
    are the rows' order of application and source kind).

    Returns the pieces (start, end, row) and fills ``base_of`` for the XBZRLE rows.
    """
    rows: list[int] = row_arr.tolist()
    sq: list[int] = seq.tolist()
    kd: list[int] = kind.tolist()
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
