"""Checked, offset-aware reads over a stream buffer.

A :class:`Reader` walks a read-only buffer; every read checks the bytes left
and raises :class:`~migstream.errors.TruncatedError` naming the offset, so no
caller ever slices past the end or allocates from an unchecked length.
"""

from __future__ import annotations

import struct
from typing import Protocol

from migstream.errors import LimitError, TruncatedError

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


#: Bytes a one-pass reader keeps read ahead of its position (see :meth:`Reader.refill`).
LOOKAHEAD = 32 << 20


class Window(Protocol):
    """Stream bytes arriving front to back at their own offsets of the reader's buffer."""

    def fill(self, upto: int) -> int:
        """Make bytes up to ``upto`` available (fewer only at the stream's end); returns how many are."""
        ...

    def release(self, start: int, stop: int) -> None:
        """Bytes ``[start, stop)`` will not be read again."""
        ...


class Reader:
    """A cursor over ``buf[start:end]``; offsets are positions in ``buf``.

    With a ``window`` (a stream read once from a pipe), ``end`` is where the
    bytes read so far end: it moves forward as reads need more, and
    :attr:`remaining` counts at least :data:`LOOKAHEAD` bytes unless the stream
    ends sooner.
    """

    __slots__ = ("buf", "pos", "end", "context", "window")

    def __init__(
        self, buf: memoryview, pos: int = 0, end: int | None = None, *, window: Window | None = None
    ) -> None:
        self.buf = buf
        self.pos = pos
        self.window = window
        if window is not None:
            end = window.fill(pos + LOOKAHEAD)
        self.end = len(buf) if end is None else min(end, len(buf))
        #: What is being read, for error messages (e.g. "section 'ram' (id 2)").
        self.context: str | None = None

    @property
    def remaining(self) -> int:
        if self.window is not None:
            self.refill()
        return self.end - self.pos

    def refill(self, ahead: int = LOOKAHEAD) -> None:
        """Read ahead so that ``ahead`` bytes follow the position (one-pass readers only)."""
        if self.window is not None and self.end - self.pos < ahead // 2:
            self.end = min(self.window.fill(self.pos + ahead), len(self.buf))

    def ensure(self, upto: int) -> None:
        """Read bytes up to ``upto`` when they are not yet at hand (one-pass readers only)."""
        if self.window is not None and upto > self.end:
            self.end = min(self.window.fill(upto), len(self.buf))

    def release_before(self, start: int) -> None:
        """Bytes from ``start`` to the position will not be read again (one-pass readers only)."""
        if self.window is not None:
            self.window.release(start, self.pos)

    def need(self, n: int, what: str) -> None:
        if self.window is not None and n > 0 and self.pos + n > self.end:
            self.ensure(self.pos + n)
        if n < 0 or self.pos + n > self.end:
            raise TruncatedError(
                f"stream ends inside {what}",
                offset=self.pos,
                section=self.context,
                expected=f"{n} bytes",
                found=f"{max(self.end - self.pos, 0)} bytes",
            )

    def u8(self, what: str = "a byte") -> int:
        if self.pos >= self.end:
            self.need(1, what)
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def peek_u8(self) -> int | None:
        if self.pos >= self.end and self.window is not None:
            self.ensure(self.pos + 1)
        return self.buf[self.pos] if self.pos < self.end else None

    def be16(self, what: str = "a be16") -> int:
        self.need(2, what)
        (v,) = _U16.unpack_from(self.buf, self.pos)
        self.pos += 2
        return int(v)

    def be32(self, what: str = "a be32") -> int:
        self.need(4, what)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(v)

    def be64(self, what: str = "a be64") -> int:
        self.need(8, what)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return int(v)

    def take(self, n: int, what: str = "bytes") -> memoryview:
        """Return the next ``n`` bytes as a view (no copy)."""
        self.need(n, what)
        v = self.buf[self.pos : self.pos + n]
        self.pos += n
        return v

    def skip(self, n: int, what: str = "bytes") -> None:
        self.need(n, what)
        self.pos += n

    def cstr8(self, what: str = "a name") -> str:
        """A counted string: u8 length, then that many bytes."""
        n = self.u8(what)
        return decode_name(self.take(n, what))

    def bounded_length(self, n: int, limit: int, what: str) -> int:
        """Check a length read from the stream against a cap and the bytes left."""
        if n > limit:
            raise LimitError(
                f"{what} too large", offset=self.pos, section=self.context, expected=f"<= {limit}", found=n
            )
        self.need(n, what)
        return n


def decode_name(raw: memoryview | bytes) -> str:
    """Names in the stream are ASCII in practice; keep any other byte visible, never fail."""
    return bytes(raw).decode("utf-8", errors="backslashreplace")


def be64_at(buf: memoryview, pos: int) -> int:
    return int(_U64.unpack_from(buf, pos)[0])


def be32_at(buf: memoryview, pos: int) -> int:
    return int(_U32.unpack_from(buf, pos)[0])
