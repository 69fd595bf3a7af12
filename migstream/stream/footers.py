"""Section footers: reading them, and finding the end of a section that cannot be decoded.

QEMU: migration/savevm.c (save_section_footer, check_section_footer).  Since
machine types 2.5 every section record ends with ``0x7E`` and its be32 section
id.  A section no decoder understands is skipped to its footer: the first
``0x7E + id`` followed by something that looks like the next record.  The
search is linear: each chunk of the stream is copied and searched once, and
the chunks grow from a page, so a footer nearby costs little.
"""

from __future__ import annotations

import re
from collections.abc import Container

from migstream.errors import StreamFormatError, TruncatedError
from migstream.wire.constants import MIG_CMD_LENGTHS, RecordType
from migstream.wire.reader import Reader

#: What a section idstr looks like (for telling a real footer from look-alike bytes).
_PRINTABLE_IDSTR = re.compile(rb"[\x20-\x7e]+")
_FIND_CHUNK = 1 << 20
_FIRST_CHUNK = 1 << 12


def footer_pattern(section_id: int) -> bytes:
    return bytes([RecordType.SECTION_FOOTER]) + section_id.to_bytes(4, "big")


def scan_to_footer(r: Reader, section_id: int, known_sections: Container[int]) -> None:
    """Move ``r`` to the footer of ``section_id``, or raise if there is none ahead."""
    pattern = footer_pattern(section_id)
    buf, end = r.buf, r.end
    pos = r.pos
    overlap = len(pattern) - 1
    # Chunks grow from small: a footer close by (the common case, thousands of times in a
    # stream) costs a small copy, a far one a few doublings.
    chunk_size = _FIRST_CHUNK
    while pos < end:
        stop = min(end, pos + chunk_size + overlap)
        chunk_size = min(chunk_size * 4, _FIND_CHUNK)
        chunk = bytes(buf[pos:stop])
        hit = chunk.find(pattern)
        while hit >= 0:
            if plausible_next(r, pos + hit + len(pattern), known_sections):
                r.pos = pos + hit
                return
            hit = chunk.find(pattern, hit + 1)
        if stop == end:
            break
        pos = stop - overlap
    raise TruncatedError(
        "the stream ends before this section's footer",
        offset=r.pos,
        section=r.context,
        expected=pattern.hex(" "),
        found="end of data",
    )


def plausible_next(r: Reader, pos: int, known_sections: Container[int]) -> bool:
    """Whether a record could start at ``pos`` (or the data ends there)."""
    buf, end = r.buf, r.end
    if pos == end:
        return True
    if pos > end:
        return False
    b = buf[pos]
    if b == RecordType.EOF:
        return True
    if b in (RecordType.SECTION_START, RecordType.SECTION_FULL):
        if pos + 6 > end:
            return False
        n = buf[pos + 5]
        name = bytes(buf[pos + 6 : pos + 6 + n])
        return (
            n > 0 and len(name) == n and _PRINTABLE_IDSTR.fullmatch(name) is not None and pos + 14 + n <= end
        )
    if b in (RecordType.SECTION_PART, RecordType.SECTION_END):
        if pos + 5 > end:
            return False
        return int.from_bytes(buf[pos + 1 : pos + 5], "big") in known_sections
    if b == RecordType.COMMAND:
        if pos + 5 > end:
            return False
        return int.from_bytes(buf[pos + 1 : pos + 3], "big") in MIG_CMD_LENGTHS
    return False


def footer_follows(r: Reader, section_id: int) -> bool:
    """Whether the footer of ``section_id`` starts right at the reader's position."""
    return r.remaining >= 5 and bytes(r.buf[r.pos : r.pos + 5]) == footer_pattern(section_id)


def read_footer(r: Reader, section_id: int) -> int:
    """Consume the footer of ``section_id``; returns its offset."""
    at = r.pos
    nxt = r.peek_u8()
    if nxt != RecordType.SECTION_FOOTER:
        if nxt is None:
            r.need(1, "a section footer")
        raise StreamFormatError(
            "section footer expected",
            offset=at,
            section=r.context,
            expected=f"{int(RecordType.SECTION_FOOTER):#04x}",
            found=f"{nxt:#04x}",
        )
    r.u8()
    got = r.be32("the footer's section id")
    if got != section_id:
        raise StreamFormatError(
            "section footer names another section",
            offset=at,
            section=r.context,
            expected=section_id,
            found=got,
        )
    return at
