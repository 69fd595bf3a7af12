"""Block migration (``block``): 1 MiB device chunks, progress and EOS records.

QEMU: migration/block.c (block_save_iterate, block_load).
"""

from __future__ import annotations

from migstream.errors import StreamFormatError
from migstream.sections.summary import Summary, bump
from migstream.wire import constants as c
from migstream.wire.reader import Reader


def decode_block(r: Reader, kind: str) -> Summary:
    """Block migration (``block``): device chunks of 1 MiB, progress, EOS."""
    s: Summary = {}
    seen: set[str] = set()  # the names listed in s["devices"] (a list test per record is quadratic)
    while True:
        start = r.pos
        word = r.be64("a block migration record")
        flags = word & c.BLK_MIG_FLAGS_MASK
        sector = word >> 9
        if flags & c.BLK_MIG_FLAG_EOS:
            return s
        if flags & c.BLK_MIG_FLAG_PROGRESS:
            s["progress"] = sector
            continue
        if flags & c.BLK_MIG_FLAG_DEVICE_BLOCK:
            dev = r.cstr8("a block device name")
            if dev not in seen:
                seen.add(dev)
                s.setdefault("devices", []).append(dev)
            if flags & c.BLK_MIG_FLAG_ZERO_BLOCK:
                bump(s, "zero_chunks")
            else:
                r.skip(c.BLK_MIG_BLOCK_SIZE, "a block migration chunk")
                bump(s, "chunks")
            continue
        raise StreamFormatError(
            "unknown block migration record flags",
            offset=start,
            section=r.context,
            expected="DEVICE_BLOCK, EOS or PROGRESS",
            found=f"{flags:#x}",
        )
