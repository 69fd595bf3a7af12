"""Device state in the JSON layout of QEMU's ``scripts/analyze-migration.py``.

Sections are keyed ``"<idstr> (<section id>)"`` in order of first appearance;
integers are zero-padded hex strings of their width (negative values of signed
types followed by the decimal value in parentheses); opaque bytes are
space-separated hex; booleans are JSON booleans.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from migstream.api import Stream
from migstream.ram.model import PageKind
from migstream.ram.pagemap import inflate_page
from migstream.vmstate.values import IntArray, Leaf, Struct

#: Types QEMU's script reads as signed although QEMU reads them unsigned; its output is kept as it is.
_SCRIPT_READS_SIGNED = frozenset({"uint8 equal", "uint16 equal"})


def _int_text(value: int, size: int, ftype: str, signed: bool) -> str:
    """An integer as QEMU's script prints it: hex of its width, and the negative value when signed."""
    width = size * 2
    bits = 8 * size
    if ftype in _SCRIPT_READS_SIGNED:
        signed = True
        if value >= 1 << (bits - 1):
            value -= 1 << bits
    if signed and value < 0:
        return f"0x{value & ((1 << bits) - 1):0{width}x} ({value})"
    return f"0x{value:0{width}x}"


def _leaf(leaf: Leaf) -> Any:
    v = leaf.value
    if v is None:
        return "nullptr"
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return _int_text(v, leaf.size, leaf.type, leaf.signed)
    if isinstance(v, str):
        return v
    return " ".join(f"{b:02x}" for b in v)


def _node(node: Any) -> Any:
    if isinstance(node, Leaf):
        return _leaf(node)
    if isinstance(node, IntArray):
        return [_int_text(v, node.size, node.type, node.signed) for v in node.values]
    if isinstance(node, Struct):
        return {k: _node(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_node(v) for v in node]
    return node


def _memory_entries(stream: Stream) -> Iterator[tuple[str, str]]:
    """The ``-m`` listing: every page record of the main stream, as QEMU's script words it."""
    ram = stream.parsed.ram
    buf = stream.source.buffer
    ps = ram.page_size
    for run in ram.runs:
        name = ram.blocks[run.block].name
        for k in range(run.count):
            addr = run.addr + k * ps
            key = f"{name} (0x{addr:016x})"
            if run.kind == PageKind.ZERO:
                yield key, f"Filled with 0x{run.aux:02x}"
            elif run.kind in (PageKind.PAGE, PageKind.MAPPED):
                start = run.stream_offset + k * run.stride + run.data_skip
                yield key, bytes(buf[start : start + ps]).hex(" ")
            elif run.kind == PageKind.COMPRESS:
                start = run.stream_offset + run.data_skip
                yield key, inflate_page(bytes(buf[start : start + run.aux]), ps, start).hex(" ")
            elif run.kind == PageKind.XBZRLE:
                start = run.stream_offset + run.data_skip
                yield key, "XBZRLE delta " + bytes(buf[start : start + run.aux]).hex(" ")


def render_state(stream: Stream, memory: bool = False) -> dict[str, Any]:
    """What ``analyze-migration -d state`` prints, as a dict."""
    stream.require_state()
    p = stream.parsed
    devices = {d.section_id: d for d in p.devices}
    lives = {s.section_id: s for s in p.live_sections}
    out: dict[str, Any] = {}
    for sid in p.section_order:
        name = p.section_names[sid]
        key = f"{name} ({sid})"
        if sid == p.ram.section_id:
            ram: dict[str, Any] = {"section sizes": {b.name: f"0x{b.size:016x}" for b in p.ram.blocks}}
            if memory:
                ram["memory"] = dict(_memory_entries(stream))
            out[key] = ram
        elif sid in devices and devices[sid].state is not None:
            out[key] = _node(devices[sid].state)
        elif name in ("spapr/htab", "s390-storage_attributes"):
            out[key] = ""
        elif sid in lives:
            out[key] = {kind: summary for kind, _off, summary in lives[sid].summaries}
        elif sid in devices:
            out[key] = {"data": "(not decoded: no description)"}
    return out


def render_desc(stream: Stream) -> dict[str, Any]:
    """What ``analyze-migration -d desc`` prints: the stream's VM description."""
    stream.require_state()
    assert stream.vmdesc is not None
    return dict(stream.vmdesc)
