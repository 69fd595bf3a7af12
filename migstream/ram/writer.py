"""Pages of a page map written to a file: block ranges, and DATA intervals straight from their source.

:func:`write_block_range` serves every output (the image, the ELF core, block
files) and the staging file of a stream read once.

The compiled ``_scan.write_pages`` takes interval columns (destination
offset, source offset, stride, page count) for one source buffer and writes
the pages with ``pwritev`` from the buffer itself, up to IOV_MAX pages a call:
a booted guest's data pages sit alone among zero pages, so the cost is one
system call per run of adjacent pages, not one Python step per page.  Long
runs of pages between record headers (a stride over the page size) are
gathered into an 8 MiB buffer first: the kernel writes that faster than the
same pages straight from the mapped stream.  Every source range is checked
against the buffer before anything is written.

Without the compiled module (not built, or ``MIGSTREAM_PURE_PYTHON=1``)
:data:`compiled_writer` is None and callers copy interval by interval.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from migstream.errors import StreamFormatError, UsageError
from migstream.ram.intervals import DATA, FILL, Ints
from migstream.ram.pagemap import PageMap

WritePages = Callable[[memoryview, int, Ints, Ints, Ints, Ints, int], int]


def _load_compiled() -> WritePages | None:
    if os.environ.get("MIGSTREAM_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from migstream.ram import _scan
    except ImportError:
        return None
    return getattr(_scan, "write_pages", None)


#: The compiled page writer, or None (not built, or MIGSTREAM_PURE_PYTHON=1).
compiled_writer = _load_compiled()


def _int64(a: Ints) -> Ints:
    return np.ascontiguousarray(a, dtype=np.int64)


def write_pages(
    buf: memoryview,
    fd: int,
    dst: Ints,
    src: Ints,
    stride: Ints,
    count: Ints,
    page_size: int,
) -> int:
    """Write page ``k`` of interval ``i`` from ``buf[src[i] + k * stride[i]:][:page_size]`` at file
    offset ``dst[i] + k * page_size``; returns the bytes written.

    Raises :class:`StreamFormatError` (before writing anything) when a source range
    leaves the buffer, OSError when a write fails.
    """
    if compiled_writer is None:
        raise RuntimeError("the compiled page writer is not available")
    try:
        return compiled_writer(buf, fd, _int64(dst), _int64(src), _int64(stride), _int64(count), page_size)
    except ValueError as exc:
        raise StreamFormatError(f"page index inconsistent with its source: {exc}", section="ram") from None


# -- block ranges ---------------------------------------------------------------------------

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


def pwrite_all(fd: int, data: memoryview | bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (``pwrite`` may write less than asked)."""
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
        pwrite_all(fd, view[a * g : b * g], offset + a * g)


class Staging:
    """A reused buffer for gathered pages and fill bytes, and how to write built pages.

    ``overwrite``: the output already holds pages (a staging file written batch by
    batch): an XBZRLE page applies to what the output holds when the runs at hand
    never sent its page, and built pages are written whole, zeros included.
    """

    def __init__(self, page_size: int, *, overwrite: bool = False) -> None:
        self.page_size = page_size
        self.overwrite = overwrite
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
    staging: Staging | None = None,
) -> int:
    """Write pages ``[first_page, first_page + npages)`` of ``block`` at ``out_offset``; returns bytes.

    Holes (zero pages, pages not in the stream) are not written.
    """
    st = staging or Staging(pm.page_size)
    if compiled_writer is not None:
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
    pm: PageMap, count: int, kind: int, ch: int, src: int, stride: int, out_fd: int, dst: int, st: Staging
) -> None:
    """One interval, in Python: a copy, a strided gather, fill bytes or one built page."""
    ps = pm.page_size
    if kind == DATA and stride == ps:
        s = pm.sources[ch]
        if s.fd >= 0:
            _copy(s.fd, s.base + src, out_fd, dst, count * ps)  # contiguous in the source
        else:  # a stream read once: only its bytes at hand
            pwrite_all(out_fd, s.buffer[src : src + count * ps], dst)
    elif kind == DATA:
        _gather(pm.channel_buffer(ch), src, stride, count, out_fd, dst, st)
    elif kind == FILL:
        buf = st.filled(src)
        for c0 in range(0, count, st.pages):
            k = min(st.pages, count - c0)
            pwrite_all(out_fd, memoryview(buf)[: k * ps], dst + c0 * ps)
    elif st.overwrite:
        held = os.pread(out_fd, ps, dst).ljust(ps, b"\0")
        pwrite_all(out_fd, pm.built_page(src, absent_base=held), dst)
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
    st: Staging,
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
        has_fd = np.array([src_.fd >= 0 for src_ in pm.sources], dtype=np.bool_)[chn]
        direct = data & (sd == ps) & (cnt >= _DIRECT_PAGES) & has_fd
        listed = data & ~direct
        for ch in np.unique(chn[listed]).tolist():
            m = listed & (chn == ch)
            write_pages(pm.channel_buffer(ch), out_fd, dst[m], sr[m], sd[m], cnt[m], ps)
        rest = ~listed
        for n, k, ch, s, t, d in zip(*(a[rest].tolist() for a in (cnt, kd, chn, sr, sd, dst))):
            _write_span(pm, n, k, ch, s, t, out_fd, d, st)
        done = int(cnt.sum()) * ps
        written += done
        if progress is not None and done:
            progress(done)
    return written


def _gather(buf: memoryview, src: int, stride: int, count: int, out_fd: int, dst: int, st: Staging) -> None:
    """Pages at a fixed stride in ``buf`` (between record headers): gathered, one write per chunk."""
    ps = st.page_size
    staging = st.buffer()
    for c0 in range(0, count, st.pages):
        k = min(st.pages, count - c0)
        rows = np.ndarray((k, ps), dtype=np.uint8, buffer=buf, offset=src + c0 * stride, strides=(stride, 1))
        pages = np.frombuffer(staging, dtype=np.uint8, count=k * ps).reshape(k, ps)
        np.copyto(pages, rows)
        pwrite_all(out_fd, memoryview(staging)[: k * ps], dst + c0 * ps)
