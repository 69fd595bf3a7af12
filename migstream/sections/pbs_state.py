"""Proxmox backup dirty-bitmap state (``pbs-state``): a be64 length and opaque bytes.

Proxmox QEMU: migration/pbs-state.c.
"""

from __future__ import annotations

from migstream.sections.summary import Summary
from migstream.wire.reader import Reader


def decode_pbs_state(r: Reader, kind: str) -> Summary:
    """Proxmox backup dirty-bitmap state: be64 length + opaque bytes."""
    n = r.be64("the pbs-state length")
    r.bounded_length(n, r.remaining, "pbs-state data")
    r.skip(n)
    return {"bytes": n}
