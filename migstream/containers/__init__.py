"""Input containers: find the QEMU stream in whatever holds it.

``open_source(target)`` returns a :class:`Source` over the bytes of one QEMU
stream.  The container is recognised by its content, never its name, layer
after layer:

* a raw stream (``QEVM``) is mapped in place;
* xz, gzip, bzip2, zstd and lzop data is decompressed (streaming, bounded
  memory) into an unlinked temporary file, which is recognised again;
* a libvirt save image gives its XML/cookie/flags to ``details``; its stream
  is mapped in place after the header, or decompressed as its ``format`` says;
* a qcow2 image gives the VM state of one internal snapshot (the last one
  holding a VM state, or the one selected by ``snapshot=``), copied into a
  temporary file;
* standard input (``"-"``) and other pipes are first spooled to an unlinked
  temporary file.

Anything else raises :class:`ContainerError`.  Every temporary file is
unlinked at creation, and every output is capped by ``max_size``.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass, field
from typing import IO, Any

from migstream.containers import libvirt
from migstream.containers._io import (
    DEFAULT_MAX_SIZE,
    copy_capped,
    file_size,
    new_temp_fd,
    pread_upto,
    read_head,
)
from migstream.containers.magic import (
    COMPRESSIONS,
    KIND_LIBVIRT,
    KIND_LIBVIRT_PARTIAL,
    KIND_QCOW2,
    KIND_RAW,
    SNIFF_BYTES,
    show_magic,
    sniff,
)
from migstream.containers.source import Source
from migstream.errors import ContainerError, MigstreamError, UsageError

__all__ = ["DEFAULT_MAX_SIZE", "MAX_LAYERS", "Source", "open_source"]

MAX_LAYERS = 4
"""Most containers nested around one stream (e.g. xz around qcow2 is 2)."""

PEEK_BYTES = 4096
"""Decompressed bytes examined before a compressed layer is expanded."""


def open_source(
    target: str | os.PathLike[str] | IO[bytes],
    *,
    snapshot: str | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    magic: bytes | None = None,
    one_pass: bool = False,
) -> Source:
    """Open the QEMU stream held by ``target``: a path, ``"-"`` (standard input) or a binary file object.

    ``snapshot`` selects a qcow2 internal snapshot by name (or else id); it is
    an error for any other input.  ``max_size`` caps every temporary file
    (decompressed data, spooled pipe, extracted VM state).  ``magic``: the
    bytes the payload starts with instead of ``QEVM`` (e.g. multifd channel
    captures), still looked for inside compressed files.

    ``one_pass``: the caller reads the stream once, front to back, and needs no
    page bytes afterwards; a pipe or compressed input is then read as it is
    parsed, with nothing written to disk (see :mod:`migstream.containers.one_pass`).
    """
    if one_pass and magic is None and snapshot is None:
        from migstream.containers.one_pass import open_one_pass

        src, consumed, pipe = open_one_pass(target, max_size)
        if src is not None:
            return src
        if pipe is not None:
            name = "<stdin>" if target == "-" else str(getattr(target, "name", target))
            fd, base, size = _spool(pipe, name, max_size, magic, head=consumed)
            return _open_layer(_Layer(fd, base, size), name, snapshot, max_size, magic)
    name, fd, base, size = _acquire(target, max_size, magic)
    return _open_layer(_Layer(fd, base, size), name, snapshot, max_size, magic)


def _open_layer(layer: _Layer, name: str, snapshot: str | None, limit: int, magic: bytes | None) -> Source:
    try:
        return _recognise(layer, name=name, snapshot=snapshot, limit=limit, magic=magic)
    except MigstreamError:
        raise
    except MemoryError:
        raise ContainerError(f"{name}: out of memory while opening the input") from None
    except OSError as exc:
        raise ContainerError(f"{name}: {exc.strerror or exc}") from None


# -- getting a descriptor ----------------------------------------------------------------------------------


def _acquire(
    target: str | os.PathLike[str] | IO[bytes], limit: int, magic: bytes | None
) -> tuple[str, int, int, int]:
    """``(name, fd, base, size)`` of the input; the returned descriptor belongs to the caller."""
    if isinstance(target, (str, os.PathLike)):
        path = os.fspath(target)
        if path == "-":
            return _acquire_stdin(limit, magic)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise ContainerError(f"cannot open {path}: {exc.strerror}") from None
        return _acquire_fd(path, fd, None, limit, magic)
    name = str(getattr(target, "name", "<file>"))
    try:
        fd = os.dup(target.fileno())
    except (OSError, ValueError, AttributeError):
        return (name, *_spool(target, name, limit, magic))
    start = _tell(target)
    return _acquire_fd(name, fd, target if start is None else None, limit, magic, start or 0)


def _acquire_stdin(limit: int, magic: bytes | None) -> tuple[str, int, int, int]:
    name = "<stdin>"
    if sys.stdin is None:
        raise ContainerError("standard input is closed")
    try:
        fd = os.dup(sys.stdin.fileno())
    except (OSError, ValueError) as exc:
        raise ContainerError(f"cannot read standard input: {exc}") from None
    try:
        start = os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        start = 0
    return _acquire_fd(name, fd, sys.stdin.buffer, limit, magic, start)


def _acquire_fd(
    name: str, fd: int, stream: IO[bytes] | None, limit: int, magic: bytes | None, start: int = 0
) -> tuple[str, int, int, int]:
    """Use ``fd`` in place when it is a file or block device; otherwise spool what it delivers."""
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ContainerError(f"{name} is a directory")
        if stat.S_ISREG(mode) or stat.S_ISBLK(mode):
            return name, fd, start, max(0, _device_size(fd) - start)
        if stream is None:
            with os.fdopen(os.dup(fd), "rb") as reader:
                spooled = _spool(reader, name, limit, magic)
        else:
            spooled = _spool(stream, name, limit, magic)
    except OSError as exc:
        os.close(fd)
        raise ContainerError(f"cannot read {name}: {exc.strerror or exc}") from None
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return (name, *spooled)


def _spool(
    stream: IO[bytes], name: str, limit: int, magic: bytes | None, head: bytes | None = None
) -> tuple[int, int, int]:
    """Copy a non-seekable stream into an unlinked temporary file: ``(fd, 0, size)``.

    The first bytes are recognised before anything is spooled: a pipe that
    does not start like a stream or a known container is refused at once.
    ``head``: bytes of the stream already read.
    """
    if head is None or len(head) < SNIFF_BYTES:
        head = (head or b"") + read_head(stream, SNIFF_BYTES, name)
    if not _recognisable(head, magic):
        raise ContainerError(f"{name}: {_not_a_stream(_Layer(-1, 0, 0), head)}")
    out = new_temp_fd()
    try:
        size = copy_capped(stream, out, limit, name, first=head)
    except OSError as exc:
        os.close(out)
        raise ContainerError(f"cannot read {name}: {exc.strerror or exc}") from None
    except BaseException:
        os.close(out)
        raise
    return out, 0, size


def _recognisable(head: bytes, magic: bytes | None) -> bool:
    """Whether ``head`` starts a stream, a known container, or (when asked for) ``magic``."""
    return sniff(head) is not None or (magic is not None and head.startswith(magic))


def _tell(stream: IO[bytes]) -> int | None:
    try:
        return stream.tell()
    except (OSError, ValueError, AttributeError):
        return None


def _device_size(fd: int) -> int:
    """Size of a regular file or block device, without moving a shared file position."""
    info = os.fstat(fd)
    if stat.S_ISREG(info.st_mode):
        return info.st_size
    here = os.lseek(fd, 0, os.SEEK_CUR)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.lseek(fd, here, os.SEEK_SET)


# -- recognising layers ------------------------------------------------------------------------------------


@dataclass
class _Layer:
    """The bytes currently examined: ``[base, base + size)`` of an owned descriptor."""

    fd: int
    base: int
    size: int
    chain: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def replace(self, fd: int) -> None:
        """Continue with the whole of a new (temporary) file; the old descriptor is closed."""
        os.close(self.fd)
        self.fd, self.base, self.size = fd, 0, file_size(fd)

    def add_compression(self, kind: str) -> None:
        self.chain.append(kind)
        previous = self.details.get("compression")
        self.details["compression"] = kind if previous is None else f"{previous}+{kind}"


def _recognise(
    layer: _Layer, *, name: str, snapshot: str | None, limit: int, magic: bytes | None = None
) -> Source:
    try:
        while True:
            head = pread_upto(layer.fd, layer.base, min(SNIFF_BYTES, layer.size))
            kind = sniff(head)
            if kind == KIND_RAW or (magic is not None and head.startswith(magic)):
                return _finish(layer, name, snapshot)
            if len(layer.chain) >= MAX_LAYERS:
                raise ContainerError(f"more than {MAX_LAYERS} nested containers ({'+'.join(layer.chain)})")
            _unwrap(layer, kind, head, snapshot=snapshot, limit=limit, magic=magic)
    except ContainerError as exc:
        os.close(layer.fd)
        if exc.message.startswith(name):
            raise
        raise ContainerError(f"{name}: {exc.message}") from None
    except BaseException:
        os.close(layer.fd)
        raise


def _unwrap(
    layer: _Layer, kind: str | None, head: bytes, *, snapshot: str | None, limit: int, magic: bytes | None
) -> None:
    """Replace ``layer`` by what its container holds."""
    if kind in COMPRESSIONS:
        assert kind is not None
        _decompress(layer, layer.base, layer.size, kind, limit, magic)
    elif kind in (KIND_LIBVIRT, KIND_LIBVIRT_PARTIAL):
        _unwrap_libvirt(layer, limit, magic)
    elif kind == KIND_QCOW2:
        from migstream.containers import qcow2

        fd, _size, info = qcow2.extract_vmstate(
            layer.fd, layer.base, layer.size, snapshot=snapshot, limit=limit
        )
        layer.replace(fd)
        layer.chain.append(KIND_QCOW2)
        layer.details["qcow2"] = info
    else:
        raise ContainerError(_not_a_stream(layer, head))


def _decompress(layer: _Layer, base: int, size: int, kind: str, limit: int, magic: bytes | None) -> None:
    """Decompress into a temporary file, once the first bytes show something worth expanding."""
    from migstream.containers.compressed import decompress, peek

    inner = peek(layer.fd, base, size, kind, PEEK_BYTES)
    if not _recognisable(inner, magic):
        chain = "+".join([*layer.chain, kind])
        found = f"found magic '{show_magic(inner)}'" if inner else "it holds no data"
        raise ContainerError(
            f"no QEMU migration stream inside the {chain} container: {found} in its first bytes; "
            "nothing was decompressed"
        )
    layer.replace(decompress(layer.fd, base, size, kind, limit=limit))
    layer.add_compression(kind)


def _unwrap_libvirt(layer: _Layer, limit: int, magic: bytes | None) -> None:
    header = libvirt.read_header(layer.fd, layer.base, layer.size)
    layer.chain.append(KIND_LIBVIRT)
    layer.details["libvirt"] = header.details()
    start = layer.base + header.stream_offset
    rest = layer.size - header.stream_offset
    if header.compression is None:
        layer.base, layer.size = start, rest
    else:
        _decompress(layer, start, rest, header.compression, limit, magic)


def _not_a_stream(layer: _Layer, head: bytes) -> str:
    inside = f"inside the {'+'.join(layer.chain)} container"
    if not head:
        return f"not a QEMU migration stream: {'no data ' + inside if layer.chain else 'the input is empty'}"
    found = f"found magic '{show_magic(head)}'"
    if layer.chain:
        return f"no QEMU migration stream {inside}: {found}"
    return f"not a QEMU migration stream (nor a known container): {found}"


def _finish(layer: _Layer, name: str, snapshot: str | None) -> Source:
    if snapshot is not None and KIND_QCOW2 not in layer.chain:
        raise UsageError(f"{name}: a snapshot was selected ({snapshot!r}) but the input is not a qcow2 image")
    container = "+".join(layer.chain) or KIND_RAW
    return Source(name, layer.fd, layer.base, layer.size, container=container, details=layer.details)
