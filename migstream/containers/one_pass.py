"""Inputs read once, front to back: pipes, and compressed files or pipes.

:func:`open_one_pass` gives a :class:`Source` over a :class:`StreamWindow`
when the input is a plain stream arriving through a pipe, or a stream inside
xz, gzip, bzip2 or zstd data (a file or a pipe): nothing is spooled to disk.
Other inputs return ``None`` and are opened the usual way (a file is mapped in
place; a pipe holding a libvirt save image or a qcow2 image, which need random
access, is spooled, with the bytes already read put back in front).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import sys
from collections.abc import Callable
from typing import IO, Any

from migstream.containers._io import buffered_window, read_head
from migstream.containers.compressed import DECODE_ERRORS, OPENERS, check_zstd_frames
from migstream.containers.magic import KIND_RAW, KIND_ZSTD, SNIFF_BYTES, sniff
from migstream.containers.source import Source
from migstream.containers.window import StreamWindow
from migstream.errors import ContainerError

#: Pipe capacity asked for (Linux allows up to /proc/sys/fs/pipe-max-size, 1 MiB by default).
PIPE_SIZE = 1 << 20


class Replay:
    """A forward-only reader: ``head`` first, then ``raw``; keeps what it returns while ``recording``."""

    def __init__(self, head: bytes, raw: IO[bytes]) -> None:
        self._head = memoryview(head)
        self._raw = raw
        self.recording = True
        self.recorded: list[bytes] = []

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._head:
            size = len(self._head) if n is None or n < 0 else min(n, len(self._head))
            data = bytes(self._head[:size])
            self._head = self._head[size:]
        else:
            data = self._raw.read(n if n is not None and n >= 0 else 1 << 20) or b""
        if self.recording:
            self.recorded.append(data)
        return data

    def readinto(self, buffer: memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        pass


def open_one_pass(target: Any, limit: int) -> tuple[Source | None, bytes, IO[bytes] | None]:
    """A one-pass source for ``target`` when it is a pipe or compressed; see the module docstring.

    Returns ``(source, b"", None)``, or ``(None, consumed, pipe)`` when the input
    is a pipe that must be spooled after all (``consumed``: its bytes already
    read), or ``(None, b"", None)`` when it is to be opened the usual way.
    """
    name, fd, stream = _descriptor(target)
    if fd is None:
        if stream is None:
            return None, b"", None
        return _pipe(name, stream, limit, owned=False)  # a file object with no descriptor
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ContainerError(f"{name} is a directory")
        if stat.S_ISREG(mode) or stat.S_ISBLK(mode):
            start = _tell(stream, fd)
            size = max(0, os.fstat(fd).st_size - start) if stat.S_ISREG(mode) else None
            if size is None:
                return None, b"", None
            return _compressed_file(name, fd, start, size, limit), b"", None
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        pipe: IO[bytes] = stream if stream is not None else os.fdopen(os.dup(fd), "rb", buffering=0)
        return _pipe(name, pipe, limit, owned=stream is None)
    except OSError as exc:
        raise ContainerError(f"cannot read {name}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _descriptor(target: Any) -> tuple[str, int | None, IO[bytes] | None]:
    """``(name, a descriptor of our own, the file object to read a pipe through)``."""
    if isinstance(target, (str, os.PathLike)):
        path = os.fspath(target)
        if path == "-":
            if sys.stdin is None:
                raise ContainerError("standard input is closed")
            try:
                return "<stdin>", os.dup(sys.stdin.fileno()), None
            except (OSError, ValueError) as exc:
                raise ContainerError(f"cannot read standard input: {exc}") from None
        try:
            return path, os.open(path, os.O_RDONLY), None
        except OSError as exc:
            raise ContainerError(f"cannot open {path}: {exc.strerror}") from None
    name = str(getattr(target, "name", "<file>"))
    try:
        return name, os.dup(target.fileno()), target
    except (OSError, ValueError, AttributeError):
        seekable = getattr(target, "seekable", None)
        try:
            if callable(seekable) and seekable():
                return name, None, None  # random access without a descriptor: copied as before
        except (OSError, ValueError):
            pass
        return name, None, target


def _tell(stream: IO[bytes] | None, fd: int) -> int:
    try:
        return stream.tell() if stream is not None else os.lseek(fd, 0, os.SEEK_CUR)
    except (OSError, ValueError, AttributeError):
        return 0


def _compressed_file(name: str, fd: int, start: int, size: int, limit: int) -> Source | None:
    """A compressed file whose content is a plain stream: decompressed as the parse reads it."""
    head = os.pread(fd, SNIFF_BYTES, start)
    kind = sniff(head)
    if kind not in OPENERS:
        return None
    assert kind is not None
    if kind == KIND_ZSTD:  # the zstd reader ends quietly on a cut frame: check the framing first
        check_zstd_frames(fd, start, size, f"{kind}-compressed data")
    own = os.dup(fd)
    try:
        src = _decompressing(
            name,
            kind,
            buffered_window(own, start, size),
            limit,
            closer=lambda: os.close(own),
        )
    except BaseException:
        os.close(own)
        raise
    if src is None:
        os.close(own)
    return src


def _pipe(
    name: str, pipe: IO[bytes], limit: int, *, owned: bool
) -> tuple[Source | None, bytes, IO[bytes] | None]:
    head = read_head(pipe, SNIFF_BYTES, name)
    kind = sniff(head)
    if kind == KIND_RAW:
        window = StreamWindow(_Reader(pipe), name, limit, head=head, closer=pipe.close if owned else None)
        return Source.one_pass(name, window, container="raw"), b"", None
    if kind in OPENERS:
        assert kind is not None
        replay = Replay(head, pipe)
        src = _decompressing(name, kind, replay, limit, closer=pipe.close if owned else None)
        if src is not None:
            return src, b"", None
        return None, b"".join(replay.recorded), pipe  # what the decompressor read, to spool first
    return None, head, pipe


def _decompressing(
    name: str,
    kind: str,
    raw: Any,
    limit: int,
    *,
    closer: Callable[[], None] | None = None,
) -> Source | None:
    """A window over the decompressor of ``raw`` if it holds a plain stream, else None."""
    what = f"{kind}-compressed data"
    try:
        reader: Any = OPENERS[kind](raw)
        inner = read_head(reader, SNIFF_BYTES, f"{name} ({what})", DECODE_ERRORS)
    except ContainerError:
        raise
    except DECODE_ERRORS as exc:
        raise ContainerError(f"{name}: {what} is corrupt: {exc}") from None
    if sniff(inner) != KIND_RAW:
        with contextlib.suppress(Exception):
            reader.close()
        return None
    if isinstance(raw, Replay):
        raw.recording = False
        raw.recorded.clear()

    def close() -> None:
        with contextlib.suppress(Exception):
            reader.close()
        raw.close()
        if closer is not None:
            closer()

    window = StreamWindow(
        _Reader(reader), f"{name} ({what})", limit, head=inner, closer=close, errors=DECODE_ERRORS
    )
    return Source.one_pass(name, window, container=kind, details={"compression": kind})


class _Reader:
    """``readinto`` over any reader that has ``readinto`` or only ``read``."""

    def __init__(self, reader: Any) -> None:
        self._readinto = getattr(reader, "readinto", None)
        self._read = reader.read

    def readinto(self, buffer: memoryview) -> int:
        if self._readinto is not None:
            return int(self._readinto(buffer) or 0)
        data = self._read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
