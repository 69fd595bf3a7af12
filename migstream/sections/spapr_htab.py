"""The pseries hash page table (``spapr/htab``): full or incremental chunks of HPTEs.

QEMU: hw/ppc/spapr.c (htab_save_iterate, htab_load).
"""

from __future__ import annotations

from migstream.sections.summary import Summary
from migstream.wire import constants as c
from migstream.wire.reader import Reader


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
