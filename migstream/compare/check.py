"""Predict whether a target QEMU loads a stream, from the target's ``-dump-vmstate``.

QEMU: migration/savevm.c (qemu_loadvm_section_start_full, check_section_footer, vmstate_check_machine)
QEMU: migration/vmstate.c (vmstate_load_state, vmstate_subsection_load)

What the target does, and what is checked here, in load order:

* the configuration record's machine name must equal the target's (``Machine type received
  is 'X' and local is 'Y'``);
* every section's idstr and instance must be registered on the target (``Unknown savevm
  section or instance``); the dump lists device classes by vmsd name, so a section of a
  device (a qdev path ``0000:00:02.0/NAME``) whose vmsd the dump lacks cannot load;
* a section's version must not exceed the target's ``version_id`` (``savevm: unsupported
  version``) nor be below its ``minimum_version_id``;
* the target then reads the fields its description has for that version; when it reads a
  different layout than the source wrote (the source's layout is in the stream's own VM
  description), it stops at the wrong byte (``Missing section footer``);
* a subsection the target does not know, or of a newer version, fails the load.

What a dump cannot show is listed in :data:`LIMITS` and printed with every answer.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from migstream.compare.dump import JsonObj, VmstateDump
from migstream.containers import open_source
from migstream.errors import DescriptionError
from migstream.stream.configuration import read_configuration
from migstream.wire.constants import RecordType
from migstream.wire.reader import Reader

if TYPE_CHECKING:
    from migstream.api import Stream

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

_INDEX = re.compile(r"(\[\d+\])+$")


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" | "warning"
    section: str
    instance: int
    offset: int | None
    field: str | None
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "section": self.section,
            "instance": self.instance,
            "offset": self.offset,
            "field": self.field,
            "message": self.message,
        }


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


class _Checker:
    def __init__(
        self, section: str, instance: int, offset: int | None, optional_subsections: bool = False
    ) -> None:
        self.optional_subsections = optional_subsections  # a writer may or may not send them
        self.section = section
        self.instance = instance
        self.offset = offset
        self.findings: list[Finding] = []
        self.rest: int | None = None  # bytes of a source 'unused' entry not read yet

    @property
    def errors(self) -> int:
        return sum(f.severity == "error" for f in self.findings)

    def add(self, severity: str, path: str | None, message: str) -> None:
        self.findings.append(Finding(severity, self.section, self.instance, self.offset, path, message))

    def versions(self, what: str, path: str | None, version: int, desc: JsonObj) -> bool:
        """False (and an error) when the target cannot load ``version`` of ``desc``."""
        top = _int(desc.get("version_id"))
        low = _int(desc.get("minimum_version_id"))
        if top is not None and version > top:
            self.add("error", path, f"{what} version {version} is newer than the target's {top}")
            return False
        if low is not None and version < low:
            self.add("error", path, f"{what} version {version} is older than the target's minimum {low}")
            return False
        return True

    def fields(self, src: Sequence[JsonObj], tgt: JsonObj, version: int, path: str) -> None:
        """Align the fields the source wrote with those the target reads at ``version``.

        A stream's description names the k-th of several same-named fields ``NAME[k]``
        (the elements of a struct array repeat the name): that is how fields of the two
        sides are paired.
        """
        src = [
            s
            for s in src
            if isinstance(s, Mapping)
            and (_int(s.get("size")) != 0 or s.get("struct") or s.get("elements_unknown"))
        ]
        wanted = [(n, t) for n, t in _target_names(tgt) if (_int(t.get("version_id")) or 0) <= version]
        later = [n for n, _t in wanted]
        i = 0
        passed: list[int] = []  # sizes of guarded target fields skipped since the last unread run
        for k, (name, t) in enumerate(wanted):
            fpath = f"{path}.{t.get('field')}"
            n = _run(src, i, name)
            if n:
                for entry in src[i : i + n]:
                    self.one(entry, t, fpath)
                if t.get("field_exists") and all(e.get("optional") for e in src[i : i + n]):
                    # Both sides guard it: when the writer skipped it, the reader's test may
                    # still read the bytes that follow.
                    passed.append(sum(_total(e) for e in src[i : i + n]))
                i += n
                continue
            if t.get("field_exists"):
                # Guarded by a test: skipped, unless it reads what the source wrote under another name.
                if (
                    i < len(src)
                    and not any(_run(src, i, m) for m in later[k + 1 :])
                    and _compatible(src[i], t)
                ):
                    self.one(src[i], t, fpath)
                    if src[i].get("optional"):
                        passed.append(_total(src[i]))
                    i += 1
                elif not isinstance(t.get("Description"), Mapping) and _int(t.get("size")):
                    passed.append(_int(t.get("size")) or 0)
                continue
            ahead = next((j for j in range(i + 1, len(src)) if _run(src, j, name)), None)
            if ahead is not None:
                self.unread(src[i:ahead], passed, fpath, f"before '{t.get('field')}'")
                i = ahead
                n = _run(src, i, name)
                for entry in src[i : i + n]:
                    self.one(entry, t, fpath)
                i += n
                passed = []
            elif (moved := self.renamed(src, i, t, later[k + 1 :], fpath)) is not None:
                i = moved
            elif isinstance(t.get("Description"), Mapping) or not _int(t.get("size")):
                self.add(
                    "warning",
                    fpath,
                    f"the target reads '{t.get('field')}' (version {t.get('version_id')}), not in the "
                    "stream's description: fine if it is empty (an array of structs or a variable buffer), "
                    "else the load fails",
                )
            else:
                self.add(
                    "error",
                    fpath,
                    f"the target reads '{t.get('field')}' ({t.get('size')} bytes, version "
                    f"{t.get('version_id')}), which the source did not write",
                )
        if i < len(src):
            self.unread(src[i:], passed, f"{path}.{_base(src[i])}", "at the end")

    def renamed(
        self, src: Sequence[JsonObj], i: int, t: JsonObj, later: Sequence[str], path: str
    ) -> int | None:
        """Where the source resumes when ``t`` reads what it wrote under another name, else None.

        One field of the same size; or ``unused`` padding that stands for several fields
        (or the other way round: fields that stand for what was padding)."""

        def free(j: int) -> bool:
            return j < len(src) and not any(_run(src, j, m) for m in later)

        if not free(i):
            return None
        tsize = _int(t.get("size")) or 0
        plain = not isinstance(t.get("Description"), Mapping) and tsize > 0
        if plain and t.get("field") == "unused" and self.rest is None:
            j, total = i, 0
            while free(j) and not isinstance(src[j].get("struct"), Mapping) and total < tsize:
                total += _total(src[j])
                j += 1
            if total == tsize:
                return j
        whole = bool(later) and self.rest is None and _run(src, i + 1, later[0]) > 0
        if (
            plain
            and _base(src[i]) == "unused"
            and not whole
            and (self.rest is not None or _total(src[i]) > tsize)
        ):
            left = (_total(src[i]) if self.rest is None else self.rest) - tsize
            if left < 0:
                return None
            self.rest = left or None
            return i if left else i + 1
        if self.rest is None and _compatible(src[i], t):
            self.one(src[i], t, path)
            return i + 1
        return None

    def unread(self, entries: Sequence[JsonObj], passed: Sequence[int], path: str, where: str) -> None:
        """Source fields no target field of that name reads: fine only if guarded target fields
        skipped there can read exactly as many bytes (the same data under other names)."""
        size = sum(_total(s) for s in entries)
        if all(s.get("optional") for s in entries):
            self.add("warning", path, _skipped(entries, where) + "; the writer sends them only when needed")
        elif any(isinstance(s.get("struct"), Mapping) for s in entries) or not _subset_sum(passed, size):
            self.add("error", path, _skipped(entries, where))
        else:
            maybe = "; guarded target fields of the same size may read them"
            self.add("warning", path, _skipped(entries, where) + maybe)

    def one(self, s: JsonObj, t: JsonObj, path: str) -> None:
        sub = s.get("struct")
        tdesc = t.get("Description")
        if isinstance(sub, Mapping) and isinstance(tdesc, Mapping):
            # A nested struct is read with the target's own version of it.
            tver = _int(tdesc.get("version_id")) or 0
            self.fields(_list(sub.get("fields")), tdesc, tver, path)
            self.subsections(sub, tdesc, path)
            return
        if isinstance(sub, Mapping) != isinstance(tdesc, Mapping):
            self.add("warning", path, f"field '{t.get('field')}' is a struct on one side only")
            return
        tsize = _int(t.get("size"))
        if tsize and not _compatible(s, t) and not _size_is_memory(s):
            self.add(
                "error",
                path,
                f"field size differs: the source wrote {_total(s)} bytes, the target reads {tsize}",
            )

    def subsections(self, src: JsonObj, tgt: JsonObj, path: str) -> None:
        known = {str(d.get("name")): d for d in _list(tgt.get("Subsections")) if isinstance(d, Mapping)}
        for sub in _list(src.get("subsections")):
            if not isinstance(sub, Mapping):
                continue
            name = str(sub.get("vmsd_name", ""))
            spath = f"{path}/{name}"
            tdesc = known.get(name)
            if tdesc is None:
                if self.optional_subsections:
                    self.add("warning", spath, f"the reader has no subsection '{name}' (fails if it is sent)")
                else:
                    self.add("error", spath, f"the target has no subsection '{name}'")
                continue
            version = _int(sub.get("version")) or 0
            before = len(self.findings)
            ok = self.versions(f"subsection '{name}'", spath, version, tdesc)
            if self.optional_subsections:
                self.findings[before:] = [
                    dataclasses.replace(f, severity="warning") for f in self.findings[before:]
                ]
            if ok:
                self.fields(_list(sub.get("fields")), tdesc, version, spath)
                self.subsections(sub, tdesc, spath)


def check_stream(stream: Stream, dump: VmstateDump) -> CheckResult:
    """Every finding about loading ``stream`` on the QEMU that wrote ``dump``."""
    findings: list[Finding] = []
    unchecked: list[str] = []
    conf = next((r for r in stream.records if r.type == "CONFIGURATION"), None)
    if stream.machine and dump.machine and stream.machine != dump.machine:
        findings.append(_machine_finding(stream.machine, dump.machine, conf.offset if conf else None))
    vmdesc = _vmdesc_entries(stream.vmdesc)
    for sec in stream.sections:
        offset = sec.record_offsets[0] if sec.record_offsets else None
        entry = vmdesc.get((sec.name, sec.instance_id))
        vmsd = (
            str(entry.get("vmsd_name")) if entry and entry.get("vmsd_name") else sec.name.rsplit("/", 1)[-1]
        )
        candidates = dump.descriptions(vmsd)
        checker = _Checker(sec.name, sec.instance_id, offset)
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
                one = _Checker(sec.name, sec.instance_id, offset)
                if one.versions("section", None, sec.version_id, desc) and entry is not None:
                    one.fields(_list(entry.get("fields")), desc, sec.version_id, sec.name)
                    one.subsections(entry, desc, sec.name)
                tries.append(one)
            checker = min(tries, key=lambda c: (c.errors, len(c.findings)))
        findings.extend(checker.findings)
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
    for dev in _list(vmdesc.get("devices")):
        if isinstance(dev, Mapping) and isinstance(dev.get("name"), str):
            out.setdefault((dev["name"], _int(dev.get("instance_id")) or 0), dev)
    return out


def _target_names(desc: JsonObj) -> list[tuple[str, JsonObj]]:
    """Each target field with the name a stream description gives it (``NAME[k]`` for repeats)."""
    fields = [f for f in _list(desc.get("Fields")) if isinstance(f, Mapping)]
    count: dict[str, int] = {}
    for f in fields:
        count[str(f.get("field"))] = count.get(str(f.get("field")), 0) + 1
    seen: dict[str, int] = {}
    out = []
    for f in fields:
        name = str(f.get("field"))
        k = seen.get(name, 0)
        seen[name] = k + 1
        out.append((f"{name}[{k}]" if count[name] > 1 else name, f))
    return out


def _run(src: Sequence[JsonObj], i: int, name: str) -> int:
    """How many entries from ``src[i]`` on are ``name`` (elements of a struct array repeat it)."""
    n = 0
    while i + n < len(src) and str(src[i + n].get("name", "")) == name:
        n += 1
    return n


def _skipped(entries: Sequence[JsonObj], where: str) -> str:
    names = ", ".join(str(s.get("name")) for s in entries[:4])
    more = "" if len(entries) <= 4 else f" and {len(entries) - 4} more"
    size = sum(_int(s.get("size")) or 0 for s in entries)
    return f"the source wrote {size} bytes the target does not read ({where}): {names}{more}"


def _base(s: JsonObj) -> str:
    return _INDEX.sub("", str(s.get("name", "")))


def _compatible(s: JsonObj, t: JsonObj) -> bool:
    """Same wire layout under another name: plain fields of one size (element or whole), or structs."""
    if isinstance(s.get("struct"), Mapping) or isinstance(t.get("Description"), Mapping):
        return isinstance(s.get("struct"), Mapping) and isinstance(t.get("Description"), Mapping)
    tsize = _int(t.get("size")) or 0
    total = _total(s)
    if tsize in (_int(s.get("size")), total):
        return True
    unused = "unused" in (_base(s), t.get("field"))
    if s.get("elements_unknown") and unused and tsize and total:
        return tsize % total == 0 or total % tsize == 0  # a dump does not say how many elements
    return unused and tsize > 0 and total % tsize == 0


def _total(s: JsonObj) -> int:
    """Bytes an entry of a stream description stands for."""
    return (_int(s.get("size")) or 0) * (_int(s.get("array_len")) or 1)


def _subset_sum(sizes: Sequence[int], want: int) -> bool:
    reach = {0}
    for n in sizes[:64]:
        reach |= {r + n for r in reach if r + n <= want}
    return want in reach


def _size_is_memory(s: JsonObj) -> bool:
    """The dump prints the in-memory size, which differs from the wire size for a few types."""
    return str(s.get("type")) in ("timer", "unused_buffer", "buffer", "pci config", "pci irq state")


def _tsize(t: JsonObj) -> str:
    return f"{t.get('size')} bytes" if not isinstance(t.get("Description"), Mapping) else "a struct"


def _ssize(s: JsonObj) -> str:
    return f"{s.get('size')} bytes" if not isinstance(s.get("struct"), Mapping) else "a struct"


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []
