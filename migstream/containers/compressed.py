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

from ..errors import ContainerError
from ._io import COPY_CHUNK, Readable, buffered_window, copy_capped, new_temp_fd, pread_upto
from .magic import KIND_BZIP2, KIND_GZIP, KIND_LZOP, KIND_XZ, KIND_ZSTD

ZSTD_MAX_WINDOW = 1 << 31
"""Largest zstd window accepted (what ``zstd --long=31`` writes)."""

_DECODE_ERRORS: tuple[type[BaseException], ...] = (
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


_OPENERS: dict[str, Callable[[IO[bytes]], Readable]] = {
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
        else:
            _decompress_with(_OPENERS[kind], fd, base, size, out, limit, what)
    except BaseException:
        os.close(out)
        raise
    return out


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
    except _DECODE_ERRORS as exc:
        done = os.fstat(out).st_size
        raise ContainerError(
            f"{what} is corrupt or truncated (after {done} bytes of output): {_one_line(exc)}"
        ) from None
    finally:
        if reader is not None:
            _quiet_close(reader)
        raw.close()


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
