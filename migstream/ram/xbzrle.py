"""XBZRLE page deltas: (unchanged run, literal run) pairs of ULEB128 lengths.

QEMU: migration/xbzrle.c (xbzrle_decode_buffer).
"""

from __future__ import annotations

from migstream.errors import StreamFormatError


def _uleb(data: bytes, pos: int) -> tuple[int, int]:
    """A 1- or 2-byte ULEB128 number at ``pos``; returns (value, new position)."""
    if pos >= len(data):
        raise StreamFormatError("XBZRLE length runs past its data")
    b = data[pos]
    if b < 0x80:
        return b, pos + 1
    if pos + 1 >= len(data):
        raise StreamFormatError("XBZRLE length runs past its data")
    b2 = data[pos + 1]
    if b2 >= 0x80:
        raise StreamFormatError("XBZRLE length longer than two bytes")
    return (b & 0x7F) | (b2 << 7), pos + 2


def apply_xbzrle(delta: bytes, page: bytearray) -> None:
    """Apply an encoded delta to ``page`` (the previous content) in place."""
    pos = 0
    d = 0
    size = len(page)
    first = True
    while pos < len(delta):
        zrun, pos = _uleb(delta, pos)
        if zrun == 0 and not first:
            raise StreamFormatError("XBZRLE unchanged run of 0 after the first pair")
        first = False
        d += zrun
        if pos >= len(delta):
            break  # trailing unchanged run
        nzrun, pos = _uleb(delta, pos)
        if nzrun == 0:
            raise StreamFormatError("XBZRLE literal run of 0")
        if d + nzrun > size or pos + nzrun > len(delta):
            raise StreamFormatError(
                "XBZRLE literal run overflows the page or its data", expected=f"<= {size - d}", found=nzrun
            )
        page[d : d + nzrun] = delta[pos : pos + nzrun]
        pos += nzrun
        d += nzrun
