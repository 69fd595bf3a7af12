"""s390 storage attributes (``s390-storage_attributes``): runs of CMMA values up to EOS.

QEMU: hw/s390x/s390-stattrib.c (cmma_save, cmma_load).
"""

from __future__ import annotations

from migstream.errors import StreamFormatError
from migstream.sections.summary import Summary
from migstream.wire import constants as c
from migstream.wire.reader import Reader


def decode_storage_attributes(r: Reader, kind: str) -> Summary:
    """s390 storage attributes (``s390-storage_attributes``): MORE* [DONE] EOS."""
    s: Summary = {"pages": 0}
    while True:
        start = r.pos
        word = r.be64("a storage attribute record")
        flags = word & 0xFFF
        if flags & c.STATTR_FLAG_ERROR:
            raise StreamFormatError(
                "the source reported an error in the storage attributes", offset=start, section=r.context
            )
        if flags & c.STATTR_FLAG_EOS:
            return s
        if flags & c.STATTR_FLAG_DONE:
            s["done"] = True
            continue
        if flags & c.STATTR_FLAG_MORE:
            n = r.be64("an attribute count")
            r.bounded_length(n, r.remaining, "storage attributes")
            r.skip(n)
            s["pages"] += n
            continue
        raise StreamFormatError(
            "unknown storage attribute flags",
            offset=start,
            section=r.context,
            expected="MORE, DONE or EOS",
            found=f"{flags:#x}",
        )
