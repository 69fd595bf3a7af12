"""Device state as JSON: typed (numbers as numbers, bytes as hex) and as plain Python values."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..decoders.vmstate import IntArray, Leaf, Struct

if TYPE_CHECKING:
    from ..api import Stream

_FLOAT = struct.Struct(">d")


def _leaf_value(leaf: Leaf, typed: bool) -> Any:
    v = leaf.value
    if isinstance(v, bytes):
        if leaf.inner is not None:
            return to_typed(leaf.inner) if typed else to_plain(leaf.inner)
        if typed:
            if leaf.type == "timer" and len(v) == 8:
                return int.from_bytes(v, "big")
            if leaf.type in ("float64", "CPU_Double_U") and len(v) == 8:
                return _FLOAT.unpack(v)[0]
            return v.hex()
        return v
    return v


def _convert(node: Any, typed: bool, offsets: bool) -> Any:
    if isinstance(node, Leaf):
        value = _leaf_value(node, typed)
        if offsets:
            return {"value": value, "type": node.type, "offset": node.offset, "size": node.size}
        return value
    if isinstance(node, IntArray):
        if offsets:
            return [
                {"value": v, "type": node.type, "offset": node.offset + i * node.size, "size": node.size}
                for i, v in enumerate(node.values)
            ]
        return list(node.values)
    if isinstance(node, Struct):
        return {k: _convert(v, typed, offsets) for k, v in node.items()}
    if isinstance(node, list):
        return [_convert(v, typed, offsets) for v in node]
    return node


def to_plain(state: Struct | None) -> dict[str, Any]:
    """Plain Python values: int, bool, bytes, str, None, lists, dicts (names as in the description)."""
    if state is None:
        return {}
    out = _convert(state, False, False)
    assert isinstance(out, dict)
    return out


def to_typed(state: Struct | None, offsets: bool = False) -> dict[str, Any]:
    """JSON-ready values: numbers, bytes as hex strings; with ``offsets`` each leaf is an object."""
    if state is None:
        return {}
    out = _convert(state, True, offsets)
    assert isinstance(out, dict)
    return out


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
            value = _leaf_value(leaf, True)
            if isinstance(value, int) and not isinstance(value, bool):
                shown = f"{value:#x}" if value >= 0 else str(value)
            else:
                shown = str(value)
            yield f"{path}\t{leaf.type}\t@{leaf.offset:#x}\t{shown}"
