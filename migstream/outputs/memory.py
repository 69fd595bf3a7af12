"""Guest memory out of a stream: block files, the guest-physical image, an ELF core.

Pages are copied from the interval columns of :class:`PageMap`: with the
compiled writer (:mod:`migstream.ram.writer`), the DATA intervals of a channel
go out with ``pwritev`` straight from the mapped stream, many pages a call;
long intervals contiguous in their source (mapped-ram, multifd payloads) with
``os.copy_file_range``; fill and built pages one interval at a time.  Without
it, an interval at a time: contiguous ones copied, pages that sit between
record headers by a strided gather into a reused buffer, one write per 8 MiB.
Zero and absent pages are never written: output files are sparse.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from migstream.errors import MigstreamError, UsageError
from migstream.outputs.info import multifd_hint
from migstream.ram import writer
from migstream.ram.layout import MemoryMap, Placement
from migstream.ram.pagemap import DATA, FILL, PageMap

if TYPE_CHECKING:
    from migstream.api import Stream

#: Bytes gathered per write for pages that sit between record headers.
_CHUNK = 8 << 20
#: Granule at which built pages are checked for zeros (their zero parts stay holes).
_GRANULE = 4096
#: Intervals handed to the compiled writer at a time.
_ROWS = 1 << 16
#: Intervals contiguous in their source from this many pages on are copied with copy_file_range.
_DIRECT_PAGES = 256


def _copy(src_fd: int, src_off: int, out_fd: int, out_off: int, n: int) -> None:
    while n > 0:
        try:
            done = os.copy_file_range(src_fd, out_fd, n, src_off, out_off)
        except OSError:
            done = 0
        if done <= 0:
            # Not supported between these files: plain reads and writes, in big slices.
            data = os.pread(src_fd, min(n, 64 << 20), src_off)
            if not data:
                raise UsageError("source file shorter than its page index says")
            done = os.pwrite(out_fd, data, out_off)
        src_off += done
        out_off += done
        n -= done


def _pwrite_all(fd: int, data: memoryview | bytes, offset: int) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def _write_nonzero(fd: int, data: bytes, offset: int) -> None:
    """Write ``data`` at ``offset``, leaving its all-zero granules as holes."""
    n = len(data)
    g = _GRANULE if n % _GRANULE == 0 else n
    arr = np.frombuffer(data, dtype=np.uint8).reshape(n // g, g)
    used = arr.any(axis=1)
    if not used.any():
        return
    edges = np.flatnonzero(np.diff(np.concatenate(([False], used, [False])).astype(np.int8)))
    view = memoryview(data)
    for a, b in zip(edges[0::2].tolist(), edges[1::2].tolist()):
        _pwrite_all(fd, view[a * g : b * g], offset + a * g)


class _Staging:
    """A reused buffer for gathered pages and fill bytes."""

    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self.pages = max(1, _CHUNK // page_size)
        self._buf: bytearray | None = None
        self._fill = -1

    def buffer(self) -> bytearray:
        if self._buf is None:
            self._buf = bytearray(self.pages * self.page_size)
        self._fill = -1
        return self._buf

    def filled(self, byte: int) -> bytearray:
        buf = self.buffer()
        if self._fill != byte:
            np.frombuffer(buf, dtype=np.uint8)[:] = byte
        self._fill = byte
        return buf


def write_block_range(
    pm: PageMap,
    block: int,
    first_page: int,
    npages: int,
    out_fd: int,
    out_offset: int,
    progress: Callable[[int], None] | None = None,
    staging: _Staging | None = None,
) -> int:
    """Write pages ``[first_page, first_page + npages)`` of ``block`` at ``out_offset``; returns bytes.

    Holes (zero pages, pages not in the stream) are not written.
    """
    st = staging or _Staging(pm.page_size)
    if writer.compiled_writer is not None:
        return _write_columns(pm, block, first_page, npages, out_fd, out_offset, progress, st)
    written = 0
    for p0, count, kind, ch, src, stride in pm.spans(block, first_page, npages):
        dst = out_offset + (p0 - first_page) * pm.page_size
        _write_span(pm, count, kind, ch, src, stride, out_fd, dst, st)
        written += count * pm.page_size
        if progress is not None:
            progress(count * pm.page_size)
    return written


def _write_span(
    pm: PageMap, count: int, kind: int, ch: int, src: int, stride: int, out_fd: int, dst: int, st: _Staging
) -> None:
    """One interval, in Python: a copy, a strided gather, fill bytes or one built page."""
    ps = pm.page_size
    if kind == DATA and stride == ps:
        s = pm.sources[ch]
        _copy(s.fd, s.base + src, out_fd, dst, count * ps)  # contiguous in the source
    elif kind == DATA:
        _gather(pm.channel_buffer(ch), src, stride, count, out_fd, dst, st)
    elif kind == FILL:
        buf = st.filled(src)
        for c0 in range(0, count, st.pages):
            k = min(st.pages, count - c0)
            _pwrite_all(out_fd, memoryview(buf)[: k * ps], dst + c0 * ps)
    else:
        _write_nonzero(out_fd, pm.built_page(src), dst)


def _write_columns(
    pm: PageMap,
    block: int,
    first_page: int,
    npages: int,
    out_fd: int,
    out_offset: int,
    progress: Callable[[int], None] | None,
    st: _Staging,
) -> int:
    """:func:`write_block_range` with the compiled writer: DATA intervals go out per channel, a chunk
    of intervals per call; long ones contiguous in their source, fill and built pages one by one."""
    ps = pm.page_size
    start, count, kind, channel, src, stride = pm.columns(block, first_page, npages)
    written = 0
    for c in range(0, len(start), _ROWS):
        rows = slice(c, c + _ROWS)
        cnt, kd, chn, sr, sd = count[rows], kind[rows], channel[rows], src[rows], stride[rows]
        dst = out_offset + (start[rows] - first_page) * ps
        data = kd == DATA
        # Long runs contiguous in their source: copy_file_range, without mapping the source pages.
        direct = data & (sd == ps) & (cnt >= _DIRECT_PAGES)
        listed = data & ~direct
        for ch in np.unique(chn[listed]).tolist():
            m = listed & (chn == ch)
            writer.write_pages(pm.channel_buffer(ch), out_fd, dst[m], sr[m], sd[m], cnt[m], ps)
        rest = ~listed
        for n, k, ch, s, t, d in zip(*(a[rest].tolist() for a in (cnt, kd, chn, sr, sd, dst))):
            _write_span(pm, n, k, ch, s, t, out_fd, d, st)
        done = int(cnt.sum()) * ps
        written += done
        if progress is not None and done:
            progress(done)
    return written


def _gather(buf: memoryview, src: int, stride: int, count: int, out_fd: int, dst: int, st: _Staging) -> None:
    """Pages at a fixed stride in ``buf`` (between record headers): gathered, one write per chunk."""
    ps = st.page_size
    staging = st.buffer()
    for c0 in range(0, count, st.pages):
        k = min(st.pages, count - c0)
        rows = np.ndarray((k, ps), dtype=np.uint8, buffer=buf, offset=src + c0 * stride, strides=(stride, 1))
        pages = np.frombuffer(staging, dtype=np.uint8, count=k * ps).reshape(k, ps)
        np.copyto(pages, rows)
        _pwrite_all(out_fd, memoryview(staging)[: k * ps], dst + c0 * ps)


def data_bytes(pm: PageMap, placements: Sequence[Placement]) -> int:
    """Bytes of page data the placements will copy (for progress reports)."""
    by_name = {b.name: b.index for b in pm.blocks}
    ps = pm.page_size
    return sum(pm.data_bytes(by_name[p.block], p.block_offset // ps, p.size // ps) for p in placements)


OFF_T_MAX = (1 << 63) - 1
"""Largest file size (and offset) a 64-bit ``off_t`` holds."""


def open_output(
    path: str, force: bool, *, dir_fd: int | None = None, nofollow: bool = False, shown: str | None = None
) -> tuple[int, bool]:
    """Open ``path`` to write: ``(fd, created)``; only ever a regular file.

    A FIFO, a device, a socket or a directory is refused before anything is
    written or truncated (FIFOs are opened non-blocking, so none can hang).
    An existing regular file is emptied only with ``force``.  ``created`` says
    whether the file is new (only such files may be removed on error).
    ``nofollow`` refuses a symbolic link as the last component.
    """
    shown = shown or path
    base = os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | (os.O_NOFOLLOW if nofollow else 0)
    created = True
    try:
        try:
            fd = os.open(path, base | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
        except FileExistsError:
            if not force:
                with contextlib.suppress(OSError):
                    mode = os.stat(path, dir_fd=dir_fd, follow_symlinks=not nofollow).st_mode
                    if not stat.S_ISREG(mode):
                        raise UsageError(
                            f"{shown} is not a regular file ({_kind(mode)}); refusing to write it"
                        ) from None
                raise UsageError(f"{shown} exists (use --force to overwrite)") from None
            created = False
            fd = os.open(path, base, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise UsageError(f"{shown} is not a regular file (a FIFO or socket); refusing it") from None
        if exc.errno == errno.ELOOP and nofollow:
            raise UsageError(f"refusing to write through the symbolic link {shown}") from None
        raise UsageError(f"cannot open {shown} for writing: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UsageError(f"{shown} is not a regular file ({_kind(mode)}); refusing to write it")
    try:
        os.set_blocking(fd, True)
        if not created:
            os.ftruncate(fd, 0)
    except OSError as exc:
        os.close(fd)
        raise UsageError(f"cannot empty {shown}: {exc.strerror}") from None
    return fd, created


def create_output(path: str, force: bool) -> int:
    """A regular file to write (see :func:`open_output`)."""
    return open_output(path, force)[0]


def remove_created(path: str, fd: int, *, dir_fd: int | None = None) -> None:
    """Unlink ``path`` if it is still the regular file open as ``fd`` (one this run created)."""
    with contextlib.suppress(OSError):
        mine = os.fstat(fd)
        there = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISREG(there.st_mode) and (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino):
            os.unlink(path, dir_fd=dir_fd)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return name
    return "not a plain file"


def write_placements(
    pm: PageMap,
    placements: Sequence[Placement],
    out_fd: int,
    dest_of: Mapping[int, int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Copy every placed block range to its ``gpa`` in the file (or to ``dest_of[gpa]``)."""
    ps = pm.page_size
    by_name = {b.name: b.index for b in pm.blocks}
    staging = _Staging(ps)
    for p in placements:
        if p.block_offset % ps or p.size % ps:
            raise UsageError(f"placement of {p.block} is not page aligned")
        dest = p.gpa if dest_of is None else dest_of[p.gpa]
        write_block_range(
            pm, by_name[p.block], p.block_offset // ps, p.size // ps, out_fd, dest, progress, staging
        )


def _merged(placements: Sequence[Placement]) -> list[tuple[int, int]]:
    """``(gpa, size)`` ranges of the placements, adjacent ones merged."""
    out: list[list[int]] = []
    for p in placements:
        if out and out[-1][0] + out[-1][1] == p.gpa:
            out[-1][1] += p.size
        else:
            out.append([p.gpa, p.size])
    return [(a, b) for a, b in out]


def absent_blocks(stream: Stream, pm: PageMap) -> set[str]:
    """Blocks that x-ignore-shared left out of the stream (their pages stay in shared memory)."""
    if not stream.parsed.ram.ignore_shared:
        return set()
    return {b.name for b in stream.ram_blocks if not pm.present(b.index)}


def _notes(stream: Stream, pm: PageMap, mmap_: MemoryMap) -> list[str]:
    notes = list(pm.warnings)
    hint = multifd_hint(stream)
    if hint:
        notes.append(hint)
    for b in stream.ram_blocks:
        if mmap_.placements_of(b.name) and not pm.present(b.index):
            if stream.parsed.ram.ignore_shared:
                notes.append(
                    f"RAM block {b.name} is not in the stream (x-ignore-shared: its pages stay in the "
                    "shared backing file); its range is left empty"
                )
            elif not hint:
                notes.append(f"RAM block {b.name}: no page of it is in the stream")
    if mmap_.unplaced:
        notes.append(
            "not placed (no fixed guest-physical address; use --map BLOCK=GPA): " + ", ".join(mmap_.unplaced)
        )
    return notes


def _write_elf(
    stream: Stream,
    pm: PageMap,
    placements: Sequence[Placement],
    fd: int,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Write the ELF core; returns notes for the user."""
    from migstream.outputs.elf import build_elf_core

    notes = []
    arch = stream.arch
    if arch is None:
        raise UsageError("cannot tell the guest architecture for the ELF header")
    try:
        cpus = stream.cpus()
    except MigstreamError as exc:
        notes.append(f"no vCPU notes in the core: {exc}")
        cpus = []
    layout = build_elf_core(_merged(placements), cpus, arch, page_size=stream.page_size)
    layout.write_header(fd)
    # Adjacent placements share one segment: find each placement's file offset.
    dest_of: dict[int, int] = {}
    for p in placements:
        for seg in layout.segments:
            if seg.gpa <= p.gpa < seg.gpa + seg.size:
                dest_of[p.gpa] = seg.file_offset + (p.gpa - seg.gpa)
                break
    write_placements(pm, placements, fd, dest_of, progress)
    return notes


def write_memory(
    stream: Stream,
    output: str | None,
    *,
    fmt: str = "raw",
    overrides: Mapping[str, int] | None = None,
    print_map: bool = False,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[str, list[str]]:
    """``migstream memory``: returns what to print on standard output, and notes for the user."""
    mmap_ = stream.memory_map(overrides)
    if print_map and not output:
        return mmap_.describe() + "\n", []
    if not output:
        raise UsageError("memory needs -o OUT (or --print-map)")
    pm = stream.pagemap()
    absent = absent_blocks(stream, pm)
    placements = [p for p in mmap_.placements if p.block not in absent]
    image_size = max((p.gpa_end for p in mmap_.placements), default=0)
    if fmt == "raw" and image_size > OFF_T_MAX:
        raise UsageError(
            f"the guest-physical image would end at {image_size:#x}, past the largest file offset "
            f"({OFF_T_MAX:#x}); use --format elf or --map to place the blocks lower"
        )
    fd, created = open_output(output, force)
    notes: list[str] = []
    try:
        if fmt == "raw":
            os.ftruncate(fd, image_size)
            write_placements(pm, placements, fd, progress=progress)
        else:
            notes += _write_elf(stream, pm, placements, fd, progress)
    except BaseException as exc:
        if created:
            remove_created(output, fd)
        os.close(fd)
        if isinstance(exc, OSError):
            raise UsageError(f"cannot write {output}: {exc.strerror or exc}") from None
        raise
    os.close(fd)
    notes += _notes(stream, pm, mmap_)
    return (mmap_.describe() + "\n" if print_map else ""), notes
