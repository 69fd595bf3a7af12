"""s390 storage keys (``s390-skeys``) and TOD clock (``todclock``): old-style FULL sections.

QEMU: hw/s390x/s390-skeys.c (s390_storage_keys_save), hw/s390x/tod.c (s390_tod_save).
"""

from __future__ import annotations

from migstream.errors import StreamFormatError
from migstream.sections.summary import Summary
from migstream.wire import constants as c
from migstream.wire.reader import Reader


def decode_skeys(r: Reader, kind: str) -> Summary:
    """s390 storage keys (``s390-skeys``): runs of one key byte per 4 KiB page, up to EOS."""
    s: Summary = {"pages": 0, "nonzero_keys": 0}
    while True:
        start = r.pos
        word = r.be64("a storage key record")
        flags = word & 0xFFF
        if flags & c.S390_SKEYS_SAVE_FLAG_EOS:
            return s
        if flags & c.S390_SKEYS_SAVE_FLAG_ERROR:
            raise StreamFormatError(
                "the source reported an error in the storage keys", offset=start, section=r.context
            )
        if not flags & c.S390_SKEYS_SAVE_FLAG_SKEYS:
            raise StreamFormatError(
                "unknown storage key flags",
                offset=start,
                section=r.context,
                expected="SKEYS, ERROR or EOS",
                found=f"{flags:#x}",
            )
        n = r.be64("a storage key count")
        keys = r.take(r.bounded_length(n, r.remaining, "storage keys"))
        s["pages"] += n
        s["nonzero_keys"] += n - bytes(keys).count(0)


def decode_todclock(r: Reader, kind: str) -> Summary:
    """s390 TOD clock (``todclock``): a presence byte, then the high byte and low 64 bits."""
    if r.u8("the TOD clock presence byte") == 0:
        return {"present": False}
    high = r.u8("the TOD clock high byte")
    low = r.be64("the TOD clock low word")
    return {"present": True, "tod_high": high, "tod_low": low}
