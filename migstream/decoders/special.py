"""Live sections that have no JSON description: block, dirty-bitmap, spapr/htab,
s390-storage_attributes, VFIO, pbs-state.

Each decoder consumes exactly one section payload and returns a small summary
(counts, names, byte totals); bulk data is skipped, never copied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import StreamFormatError
from ..wire import constants as c
from ..wire.reader import Reader

Summary = dict[str, Any]
Decoder = Callable[[Reader, str], Summary]


def _bump(summary: Summary, key: str, n: int = 1) -> None:
    summary[key] = summary.get(key, 0) + n


def decode_block(r: Reader, kind: str) -> Summary:
    """Block migration (``block``): device chunks of 1 MiB, progress, EOS."""
    s: Summary = {}
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
            devices = s.setdefault("devices", [])
            if dev not in devices:
                devices.append(dev)
            if flags & c.BLK_MIG_FLAG_ZERO_BLOCK:
                _bump(s, "zero_chunks")
            else:
                r.skip(c.BLK_MIG_BLOCK_SIZE, "a block migration chunk")
                _bump(s, "chunks")
            continue
        raise StreamFormatError(
            "unknown block migration record flags",
            offset=start,
            section=r.context,
            expected="DEVICE_BLOCK, EOS or PROGRESS",
            found=f"{flags:#x}",
        )


def decode_dirty_bitmap(r: Reader, kind: str) -> Summary:
    """Dirty bitmaps (``dirty-bitmap``): START/BITS/COMPLETE chunks up to EOS."""
    s: Summary = {}
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
            bitmaps = s.setdefault("bitmaps", [])
            if name not in bitmaps:
                bitmaps.append(name)
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
            _bump(s, "started")
        if flags & c.DIRTY_BITMAP_MIG_FLAG_BITS:
            r.be64("first sector")
            r.be32("sector count")
            if flags & c.DIRTY_BITMAP_MIG_FLAG_ZEROES:
                _bump(s, "zero_chunks")
            else:
                n = r.be64("bitmap data length")
                r.bounded_length(n, r.remaining, "bitmap data")
                r.skip(n)
                _bump(s, "bits_bytes", n)
        if flags & c.DIRTY_BITMAP_MIG_FLAG_COMPLETE:
            _bump(s, "completed")
        if flags & c.DIRTY_BITMAP_MIG_FLAG_EOS:
            return s
        if not flags & (
            c.DIRTY_BITMAP_MIG_FLAG_START | c.DIRTY_BITMAP_MIG_FLAG_BITS | c.DIRTY_BITMAP_MIG_FLAG_COMPLETE
        ):
            raise StreamFormatError(
                "dirty bitmap chunk of no known kind", offset=start, section=r.context, found=f"{flags:#x}"
            )


def decode_htab(r: Reader, kind: str) -> Summary:
    """pseries hashed page table (``spapr/htab``)."""
    header = r.be32("the HPT header")
    if kind == "SECTION_START":
        return {"htab_shift": None if header == c.HTAB_NO_HPT else header}
    if header == c.HTAB_NO_HPT:
        return {"no_hpt": True}
    s: Summary = {"chunks": 0, "valid": 0, "invalid": 0}
    while True:
        index = r.be32("an HPT chunk index")
        n_valid = r.be16("an HPT valid count")
        n_invalid = r.be16("an HPT invalid count")
        if index == 0 and n_valid == 0 and n_invalid == 0:
            return s
        r.skip(n_valid * c.HASH_PTE_SIZE_64, "HPT entries")
        s["chunks"] += 1
        s["valid"] += n_valid
        s["invalid"] += n_invalid


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


_VFIO_NAMES = {
    c.VFIO_MIG_FLAG_END_OF_STATE: "END_OF_STATE",
    c.VFIO_MIG_FLAG_DEV_CONFIG_STATE: "DEV_CONFIG_STATE",
    c.VFIO_MIG_FLAG_DEV_SETUP_STATE: "DEV_SETUP_STATE",
    c.VFIO_MIG_FLAG_DEV_DATA_STATE: "DEV_DATA_STATE",
    c.VFIO_MIG_FLAG_DEV_INIT_DATA_SENT: "DEV_INIT_DATA_SENT",
    c.VFIO_MIG_FLAG_DEV_CONFIG_LOAD_READY: "DEV_CONFIG_LOAD_READY",
}
#: Largest VFIO data chunk accepted.
MAX_VFIO_CHUNK = 1 << 30


def decode_vfio(r: Reader, kind: str) -> Summary:
    """VFIO iterative data: tagged chunks up to END_OF_STATE / INIT_DATA_SENT."""
    s: Summary = {"data_bytes": 0}
    while True:
        start = r.pos
        tag = r.be64("a VFIO tag")
        if tag in (
            c.VFIO_MIG_FLAG_END_OF_STATE,
            c.VFIO_MIG_FLAG_DEV_INIT_DATA_SENT,
            c.VFIO_MIG_FLAG_DEV_CONFIG_LOAD_READY,
        ):
            s["end"] = _VFIO_NAMES[tag]
            return s
        if tag == c.VFIO_MIG_FLAG_DEV_SETUP_STATE:
            continue
        if tag == c.VFIO_MIG_FLAG_DEV_DATA_STATE:
            n = r.be64("a VFIO data length")
            r.bounded_length(n, MAX_VFIO_CHUNK, "VFIO data")
            r.skip(n, "VFIO data")
            s["data_bytes"] += n
            continue
        raise StreamFormatError("unknown VFIO tag", offset=start, section=r.context, found=f"{tag:#x}")


def decode_pbs_state(r: Reader, kind: str) -> Summary:
    """Proxmox backup dirty-bitmap state: be64 length + opaque bytes."""
    n = r.be64("the pbs-state length")
    r.bounded_length(n, r.remaining, "pbs-state data")
    r.skip(n)
    return {"bytes": n}


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


def blob_decoder(idstr: str) -> Decoder | None:
    """The decoder for an old-style FULL section whose opaque payload has a known layout."""
    return {"s390-skeys": decode_skeys, "todclock": decode_todclock}.get(idstr)


def live_decoder(idstr: str) -> Decoder | None:
    """The decoder for a live (START/PART/END) section named ``idstr``, if known."""
    if idstr == "block":
        return decode_block
    if idstr == "dirty-bitmap":
        return decode_dirty_bitmap
    if idstr == "spapr/htab":
        return decode_htab
    if idstr == "s390-storage_attributes":
        return decode_storage_attributes
    if idstr == "vfio" or idstr.endswith("/vfio"):
        return decode_vfio
    if idstr == "pbs-state":
        return decode_pbs_state
    return None
