"""Pages of DATA intervals written straight from their source buffer to a file.

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

from migstream.errors import StreamFormatError
from migstream.ram.intervals import Ints

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
