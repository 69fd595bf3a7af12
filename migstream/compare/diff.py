"""What differs between two streams: sections, device fields, RAM pages.

Device sections are matched by idstr and instance id; their decoded trees are walked
(``DeviceState.walk()``) and paired by path, so an array element or a subsection is
compared with the element or subsection of the same name and index on the other side,
never shifted.  RAM blocks are matched by name and compared in large chunks: each chunk's
pages are gathered with numpy from where the stream's page map puts them, compared one page
row at a time by numpy, and hashed (sha256) over the same chunks.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from migstream.errors import UnsupportedError
from migstream.vmstate.values import Leaf, leaf_value

if TYPE_CHECKING:
    from migstream.api import Stream
    from migstream.stream.model import DeviceState

#: Bytes read from each side per step when comparing RAM.
CHUNK = 8 << 20

_INSTANCE = re.compile(r"^([^.\[]*)\[\d+\]")


@dataclass(frozen=True)
class FieldDiff:
    path: str
    a: Any
    b: Any


@dataclass(frozen=True)
class DeviceDiff:
    section: str
    instance: int
    fields: tuple[FieldDiff, ...]


@dataclass(frozen=True)
class RamDiff:
    block: str
    size_a: int | None
    size_b: int | None
    pages_differ: int
    ranges: tuple[tuple[int, int], ...]
    digest_a: str | None
    digest_b: str | None


@dataclass(frozen=True)
class StreamDiff:
    only_a: tuple[str, ...]
    only_b: tuple[str, ...]
    devices: tuple[DeviceDiff, ...]
    ram: tuple[RamDiff, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def equal(self) -> bool:
        return (
            not self.only_a
            and not self.only_b
            and not self.devices
            and all(r.pages_differ == 0 and r.size_a == r.size_b for r in self.ram)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "sections": {"only_a": list(self.only_a), "only_b": list(self.only_b)},
            "devices": [
                {
                    "section": d.section,
                    "instance": d.instance,
                    "fields": [{"path": f.path, "a": f.a, "b": f.b} for f in d.fields],
                }
                for d in self.devices
            ],
            "ram": [
                {
                    "block": r.block,
                    "size_a": r.size_a,
                    "size_b": r.size_b,
                    "pages_differ": r.pages_differ,
                    "ranges": [list(x) for x in r.ranges],
                    "digest_a": r.digest_a,
                    "digest_b": r.digest_b,
                }
                for r in self.ram
            ],
            "equal": self.equal,
            "notes": list(self.notes),
        }


class Ignore:
    """``--ignore`` globs, matched against a field path with and without its ``[instance]``.

    Square brackets in a pattern are literal (``cpu[0].env.cr[*]``), ``*`` and ``?`` are wild.
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        self._res = [re.compile(fnmatch.translate(p.replace("[", "[[]"))) for p in patterns]

    def __call__(self, path: str) -> bool:
        if not self._res:
            return False
        bare = _INSTANCE.sub(r"\1", path, count=1)
        return any(r.match(path) or r.match(bare) for r in self._res)


def diff_streams(
    a: Stream,
    b: Stream,
    *,
    ignore: Sequence[str] = (),
    devices: bool = True,
    memory: bool = True,
) -> StreamDiff:
    """Compare two parsed streams (see the module docstring)."""
    skip = Ignore(ignore)
    keys_a = _section_keys(a)
    keys_b = _section_keys(b)
    only_a = tuple(n for n, i in keys_a if (n, i) not in keys_b and not skip(n))
    only_b = tuple(n for n, i in keys_b if (n, i) not in keys_a and not skip(n))
    notes: list[str] = []
    devs: list[DeviceDiff] = []
    if devices:
        by_key = {(d.name, d.instance_id): d for d in b.devices}
        for da in a.devices:
            db = by_key.get((da.name, da.instance_id))
            if db is None:
                continue
            fields = tuple(_device_fields(a, da, b, db, skip, notes))
            if fields:
                devs.append(DeviceDiff(da.name, da.instance_id, fields))
    rams: list[RamDiff] = []
    if memory:
        rams = [r for r in _ram(a, b) if not skip(r.block)]
    else:
        only_a = tuple(n for n in only_a if not _is_ram_section(a, n))
        only_b = tuple(n for n in only_b if not _is_ram_section(b, n))
    if not devices:
        live = {s.name for s in (*a.sections, *b.sections) if s.kind != "device"}
        only_a = tuple(n for n in only_a if n in live)
        only_b = tuple(n for n in only_b if n in live)
    return StreamDiff(only_a, only_b, tuple(devs), tuple(rams), tuple(notes))


def _section_keys(s: Stream) -> list[tuple[str, int]]:
    return [(sec.name, sec.instance_id) for sec in s.sections]


def _is_ram_section(s: Stream, name: str) -> bool:
    return any(sec.name == name and sec.kind == "ram" for sec in s.sections)


# -- device state ----------------------------------------------------------------------------------


def _leaves(dev: DeviceState) -> dict[str, Leaf]:
    """Path -> leaf; a leaf that has a decoded inner structure is represented by its inner leaves."""
    return {p: leaf for p, leaf in dev.walk() if leaf.inner is None}


def _value(leaf: Leaf | None) -> Any:
    return None if leaf is None else leaf_value(leaf, True)


def _device_fields(
    a: Stream, da: DeviceState, b: Stream, db: DeviceState, skip: Ignore, notes: list[str]
) -> Iterator[FieldDiff]:
    if da.state is None or db.state is None:
        # Not decoded (no description): compare the section payloads as bytes.
        pa = bytes(a.source.buffer[da.payload_offset : da.payload_offset + da.payload_size])
        pb = bytes(b.source.buffer[db.payload_offset : db.payload_offset + db.payload_size])
        path = f"{da.name}[{da.instance_id}]"
        if pa != pb and not skip(path):
            notes.append(f"{path}: not decoded (no description); compared as bytes")
            yield FieldDiff(path, _payload(pa), _payload(pb))
        return
    la, lb = _leaves(da), _leaves(db)
    for path, leaf in la.items():
        other = lb.get(path)
        if (other is None or _value(other) != _value(leaf)) and not skip(path):
            yield FieldDiff(path, _value(leaf), _value(other))
    for path, leaf in lb.items():
        if path not in la and not skip(path):
            yield FieldDiff(path, None, _value(leaf))


def _payload(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# -- RAM --------------------------------------------------------------------------------------------


def _ram(a: Stream, b: Stream) -> Iterator[RamDiff]:
    sizes_a = {blk.name: blk.size for blk in a.ram_blocks}
    sizes_b = {blk.name: blk.size for blk in b.ram_blocks}
    names = [*sizes_a, *(n for n in sizes_b if n not in sizes_a)]
    ps = max(a.page_size, b.page_size)
    for name in names:
        sa, sb = sizes_a.get(name), sizes_b.get(name)
        yield _compare_block(a if sa is not None else None, b if sb is not None else None, name, sa, sb, ps)


def _compare_block(
    a: Stream | None, b: Stream | None, name: str, sa: int | None, sb: int | None, ps: int
) -> RamDiff:
    """One block, chunk by chunk; a side that lacks the block (or ends early) reads as zeros.

    Pages that are zero on both sides (never sent or sent as zero) are not compared; the two
    digests are computed in two threads (``hashlib`` releases the GIL on large updates)."""
    ra = _BlockChunks(a, name, ps) if a is not None else None
    rb = _BlockChunks(b, name, ps) if b is not None else None
    ha, hb = hashlib.sha256(), hashlib.sha256()
    size = max(sa or 0, sb or 0)
    size = -(-size // ps) * ps
    flags: list[np.ndarray[Any, np.dtype[np.bool_]]] = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for pos in range(0, size, CHUNK):
            n = min(CHUNK, size - pos)
            ca, za = _chunk(ra, sa, pos, n, ps)
            cb, zb = _chunk(rb, sb, pos, n, ps)
            hashing = [
                pool.submit(h.update, memoryview(c[: max(0, min(n, s - pos))]))  # type: ignore[arg-type]
                for h, c, s, r in ((ha, ca, sa, ra), (hb, cb, sb, rb))
                if r is not None and s is not None
            ]
            differ = np.zeros(n // ps, dtype=np.bool_)
            rows = np.flatnonzero(~(za & zb))
            if len(rows):
                pa, pb = ca.reshape(-1, ps), cb.reshape(-1, ps)
                differ[rows] = (pa[rows] != pb[rows]).any(axis=1)
            flags.append(differ)
            for job in hashing:
                job.result()
    differ = np.concatenate(flags) if flags else np.zeros(0, dtype=np.bool_)
    return RamDiff(
        name,
        sa,
        sb,
        int(differ.sum()),
        _ranges(differ, ps),
        ha.hexdigest() if ra is not None else None,
        hb.hexdigest() if rb is not None else None,
    )


_Bytes = np.ndarray[Any, np.dtype[np.uint8]]
_Flags = np.ndarray[Any, np.dtype[np.bool_]]


class _BlockChunks:
    """Reads a RAM block in large chunks through the page map's gather: one numpy copy per
    interval of pages, no Python work per page (except built pages: XBZRLE, compressed)."""

    def __init__(self, stream: Stream, name: str, page_size: int) -> None:
        stream.block(name)  # checks the name
        pm = stream.pagemap()
        if pm.page_size != page_size:
            raise UnsupportedError(
                "the two streams have different page sizes", expected=page_size, found=pm.page_size
            )
        self.pm = pm
        self.ps = page_size
        self.block = next(b.index for b in stream.ram_blocks if b.name == name)

    def read(self, pos: int, n: int) -> tuple[_Bytes, _Flags]:
        """``n`` bytes (whole pages) at block offset ``pos`` as a flat array, and which pages are zero."""
        pages, hole = self.pm.gather(self.block, pos // self.ps, n // self.ps)
        if hole.all():
            return _zeros(n), hole
        return pages.reshape(-1), hole


_ZEROS: list[_Bytes] = []


def _zeros(n: int) -> _Bytes:
    """A read-only zero buffer of ``n`` bytes (shared: allocated once)."""
    if not _ZEROS or len(_ZEROS[0]) < n:
        z = np.zeros(max(n, CHUNK), dtype=np.uint8)
        z.flags.writeable = False
        _ZEROS[:] = [z]
    return _ZEROS[0][:n]


def _chunk(reader: _BlockChunks | None, size: int | None, pos: int, n: int, ps: int) -> tuple[_Bytes, _Flags]:
    """``n`` bytes at ``pos`` and the zero-page flags; zeros past the block's end."""
    if reader is None or size is None:
        return _zeros(n), np.ones(n // ps, dtype=np.bool_)
    data, zero = reader.read(pos, n)
    own = max(0, min(n, size - pos))
    if own < n and data[own:].any():
        data = data.copy()
        data[own:] = 0
    return data, zero


def _ranges(differ: np.ndarray[Any, np.dtype[np.bool_]], ps: int) -> tuple[tuple[int, int], ...]:
    """Half-open byte ranges of the runs of True pages."""
    if not differ.any():
        return ()
    edges = np.diff(np.concatenate(([0], differ.view(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return tuple((int(s) * ps, int(e) * ps) for s, e in zip(starts, ends))
