"""Find the JSON VM description (the VMDESCRIPTION trailer) by validated framing.

QEMU: migration/savevm.c (qemu_savevm_state_complete_precopy_non_iterable: the vmdesc).

The trailer is ``0x06``, a be32 length, and that many bytes of JSON, right
after the EOF byte; trailing zero padding may follow (savevm volumes, block
devices).  A candidate is accepted only if the marker, the length and the end
of the data agree and the text parses as a JSON object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from migstream.wire.constants import RecordType
from migstream.wire.reader import Reader, be32_at

#: How much trailing zero padding is tolerated after the description.
MAX_TRAILING_ZEROS = 64 << 20
#: Largest description accepted.
MAX_VMDESC = 256 << 20
_CHUNK = 1 << 20


@dataclass(frozen=True)
class VmDescription:
    offset: int  # position of the 0x06 marker
    length: int  # JSON bytes
    end: int  # position after the JSON
    data: dict[str, Any]

    @property
    def page_size(self) -> int | None:
        v = self.data.get("page_size")
        return v if isinstance(v, int) and not isinstance(v, bool) else None


def _data_end(buf: memoryview) -> int:
    """Position after the last non-zero byte, within the tolerated padding."""
    end = len(buf)
    floor = max(0, end - MAX_TRAILING_ZEROS)
    while end > floor:
        lo = max(floor, end - _CHUNK)
        chunk = bytes(buf[lo:end])
        stripped = len(chunk.rstrip(b"\0"))
        if stripped:
            return lo + stripped
        end = lo
    return end


def parse_json(raw: bytes) -> Any:
    return json.loads(raw.decode("utf-8", errors="replace"), strict=False)


def locate_vmdesc(buf: memoryview) -> VmDescription | None:
    """The trailing VM description of a stream, or None when it has none."""
    end = _data_end(buf)
    if end < 16 or buf[end - 1] != ord("}"):
        return None
    # The JSON text holds no NUL byte, so the last NUL before its end lies in
    # the length field or is the EOF byte just before the marker.
    lo = max(0, end - MAX_VMDESC - 6)
    pos = end
    nul = -1
    while pos > lo:
        start = max(lo, pos - _CHUNK)
        found = bytes(buf[start:pos]).rfind(b"\0")
        if found >= 0:
            nul = start + found
            break
        pos = start
    if nul < 0:
        return None
    for marker in range(nul - 4, nul + 2):
        if marker < 1 or marker + 5 > end or buf[marker] != RecordType.VMDESCRIPTION:
            continue
        length = be32_at(buf, marker + 1)
        if marker + 5 + length != end or buf[marker + 5] != ord("{"):
            continue
        try:
            data = parse_json(bytes(buf[marker + 5 : end]))
        except (ValueError, RecursionError):  # not JSON, or nested deeper than any description
            continue
        if isinstance(data, dict):
            return VmDescription(marker, length, end, data)
    return None


#: Bytes looked at after the end of a one-pass stream for data that is not padding.
TAIL_PEEK = 4096


def read_trailer(r: Reader) -> None:
    """A one-pass stream after its EOF byte: read the description and what follows, and end there.

    The description is read by its length (when that is within bounds); then
    zero padding is read and dropped up to :data:`MAX_TRAILING_ZEROS`, and at
    most :data:`TAIL_PEEK` bytes of anything else, so that the stream's end is
    where a file's would be without reading an endless input to its end.
    """
    end = r.pos
    r.ensure(end + 5)
    if r.end - end >= 5 and r.buf[end] == RecordType.VMDESCRIPTION:
        length = be32_at(r.buf, end + 1)
        if length <= MAX_VMDESC:
            r.ensure(end + 5 + length)
            end = min(r.end, end + 5 + length)
    limit = end + MAX_TRAILING_ZEROS
    zeros = end
    while end < limit:
        r.ensure(end + min(_CHUNK, limit - end))
        stop = min(r.end, end + _CHUNK)
        if stop <= end:
            break
        if bytes(r.buf[end:stop]).strip(b"\0"):
            end = min(r.end, end + TAIL_PEEK)
            break
        r.pos, end = stop, stop
        r.release_before(zeros)
    r.end = r.pos = end
