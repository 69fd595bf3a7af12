"""Device state as JSON: typed (numbers as numbers, bytes as hex) and as plain Python values."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from migstream.vmstate.values import leaf_value, to_typed

if TYPE_CHECKING:
    from migstream.api import Stream

def state_document(stream: Stream, *, device: str | None = None, offsets: bool = False) -> dict[str, Any]:
    """What `migstream state --json` prints: the machine and every device section (or only ``device``)."""
    return {
        "machine": stream.machine,
        "devices": [
            {
                "name": d.name,
                "instance_id": d.instance_id,
                "section_id": d.section_id,
                "version_id": d.version_id,
                "vmsd_name": d.vmsd_name,
                "offset": d.offset,
                "state": to_typed(d.state, offsets=offsets),
            }
            for d in stream.devices
            if device is None or d.name == device
        ],
    }


def flat_lines(stream: Stream, *, device: str | None = None) -> Iterator[str]:
    """``cpu[0].env.cr[3]  uint64  @0x2aa4f1  0x60000010``: every value of every device, one per line."""
    for d in stream.devices:
        if device is not None and d.name != device:
            continue
        for path, leaf in d.walk():
            value = leaf_value(leaf, True)
            if isinstance(value, int) and not isinstance(value, bool):
                shown = f"{value:#x}" if value >= 0 else str(value)
            else:
                shown = str(value)
            yield f"{path}\t{leaf.type}\t@{leaf.offset:#x}\t{shown}"
