"""Sections that no JSON description covers, one module per section type.

Each decoder consumes exactly one section payload and returns a small summary
(counts, names, byte totals); bulk data is skipped, never copied.
"""

from __future__ import annotations

from migstream.sections.block import decode_block
from migstream.sections.dirty_bitmap import decode_dirty_bitmap
from migstream.sections.pbs_state import decode_pbs_state
from migstream.sections.s390_keys_tod import decode_skeys, decode_todclock
from migstream.sections.s390_storage_attributes import decode_storage_attributes
from migstream.sections.spapr_htab import decode_htab
from migstream.sections.summary import Decoder, Summary
from migstream.sections.vfio import decode_vfio

__all__ = ["Decoder", "Summary", "blob_decoder", "live_decoder"]

#: Old-style FULL sections whose opaque payload has a known layout.
BLOB_DECODERS: dict[str, Decoder] = {"s390-skeys": decode_skeys, "todclock": decode_todclock}
#: Live (START/PART/END) sections, by idstr.
LIVE_DECODERS: dict[str, Decoder] = {
    "block": decode_block,
    "dirty-bitmap": decode_dirty_bitmap,
    "spapr/htab": decode_htab,
    "s390-storage_attributes": decode_storage_attributes,
    "vfio": decode_vfio,
    "pbs-state": decode_pbs_state,
}


def blob_decoder(idstr: str) -> Decoder | None:
    """The decoder for an old-style FULL section whose opaque payload has a known layout."""
    return BLOB_DECODERS.get(idstr)


def live_decoder(idstr: str) -> Decoder | None:
    """The decoder for a live (START/PART/END) section named ``idstr``, if known."""
    if idstr.endswith("/vfio"):
        return decode_vfio
    return LIVE_DECODERS.get(idstr)
