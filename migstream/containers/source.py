"""A QEMU stream made available as bytes: the input layer's single product.

Whatever the container (plain file, pipe, compressed file, libvirt save image,
qcow2 snapshot), the parser sees a :class:`Source`: a read-only buffer over the
stream bytes (offset 0 = the ``QEVM`` magic) and, for fast copies, a file
descriptor with the stream's start in that file.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from typing import TYPE_CHECKING, Any

from migstream.errors import ContainerError

if TYPE_CHECKING:
    from migstream.containers.window import StreamWindow


class Source:
    """The bytes of one QEMU stream.

    ``buffer`` is a read-only memoryview of exactly ``size`` bytes.  ``fd`` is a
    file descriptor whose bytes ``[base, base + size)`` are the same stream, for
    ``os.copy_file_range``/``os.sendfile``.  ``container`` names what the stream
    was found in (``"raw"``, ``"xz"``, ``"libvirt-save"``, ``"qcow2-snapshot"``...)
    and ``details`` holds what the container said about it.
    """

    def __init__(
        self,
        name: str,
        fd: int,
        base: int,
        size: int,
        *,
        container: str = "raw",
        details: dict[str, Any] | None = None,
        owns_fd: bool = True,
        temp_path: str | None = None,
    ) -> None:
        self.name = name
        self.fd = fd
        self.base = base
        self.size = size
        self.container = container
        self.details: dict[str, Any] = dict(details or {})
        self._owns_fd = owns_fd
        self._temp_path = temp_path
        self._mmap: mmap.mmap | None = None
        self.closed = False
        self.buffer: memoryview
        #: Set when the stream is read once from a pipe or a decompressor (see :meth:`one_pass`).
        self.window: StreamWindow | None = None
        if size == 0:
            self.buffer = memoryview(b"")
            return
        start = base - base % mmap.ALLOCATIONGRANULARITY
        try:
            self._mmap = mmap.mmap(fd, size + (base - start), prot=mmap.PROT_READ, offset=start)
        except (OSError, ValueError, OverflowError) as exc:
            raise ContainerError(f"cannot map {name}: {exc}") from None
        self.buffer = memoryview(self._mmap)[base - start : base - start + size]

    @classmethod
    def one_pass(
        cls, name: str, window: StreamWindow, *, container: str, details: dict[str, Any] | None = None
    ) -> Source:
        """A stream read once, front to back, through ``window``: no descriptor, no random access.

        ``buffer`` covers the window's whole reserved range until :meth:`seal`
        is called with the size the stream turned out to have.
        """
        src = cls(name, -1, 0, 0, container=container, details=details, owns_fd=False)
        src.window = window
        src.buffer = window.buffer
        src.size = window.filled
        return src

    def seal(self, size: int) -> None:
        """The one-pass stream ended: ``buffer`` is now exactly its ``size`` bytes."""
        if self.window is not None:
            self.size = size
            self.buffer = self.window.buffer[:size]

    def close(self) -> None:
        """Release the mapping and the descriptor (and any temporary file)."""
        self.closed = True
        if self.window is not None:
            with contextlib.suppress(BufferError):
                self.buffer.release()
            self.window.close()
        with contextlib.suppress(BufferError):
            self.buffer.release()
        if self._mmap is not None:
            with contextlib.suppress(BufferError):  # a view is still exported; it goes with the process
                self._mmap.close()
            self._mmap = None
        if self._owns_fd and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._temp_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._temp_path)
            self._temp_path = None

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Source {self.name!r} {self.container} {self.size} bytes>"
