"""Static comparison of two ``-dump-vmstate`` files (an older and a newer QEMU, or two machines).

QEMU: migration/savevm.c (dump_vmstate_json_to_file)
QEMU: migration/vmstate.c (vmstate_load_state, vmstate_subsection_load)

For every vmstate description (matched by its vmsd name, and by device class where
several classes share one name) the OLD side plays the writer and the NEW side the
reader, exactly as :mod:`migstream.compare.check` pairs a stream with a dump: fields are
paired by name (``NAME[k]`` for the k-th of repeated names), renamed fields of the same
size and ``unused`` padding are accepted, guarded fields may absorb what the writer sent
under another name.  Then the other direction is summarised (version bumps a NEW writer
makes that the OLD reader refuses).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from migstream.compare.align import FieldAligner, Finding, as_int, as_list, reader_names
from migstream.compare.dump import JsonObj, VmstateDump


@dataclass(frozen=True)
class DescDiff:
    old_machine: str | None
    new_machine: str | None
    added: tuple[str, ...]  # vmsd names only in NEW
    removed: tuple[str, ...]  # vmsd names only in OLD
    changes: tuple[dict[str, Any], ...]  # one per vmsd that changed: versions, fields, subsections
    findings: tuple[Finding, ...]

    @property
    def breaking(self) -> bool:
        return any(f.severity == "error" for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": {"old": self.old_machine, "new": self.new_machine},
            "sections": {"added": list(self.added), "removed": list(self.removed)},
            "changes": list(self.changes),
            "findings": [f.to_json() for f in self.findings],
            "verdict": "breaking" if self.breaking else "compatible",
        }


def as_written(desc: JsonObj, version: int | None = None) -> dict[str, Any]:
    """A dump description seen as a writer at ``version`` (default: its own), in the shape of
    a stream's VM description entry (``fields`` with ``name``/``size``/``struct``, ``subsections``)."""
    ver = as_int(desc.get("version_id")) or 0 if version is None else version
    fields: list[dict[str, Any]] = []
    for name, f in reader_names(desc):
        if (as_int(f.get("version_id")) or 0) > ver:
            continue
        inner = f.get("Description")
        entry: dict[str, Any] = {
            "name": name,
            "size": as_int(f.get("size")) or 0,
            "optional": bool(f.get("field_exists")),
            "elements_unknown": True,
        }
        if isinstance(inner, Mapping):
            entry["struct"] = as_written(inner)
        fields.append(entry)
    subs = [as_written(s) | {"vmsd_name": s.get("name")} for s in as_list(desc.get("Subsections"))]
    return {"vmsd_name": desc.get("name"), "version": ver, "fields": fields, "subsections": subs}


def _summary(old: JsonObj, new: JsonObj) -> dict[str, Any]:
    """Plain differences of one description: versions, field names, subsection names."""
    out: dict[str, Any] = {}
    for key in ("version_id", "minimum_version_id"):
        if old.get(key) != new.get(key):
            out[key] = [old.get(key), new.get(key)]
    fo = [n for n, _f in reader_names(old)]
    fn = [n for n, _f in reader_names(new)]
    if fo != fn:
        out["fields_removed"] = [n for n in fo if n not in fn]
        out["fields_added"] = [n for n in fn if n not in fo]
    so = {str(s.get("name")) for s in as_list(old.get("Subsections")) if isinstance(s, Mapping)}
    sn = {str(s.get("name")) for s in as_list(new.get("Subsections")) if isinstance(s, Mapping)}
    if so != sn:
        out["subsections_removed"] = sorted(so - sn)
        out["subsections_added"] = sorted(sn - so)
    return out


def _pairs(old: VmstateDump, new: VmstateDump) -> list[tuple[str, JsonObj, JsonObj]]:
    """(vmsd name, old description, new description) for every vmsd both dumps have."""
    out: list[tuple[str, JsonObj, JsonObj]] = []
    for name, olds in old.by_vmsd.items():
        news = new.by_vmsd.get(name, ())
        if not news:
            continue
        if len(olds) == 1 and len(news) == 1:
            out.append((name, olds[0], news[0]))
            continue
        # Several classes share the name: pair by class, each class's description once.
        seen = set()
        for cls, entry in old.classes.items():
            od = entry.get("Description")
            nd = new.classes.get(cls, {}).get("Description")
            if isinstance(od, Mapping) and isinstance(nd, Mapping) and od.get("name") == name:
                key = (id(od), id(nd))
                if key not in seen and (od, nd) not in [(p[1], p[2]) for p in out]:
                    seen.add(key)
                    out.append((name, od, nd))
    return out


def check_desc(old: VmstateDump, new: VmstateDump) -> DescDiff:
    """What changes from ``old`` to ``new``, and what breaks loading OLD streams in NEW."""
    findings: list[Finding] = []
    changes: list[dict[str, Any]] = []
    if old.machine != new.machine:
        findings.append(
            Finding(
                "warning",
                "configuration",
                0,
                None,
                None,
                f"machine '{old.machine}' -> '{new.machine}': a stream carries its machine name and "
                "loads only on the same one",
            )
        )
    for name, od, nd in _pairs(old, new):
        summary = _summary(od, nd)
        checker = FieldAligner(name, 0, None, optional_subsections=True)
        over = as_int(od.get("version_id")) or 0
        # OLD -> NEW: NEW reads what OLD writes at OLD's version.
        if checker.versions("old -> new: section", None, over, nd):
            written = as_written(od)
            checker.fields(written["fields"], nd, over, name)
            checker.subsections(written | {"subsections": as_list(written["subsections"])}, nd, name)
        # NEW -> OLD: OLD refuses NEW's version when it is higher.
        nver = as_int(nd.get("version_id")) or 0
        if nver > over:
            checker.add("warning", None, f"new -> old: NEW writes version {nver}, OLD accepts up to {over}")
        if summary or checker.findings:
            changes.append({"section": name, **summary})
        findings.extend(checker.findings)
    added = tuple(sorted(set(new.by_vmsd) - set(old.by_vmsd)))
    removed = tuple(sorted(set(old.by_vmsd) - set(new.by_vmsd)))
    for name in removed:
        findings.append(
            Finding(
                "warning",
                name,
                0,
                None,
                None,
                "NEW has no device with this vmstate: its sections cannot load",
            )
        )
    return DescDiff(old.machine, new.machine, added, removed, tuple(changes), tuple(findings))
