"""`migstream info`: what a stream holds, as JSON and as readable text.

QEMU: the version hints follow the records each release added or dropped (migration/savevm.c, ram.c).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from migstream.ram.model import PageKind
from migstream.ram.records import page_totals

if TYPE_CHECKING:
    from migstream.api import Stream

_MACHINE_VERSION = re.compile(r"-(\d+)\.(\d+)")


def version_hints(stream: Stream) -> list[dict[str, Any]]:
    """What the stream's shape says about the QEMU that wrote it: (clue, bound) pairs."""
    p = stream.parsed
    hints: list[dict[str, Any]] = []

    def add(clue: str, at_least: str | None = None, at_most: str | None = None) -> None:
        h: dict[str, Any] = {"clue": clue}
        if at_least:
            h["min"] = at_least
        if at_most:
            h["max"] = at_most
        hints.append(h)

    commands = {r.command for r in p.records if r.command}
    if "SWITCHOVER_START" in commands:
        add("SWITCHOVER_START command", at_least="10.0")
    if p.ram.stats.multifd_flush:
        add("RAM MULTIFD_FLUSH records", at_least="8.1")
    if p.ram.mapped_ram:
        add("mapped-ram block headers", at_least="9.0")
    if p.ram.stats.compressed:
        add("COMPRESS_PAGE records (compress capability)", at_least="2.4", at_most="9.0")
    if "block" in p.section_names.values():
        add("block migration section", at_most="9.0")
    if p.configuration is not None:
        add("configuration record", at_least="2.4")
        if "configuration/uuid" in p.configuration.subsections:
            add("configuration uuid subsection", at_least="4.2")
        if "configuration/capabilities" in p.configuration.subsections:
            add("configuration capabilities subsection", at_least="4.0")
        m = _MACHINE_VERSION.search(p.configuration.machine)
        if m:
            add(f"machine type {p.configuration.machine}", at_least=f"{m.group(1)}.{m.group(2)}")
    if p.footers:
        add("section footers", at_least="2.4")
    if p.vmdesc is not None and stream.has_own_description:
        add("JSON VM description", at_least="2.3")
        if "configuration" in p.vmdesc:
            add("description lists the configuration", at_least="8.2")
        elif p.configuration is not None:
            add("configuration record not in the description", at_most="8.1")
        if _uses_type(p.vmdesc.get("devices", []), "nullptr"):
            add("description uses the nullptr type", at_least="10.0")
    return hints


def _uses_type(devices: Iterable[Any], name: str) -> bool:
    stack = list(devices)
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("type") == name:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _version_range(hints: list[dict[str, Any]]) -> dict[str, str]:
    def key(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.split("."))

    lows = [h["min"] for h in hints if "min" in h]
    highs = [h["max"] for h in hints if "max" in h]
    out: dict[str, str] = {}
    if lows:
        out["min"] = max(lows, key=key)
    if highs:
        out["max"] = min(highs, key=key)
    return out


def _page_counts(stream: Stream) -> dict[str, dict[str, int]]:
    ram = stream.parsed.ram
    counts: dict[str, Counter[str]] = {b.name: Counter() for b in ram.blocks}
    names = [b.name for b in ram.blocks]
    for bi, kind, pages in page_totals(ram.runs, len(names)):
        counts[names[bi]][PageKind(kind).name.lower()] += pages
    return {k: dict(v) for k, v in counts.items()}


def multifd_hint(stream: Stream) -> str | None:
    """A warning when the page data evidently travelled on multifd channels that were not given."""
    if stream.channels or stream.parsed.ram.ignore_shared or not stream.ram_blocks:
        return None
    s = stream.parsed.ram.stats
    if s.pages or s.xbzrle or s.compressed or s.mapped:
        return None
    return (
        "the main stream carries no page data (at most zero pages): a multifd migration, "
        "whose pages travelled on the multifd channels; give the channel captures after the stream "
        "(MAIN CHANNEL1 CHANNEL2 ...), or guest memory reads as zeros"
    )


def info_json(stream: Stream) -> dict[str, Any]:
    p = stream.parsed
    hints = version_hints(stream)
    counts = _page_counts(stream)
    return {
        "source": {
            "name": stream.source.name,
            "container": stream.source.container,
            "size": p.size,
            "details": _json_safe(stream.source.details),
        },
        "version": p.version,
        "machine": stream.machine,
        "arch": stream.arch,
        "configuration": p.configuration.to_json() if p.configuration else None,
        "page_size": p.page_size,
        "footers": p.footers,
        "has_description": stream.has_own_description,
        "qemu_version": {"hints": hints, **_version_range(hints)},
        "records": [r.to_json() for r in p.records],
        "ram_blocks": [{**b.to_json(), "pages": counts.get(b.name, {})} for b in p.ram.blocks],
        "ram": p.ram.stats.to_json(),
        "sections": [sec.to_json() for sec in stream.sections],
        "commands": [r.to_json() for r in p.records if r.command],
        "devices": [
            {
                "section_id": d.section_id,
                "name": d.name,
                "instance_id": d.instance_id,
                "version_id": d.version_id,
                "offset": d.offset,
                "size": d.payload_size,
                "decoded": d.state is not None,
                **({"summary": dict(d.summary)} if d.summary else {}),
            }
            for d in p.devices
        ],
        "live_sections": [
            {
                "section_id": s.section_id,
                "name": s.name,
                "decoded": s.decoded,
                "records": [{"type": t, "offset": o, **dict(sm)} for t, o, sm in s.summaries],
            }
            for s in p.live_sections
        ],
        "channels": [{"name": c.name, "size": c.size} for c in stream.channels],
        "truncated": _truncation_json(stream),
        "diagnostics": [d.to_json() for d in p.diagnostics]
        + ([{"level": "warning", "message": hint}] if (hint := multifd_hint(stream)) else []),
    }


def _truncation_json(stream: Stream) -> dict[str, Any] | None:
    exc = stream.truncated
    if exc is None:
        return None
    return {"offset": exc.offset, "section": exc.section, "message": str(exc)}


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    return value


def _container_line(stream: Stream) -> str | None:
    d = stream.source.details
    if "qcow2" in d:
        q = d["qcow2"]
        return f"  snapshot:      {q.get('snapshot')!r} (id {q.get('id')}) of a qcow2 image"
    if "libvirt" in d:
        lv = d["libvirt"]
        return (
            f"  libvirt image: format {lv.get('format')}, was_running={lv.get('was_running')}, "
            f"domain XML {len(lv.get('xml') or '')} bytes"
        )
    return None


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << (shift - 3)) == 0:
            return f"{n / (1 << shift):g} {unit}"
    return f"{n} B"


def info_text(stream: Stream, *, all_records: bool = False) -> str:
    """A readable summary."""
    p = stream.parsed
    lines: list[str] = []
    lines.append(
        f"{stream.source.name}: QEMU migration stream, version {p.version}, {p.size} bytes"
        + (f" ({stream.source.container})" if stream.source.container != "raw" else "")
    )
    container = _container_line(stream)
    if container:
        lines.append(container)
    cfg = p.configuration
    lines.append(
        f"  machine:       {cfg.machine if cfg else '(no configuration record)'}"
        + (f"   arch: {stream.arch}" if stream.arch else "")
    )
    if cfg is not None:
        if cfg.capabilities:
            lines.append(f"  capabilities:  {', '.join(cfg.capabilities)}")
        if cfg.target_page_bits is not None:
            lines.append(f"  page bits:     {cfg.target_page_bits}")
        if cfg.uuid:
            lines.append(f"  uuid:          {cfg.uuid}")
    lines.append(
        f"  page size:     {p.page_size}   footers: {'yes' if p.footers else 'no'}   "
        f"description: {'yes' if stream.has_own_description else 'no'}"
    )
    hints = version_hints(stream)
    rng = _version_range(hints)
    if rng:
        span = (
            (f">= {rng['min']}" if "min" in rng else "")
            + (", " if len(rng) == 2 else "")
            + (f"<= {rng['max']}" if "max" in rng else "")
        )
        lines.append(f"  QEMU version:  {span}")
        for h in hints:
            bound = " and ".join(
                x
                for x in (f">= {h['min']}" if "min" in h else "", f"<= {h['max']}" if "max" in h else "")
                if x
            )
            lines.append(f"    {h['clue']} => QEMU {bound}")
    lines.append("")
    lines.append("RAM blocks:")
    counts = _page_counts(stream)
    for b in p.ram.blocks:
        c = counts.get(b.name, {})
        extra = ", ".join(f"{v} {k}" for k, v in sorted(c.items())) or "no pages"
        tags = []
        if b.mr_addr is not None:
            tags.append(f"mr_addr {b.mr_addr:#x}")
        if b.mapped_ram is not None:
            tags.append(f"pages at {b.mapped_ram.pages_offset:#x}")
        if b.page_size is not None:
            tags.append(f"page size {b.page_size}")
        lines.append(
            f"  {b.name:40s} {_size(b.size):>10s}  {extra}" + (f"  [{'; '.join(tags)}]" if tags else "")
        )
    s = p.ram.stats
    lines.append(
        f"  records: {s.pages} pages, {s.zero} zero pages, {s.xbzrle} xbzrle, {s.compressed} compressed, "
        f"{s.mapped} mapped, {s.multifd_flush} multifd flushes, {s.eos} EOS"
    )
    if stream.channels:
        lines.append(f"  multifd channels: {', '.join(c.name for c in stream.channels)}")
    else:
        hint = multifd_hint(stream)
        if hint:
            lines.append(f"  note: {hint}")
    cmds = [r for r in p.records if r.command]
    if cmds:
        lines.append("")
        lines.append("Commands:")
        for r in cmds:
            det = ", ".join(f"{k}={v}" for k, v in r.details.items() if k != "ranges")
            if "ranges" in r.details:
                det += f", {len(r.details['ranges'])} ranges"
            lines.append(f"  {r.offset:#010x}  {'  ' * r.depth}{r.command}" + (f" ({det})" if det else ""))
    lines.append("")
    lines.append("Records:")
    shown = 0
    prev_key = None
    repeat = 0
    for r in p.records:
        key = (r.type, r.section_id, r.depth)
        if not all_records and key == prev_key and r.type == "SECTION_PART":
            repeat += 1
            continue
        if repeat:
            lines.append(f"  {'':10s}  ... {repeat} more {prev_key[0] if prev_key else ''} records")
            repeat = 0
        prev_key = key
        desc = r.type
        if r.command:
            desc += f" {r.command}"
        if r.section_id is not None:
            desc += f" {r.name!r} id={r.section_id}"
            if r.instance_id is not None:
                desc += f" instance={r.instance_id} version={r.version_id}"
        lines.append(f"  {r.offset:#010x}  {'  ' * r.depth}{desc}  ({r.size} bytes)")
        shown += 1
    if repeat:
        lines.append(f"  {'':10s}  ... {repeat} more records")
    if stream.truncated is not None:
        cut = stream.truncated
        lines.append(f"  {cut.offset or 0:#010x}  the stream ends early: {cut}")
    if p.diagnostics:
        lines.append("")
        lines.append("Diagnostics:")
        lines.extend(f"  {d}" for d in p.diagnostics)
    return "\n".join(lines) + "\n"
