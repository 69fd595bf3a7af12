"""Sizing a device section of a footer-less stream by the section header that follows it.

QEMU: migration/savevm.c (qemu_savevm_state_complete_precopy_non_iterable).
Streams of machine types before 2.5 have no section footers, and those before
2.3 (or with suppress-vmdesc, or postcopy) no description either: nothing says
where an opaque device section ends.  Device sections are written in the order
their handlers were registered, and section ids are handed out in that same
order (handlers of a higher priority, such as IOMMUs, first), so the section
that follows is a SECTION_FULL header with a small id that has not been seen
yet, a printable idstr and small instance and version numbers.  The search is
linear (each chunk is copied and searched once).
"""

from __future__ import annotations

import re
from collections.abc import Container

from migstream.wire.constants import RecordType
from migstream.wire.reader import Reader

#: Largest instance and version ids taken as plausible in a guessed header.
MAX_PLAUSIBLE_ID = 1 << 16
#: Largest section id taken as plausible (ids count the registered handlers).
MAX_PLAUSIBLE_SECTION_ID = 1 << 20
_IDSTR = re.compile(rb"[\x21-\x7e]+")
_CHUNK = 1 << 20
_HEADER_BYTES = 14  # type, id, name length, instance, version around the name


def _plausible_header(buf: memoryview, pos: int, end: int, after_id: int, seen: Container[int]) -> bool:
    if pos + _HEADER_BYTES > end:
        return False
    sid = int.from_bytes(buf[pos + 1 : pos + 5], "big")
    if sid == after_id or sid >= MAX_PLAUSIBLE_SECTION_ID or sid in seen:
        return False
    n = buf[pos + 5]
    tail = pos + 6 + n
    if n == 0 or tail + 8 > end or _IDSTR.fullmatch(bytes(buf[pos + 6 : tail])) is None:
        return False
    instance = int.from_bytes(buf[tail : tail + 4], "big")
    version = int.from_bytes(buf[tail + 4 : tail + 8], "big")
    return instance < MAX_PLAUSIBLE_ID and 0 < version < MAX_PLAUSIBLE_ID


def _eof_at(buf: memoryview, pos: int, end: int) -> bool:
    """An EOF byte that ends the data (what may follow it: a description marker, or zeros)."""
    if buf[pos] != RecordType.EOF:
        return False
    rest = bytes(buf[pos + 1 : min(end, pos + 4097)])
    return not rest.strip(b"\0") or rest[0] == RecordType.VMDESCRIPTION


def next_section_header(r: Reader, section_id: int, seen: Container[int]) -> int | None:
    """Where the record after the device section ``section_id`` starts, or None if no candidate.

    Candidates are a SECTION_FULL header of a later, unseen section, or the EOF
    record that ends the data.  ``r`` does not move.
    """
    buf, end = r.buf, r.end
    marker = bytes([RecordType.SECTION_FULL])
    pos = r.pos
    while pos < end:
        stop = min(end, pos + _CHUNK)
        chunk = bytes(buf[pos:stop])
        hit = chunk.find(marker)
        while hit >= 0:
            if _plausible_header(buf, pos + hit, end, section_id, seen):
                return pos + hit
            hit = chunk.find(marker, hit + 1)
        pos = stop
    # No later device section: the last one ends where the EOF record is.
    last = end - 1
    while last >= r.pos and buf[last] == 0 and end - last < 4096:
        last -= 1
    for candidate in (end - 1, last + 1):
        if r.pos <= candidate < end and _eof_at(buf, candidate, end):
            return candidate
    return None
