"""Dirty bitmaps (``dirty-bitmap``): START, BITS and COMPLETE chunks up to EOS.

QEMU: migration/block-dirty-bitmap.c (dirty_bitmap_load).
"""

from __future__ import annotations

from migstream.errors import StreamFormatError
from migstream.sections.summary import Summary, bump
from migstream.wire import constants as c
from migstream.wire.reader import Reader


def decode_dirty_bitmap(r: Reader, kind: str) -> Summary:
    """Dirty bitmaps (``dirty-bitmap``): START/BITS/COMPLETE chunks up to EOS."""
    s: Summary = {}
    seen: set[str] = set()  # the names listed in s["bitmaps"] (a list test per record is quadratic)
    while True:
        start = r.pos
        flags = r.u8("dirty bitmap flags")
        if flags & c.DIRTY_BITMAP_MIG_EXTRA_FLAGS:
            flags = (flags << 8) | r.u8("dirty bitmap flags")
            if flags & c.DIRTY_BITMAP_MIG_EXTRA_FLAGS:
                flags = (flags << 16) | r.be16("dirty bitmap flags")
        if flags & c.DIRTY_BITMAP_MIG_FLAG_DEVICE_NAME:
            s["node"] = r.cstr8("a node name")
        if flags & c.DIRTY_BITMAP_MIG_FLAG_BITMAP_NAME:
            name = r.cstr8("a bitmap name")
            if name not in seen:
                seen.add(name)
                s.setdefault("bitmaps", []).append(name)
        if flags & c.DIRTY_BITMAP_MIG_FLAG_START:
            s["granularity"] = r.be32("a bitmap granularity")
            bflags = r.u8("bitmap flags")
            if bflags & 0xF8:
                raise StreamFormatError(
                    "unknown dirty bitmap START flags",
                    offset=r.pos - 1,
                    section=r.context,
                    expected="bits 0x07 only",
                    found=f"{bflags:#x}",
                )
            bump(s, "started")
        if flags & c.DIRTY_BITMAP_MIG_FLAG_BITS:
            r.be64("first sector")
            r.be32("sector count")
            if flags & c.DIRTY_BITMAP_MIG_FLAG_ZEROES:
                bump(s, "zero_chunks")
            else:
                n = r.be64("bitmap data length")
                r.bounded_length(n, r.remaining, "bitmap data")
                r.skip(n)
                bump(s, "bits_bytes", n)
        if flags & c.DIRTY_BITMAP_MIG_FLAG_COMPLETE:
            bump(s, "completed")
        if flags & c.DIRTY_BITMAP_MIG_FLAG_EOS:
            return s
        if not flags & (
            c.DIRTY_BITMAP_MIG_FLAG_START | c.DIRTY_BITMAP_MIG_FLAG_BITS | c.DIRTY_BITMAP_MIG_FLAG_COMPLETE
        ):
            raise StreamFormatError(
                "dirty bitmap chunk of no known kind", offset=start, section=r.context, found=f"{flags:#x}"
            )
