"""Streaming decompression of a byte range into an unlinked temporary file.

The input is read in large positional slices, the output written as it comes:
memory stays bounded whatever the sizes.  The output is capped (``limit``) so
that a compression bomb stops with a :class:`ContainerError` instead of
filling the disk.  lzop has no Python module; the ``lzop`` command is used.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
import shutil
import subprocess
import tempfile
import threading
import zlib
from collections.abc import Callable
from typing import IO, Any

import zstandard

from migstream.containers._io import (
    COPY_CHUNK,
    Readable,
    buffered_window,
    copy_capped,
    new_temp_fd,
    pread_upto,
)
from migstream.containers.magic import KIND_BZIP2, KIND_GZIP, KIND_LZOP, KIND_XZ, KIND_ZSTD
from migstream.errors import ContainerError

ZSTD_MAX_WINDOW = 1 << 31
"""Largest zstd window accepted (what ``zstd --long=31`` writes)."""

DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    ValueError,
    MemoryError,
    lzma.LZMAError,
    zlib.error,
    zstandard.ZstdError,
)


def _open_xz(raw: IO[bytes]) -> Readable:
    return lzma.LZMAFile(raw)


def _open_gzip(raw: IO[bytes]) -> Readable:
    return gzip.GzipFile(fileobj=raw, mode="rb")


def _open_bzip2(raw: IO[bytes]) -> Readable:
    return bz2.BZ2File(raw)


def _open_zstd(raw: IO[bytes]) -> Readable:
    reader: Readable = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).stream_reader(
        raw, read_across_frames=True
    )
    return reader


OPENERS: dict[str, Callable[[IO[bytes]], Readable]] = {
    KIND_XZ: _open_xz,
    KIND_GZIP: _open_gzip,
    KIND_BZIP2: _open_bzip2,
    KIND_ZSTD: _open_zstd,
}


def decompress(fd: int, base: int, size: int, kind: str, *, limit: int) -> int:
    """Decompress bytes ``[base, base + size)`` of ``fd`` (format ``kind``) into a new temporary file.

    Returns the descriptor of the (unlinked) temporary file; the caller owns it.
    """
    what = f"{kind}-compressed data"
    out = new_temp_fd()
    try:
        if kind == KIND_LZOP:
            _run_lzop(fd, base, size, out, limit, what)
        elif kind == KIND_ZSTD:
            # The zstd reader ends quietly on a cut frame: check the framing first.
            check_zstd_frames(fd, base, size, what)
            _decompress_with(OPENERS[kind], fd, base, size, out, limit, what)
        else:
            _decompress_with(OPENERS[kind], fd, base, size, out, limit, what)
    except BaseException:
        os.close(out)
        raise
    return out


def peek(fd: int, base: int, size: int, kind: str, length: int) -> bytes:
    """The first ``length`` bytes (fewer if there are fewer) that ``[base, base + size)`` decompresses to.

    Only as much input as needed is decompressed: enough to recognise what the
    container holds before expanding all of it.
    """
    what = f"{kind}-compressed data"
    if kind == KIND_LZOP:
        return _peek_lzop(fd, base, size, length)
    raw = buffered_window(fd, base, size)
    reader: Any = None
    parts: list[bytes] = []
    try:
        reader = OPENERS[kind](raw)
        while length > 0:
            chunk = reader.read(length)
            if not chunk:
                break
            parts.append(chunk)
            length -= len(chunk)
    except ContainerError:
        raise
    except DECODE_ERRORS as exc:
        if not parts:
            raise ContainerError(f"{what} is corrupt: {_one_line(exc)}") from None
    finally:
        if reader is not None:
            _quiet_close(reader)
        raw.close()
    return b"".join(parts)


def _peek_lzop(fd: int, base: int, size: int, length: int) -> bytes:
    program = shutil.which("lzop")
    if program is None:
        raise ContainerError("the input is lzop-compressed: reading it needs the lzop command (not in PATH)")
    proc = subprocess.Popen(
        [program, "-dc", "--ignore-warn"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None and proc.stdout is not None
    feeder = threading.Thread(target=_feed, args=(proc.stdin, fd, base, size), daemon=True)
    feeder.start()
    try:
        return proc.stdout.read(length)
    finally:
        proc.kill()
        proc.stdout.close()
        proc.wait()
        feeder.join()


def _decompress_with(
    opener: Callable[[IO[bytes]], Readable], fd: int, base: int, size: int, out: int, limit: int, what: str
) -> None:
    raw = buffered_window(fd, base, size)
    reader: Any = None
    try:
        reader = opener(raw)
        copy_capped(reader, out, limit, f"{what} once decompressed")
    except ContainerError:
        raise
    except DECODE_ERRORS as exc:
        done = os.fstat(out).st_size
        raise ContainerError(
            f"{what} is corrupt or truncated (after {done} bytes of output): {_one_line(exc)}"
        ) from None
    finally:
        if reader is not None:
            _quiet_close(reader)
        raw.close()


ZSTD_FRAME_MAGIC = 0xFD2FB528
ZSTD_SKIPPABLE_MAGIC = 0x184D2A50  # low 4 bits free
ZSTD_BLOCK_RLE = 1
ZSTD_BLOCK_RESERVED = 3
_ZSTD_DICT_ID_SIZES = (0, 1, 2, 4)
_ZSTD_CONTENT_SIZE_SIZES = (0, 2, 4, 8)  # flag 0 means 1 byte for single-segment frames


def check_zstd_frames(fd: int, base: int, size: int, what: str) -> None:
    """Walk the zstd frame and block headers of ``[base, base + size)``; raise if cut or malformed."""
    pos, end = base, base + size
    frames = 0
    while pos < end:
        head = pread_upto(fd, pos, 8)
        magic = int.from_bytes(head[:4], "little")
        if len(head) >= 8 and magic & ~0xF == ZSTD_SKIPPABLE_MAGIC:
            pos += 8 + int.from_bytes(head[4:8], "little")
            continue
        if magic != ZSTD_FRAME_MAGIC or len(head) < 5:
            place = f"after frame {frames}" if frames else "at its start"
            raise ContainerError(f"{what} is corrupt: no zstd frame {place} (offset {pos - base:#x})")
        pos = _skip_zstd_frame(fd, pos, head[4], end, what)
        frames += 1
    if pos > end:
        raise ContainerError(f"{what} is truncated: the last zstd frame is cut")


def _skip_zstd_frame(fd: int, pos: int, descriptor: int, end: int, what: str) -> int:
    single_segment = descriptor >> 5 & 1
    content_size = _ZSTD_CONTENT_SIZE_SIZES[descriptor >> 6] or single_segment
    pos += 5 + (not single_segment) + _ZSTD_DICT_ID_SIZES[descriptor & 3] + content_size
    while True:
        raw = pread_upto(fd, pos, 3)
        if len(raw) < 3 or pos + 3 > end:
            raise ContainerError(f"{what} is truncated: a zstd frame is cut")
        header = int.from_bytes(raw, "little")
        kind = header >> 1 & 3
        if kind == ZSTD_BLOCK_RESERVED:
            raise ContainerError(f"{what} is corrupt: reserved zstd block type")
        pos += 3 + (1 if kind == ZSTD_BLOCK_RLE else header >> 3)
        if header & 1:
            return pos + 4 * (descriptor >> 2 & 1)


def _run_lzop(fd: int, base: int, size: int, out: int, limit: int, what: str) -> None:
    program = shutil.which("lzop")
    if program is None:
        raise ContainerError("the input is lzop-compressed: reading it needs the lzop command (not in PATH)")
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            [program, "-dc", "--ignore-warn"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
        )
        assert proc.stdin is not None and proc.stdout is not None
        feeder = threading.Thread(target=_feed, args=(proc.stdin, fd, base, size), daemon=True)
        feeder.start()
        try:
            copy_capped(proc.stdout, out, limit, f"{what} once decompressed")
        except BaseException:
            proc.kill()
            raise
        finally:
            proc.stdout.close()
            status = proc.wait()
            feeder.join()
        if status != 0:
            errors.seek(0)
            message = _one_line(errors.read(4096).decode("utf-8", "replace")) or f"exit status {status}"
            raise ContainerError(f"{what}: lzop failed: {message}")


def _feed(sink: IO[bytes], fd: int, base: int, size: int) -> None:
    """Write bytes ``[base, base + size)`` of ``fd`` into ``sink`` (a pipe), then close it."""
    try:
        offset, end = base, base + size
        while offset < end:
            chunk = pread_upto(fd, offset, min(COPY_CHUNK, end - offset))
            if not chunk:
                break
            sink.write(chunk)
            offset += len(chunk)
    except (OSError, ValueError, ContainerError):
        pass  # the reader went away; its exit status tells what happened
    finally:
        _quiet_close(sink)


def _quiet_close(obj: Any) -> None:
    with contextlib.suppress(Exception):  # closing after an error must not hide that error
        obj.close()


def _one_line(exc: BaseException | str) -> str:
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
