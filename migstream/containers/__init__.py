"""Input containers: find the QEMU stream in whatever holds it.

``open_source(path_or_file)`` returns a :class:`Source`.  A plain file is mapped
in place; a pipe is spooled to an unlinked temporary file first (bounded
memory, one pass).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import BinaryIO

from ..errors import ContainerError
from .source import Source

__all__ = ["Source", "open_source"]

_SPOOL_CHUNK = 1 << 20


def _spool(stream: BinaryIO, name: str) -> Source:
    fd, path = tempfile.mkstemp(prefix="migstream-")
    os.unlink(path)
    with os.fdopen(os.dup(fd), "wb") as out:
        shutil.copyfileobj(stream, out, _SPOOL_CHUNK)
    size = os.fstat(fd).st_size
    return Source(name, fd, 0, size, container="raw")


def open_source(target: str | os.PathLike[str] | BinaryIO) -> Source:
    """Open a stream from a path, ``"-"`` (standard input) or a binary file object."""
    if isinstance(target, (str, os.PathLike)):
        path = os.fspath(target)
        if path == "-":
            return _spool(sys.stdin.buffer, "<stdin>")
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise ContainerError(f"cannot open {path}: {exc.strerror}") from None
        size = os.fstat(fd).st_size
        return Source(path, fd, 0, size, container="raw")
    try:
        fd = target.fileno()
        size = os.fstat(fd).st_size
        import stat

        if stat.S_ISREG(os.fstat(fd).st_mode):
            return Source(getattr(target, "name", "<file>"), os.dup(fd), target.tell(), size - target.tell())
    except (OSError, AttributeError, ValueError):
        pass
    return _spool(target, getattr(target, "name", "<file>"))
