"""Predict whether a target QEMU loads a stream, from the target's ``-dump-vmstate``.

QEMU: migration/savevm.c (qemu_loadvm_section_start_full, check_section_footer, configuration_post_load)

What the target does, and what is checked here, in load order:

* the configuration record's machine name must equal the target's (``Machine type received
  is 'X' and local is 'Y'``);
* every section's idstr and instance must be registered on the target (``Unknown savevm
  section or instance``); the dump lists device classes by vmsd name only, not the sections
  registered outside device classes (``slirp``, ``cpu``, ``timer``...) nor those a device
  registers at realize time: a device section whose vmsd the dump lacks gets a warning;
* a section's version must not exceed the target's ``version_id`` (``savevm: unsupported
  version``) nor be below its ``minimum_version_id``;
* the target then reads the fields its description has for that version; when it reads a
  different layout than the source wrote (the source's layout is in the stream's own VM
  description), it stops at the wrong byte (``Missing section footer``): see
  :mod:`migstream.compare.align`;
* a subsection the target does not know, or of a newer version, fails the load.

What a dump cannot show is listed in :data:`LIMITS` and printed with every answer.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from migstream.compare.align import FieldAligner, Finding, as_int, as_list
from migstream.compare.dump import JsonObj, VmstateDump
from migstream.containers import open_source
from migstream.errors import DescriptionError
from migstream.stream.configuration import read_configuration
from migstream.wire.constants import RecordType
from migstream.wire.reader import Reader

if TYPE_CHECKING:
    from migstream.api import Stream
    from migstream.stream.model import DeviceState

_ELEMENT = re.compile(r"\[\d+\]")

LIMITS = (
    "instance ids of sections that are not device classes (e.g. 'slirp' of each -netdev user, "
    "'timer', 'cpu'): they come from the target's command line and code, not from the dump",
    "machine-type compat properties (e.g. virtio queue sizes, subsection switches): they change "
    "what the target expects but are not in the dump",
    "the devices the target is started with: the dump lists every device class, not the instantiated ones",
    "fields guarded by a test function (field_exists): whether the target reads them is decided at load time",
    "values the target rejects after reading them (post_load checks, *_EQUAL fields) and target crashes",
    "whether the target can start at all with the given machine type and devices",
)


@dataclass(frozen=True)
class CheckResult:
    findings: tuple[Finding, ...]
    unchecked: tuple[str, ...]  # sections the dump says nothing about

    @property
    def verdict(self) -> str:
        return "fails" if any(f.severity == "error" for f in self.findings) else "loads"

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "findings": [f.to_json() for f in self.findings],
            "unchecked_sections": list(self.unchecked),
            "limits": list(LIMITS),
        }


def check_stream(stream: Stream, dump: VmstateDump) -> CheckResult:
    """Every finding about loading ``stream`` on the QEMU that wrote ``dump``."""
    findings: list[Finding] = []
    unchecked: list[str] = []
    conf = next((r for r in stream.records if r.type == "CONFIGURATION"), None)
    if stream.machine and dump.machine and stream.machine != dump.machine:
        findings.append(_machine_finding(stream.machine, dump.machine, conf.offset if conf else None))
    vmdesc = _vmdesc_entries(stream.vmdesc)
    devices = {(d.name, d.instance_id): d for d in stream.devices}
    for sec in stream.sections:
        offset = sec.record_offsets[0] if sec.record_offsets else None
        entry = vmdesc.get((sec.name, sec.instance_id))
        vmsd = (
            str(entry.get("vmsd_name")) if entry and entry.get("vmsd_name") else sec.name.rsplit("/", 1)[-1]
        )
        candidates = dump.descriptions(vmsd)
        checker = FieldAligner(sec.name, sec.instance_id, offset)
        if not candidates:
            if "/" in sec.name and sec.kind == "device":
                checker.add("warning", None, f"the dump has no device with vmstate '{vmsd}'")
            else:
                unchecked.append(f"{sec.name} {sec.instance_id}")
                if sec.instance_id > 0 and sec.kind == "device":
                    checker.add(
                        "warning",
                        None,
                        f"instance {sec.instance_id}: the target must register as many '{sec.name}' "
                        "sections with the same numbering; a dump does not show it",
                    )
        else:
            # Several device classes may register different descriptions under one name
            # (e.g. 'vga'): the section is one of them; take the one that fits best.
            tries = []
            for desc in candidates:
                one = FieldAligner(sec.name, sec.instance_id, offset)
                if one.versions("section", None, sec.version_id, desc) and entry is not None:
                    one.fields(as_list(entry.get("fields")), desc, sec.version_id, sec.name)
                    one.subsections(entry, desc, sec.name)
                tries.append(one)
            checker = min(tries, key=lambda c: (c.errors, len(c.findings)))
        findings.extend(_at_fields(checker.findings, devices.get((sec.name, sec.instance_id))))
    if stream.truncated is not None:
        findings.append(
            Finding(
                "error",
                "stream",
                0,
                stream.truncated.offset,
                None,
                f"the stream ends early; any target fails there: {stream.truncated}",
            )
        )
    if stream.vmdesc is None:
        unchecked.append("(field layouts: the stream has no VM description)")
    return CheckResult(tuple(findings), tuple(unchecked))


def check_file(
    path: str | os.PathLike[str], dump: VmstateDump, desc: str | os.PathLike[str] | None = None
) -> CheckResult:
    """:func:`check_stream` on a stream file; a stream that cannot be parsed (no description and
    no section footers) is checked for its machine type only, and says so."""
    from migstream.api import open as open_stream

    try:
        with open_stream(path, desc=desc) as stream:
            return check_stream(stream, dump)
    except DescriptionError as exc:
        why, where = str(exc), exc.offset
    with open_source(path) as src:
        r = Reader(src.buffer)
        r.take(8)
        machine = None
        if r.remaining > 5 and r.peek_u8() == RecordType.CONFIGURATION:
            r.u8()
            machine = read_configuration(r, 8, None).machine
    findings = []
    if machine and dump.machine and machine != dump.machine:
        findings.append(_machine_finding(machine, dump.machine, 8))
    note = Finding("warning", "stream", 0, where, None, f"only the machine type was checked: {why}")
    return CheckResult((*findings, note), ("(every section: the stream cannot be parsed)",))


def _at_fields(findings: list[Finding], dev: DeviceState | None) -> list[Finding]:
    """Findings about a field get the stream offset of that field when the section was decoded."""
    if dev is None or dev.state is None or not any(f.field for f in findings):
        return findings
    prefix = f"{dev.name}[{dev.instance_id}]"
    where: list[tuple[str, int]] = []
    for path, leaf in dev.walk():
        where.append((dev.name + _ELEMENT.sub("", path[len(prefix) :]), leaf.offset))
    out = []
    for f in findings:
        if f.field:
            key = _ELEMENT.sub("", f.field)
            hit = next((o for p, o in where if p == key or p.startswith((key + ".", key + "["))), None)
            if hit is not None:
                f = dataclasses.replace(f, offset=hit)
        out.append(f)
    return out


def _machine_finding(machine: str, target: str, offset: int | None) -> Finding:
    return Finding(
        "error",
        "configuration",
        0,
        offset,
        None,
        f"machine type received is '{machine}' and the target's is '{target}'",
    )


def _vmdesc_entries(vmdesc: Mapping[str, Any] | None) -> dict[tuple[str, int], JsonObj]:
    out: dict[tuple[str, int], JsonObj] = {}
    if vmdesc is None:
        return out
    for dev in as_list(vmdesc.get("devices")):
        if isinstance(dev, Mapping) and isinstance(dev.get("name"), str):
            out.setdefault((dev["name"], as_int(dev.get("instance_id")) or 0), dev)
    return out
