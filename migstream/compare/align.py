"""Pairing the fields a writer sent with the fields a reader's description reads.

QEMU: migration/vmstate.c (vmstate_load_state, vmstate_subsection_load, vmsd_desc_field_start)

The writer's side is a stream's VM description (what was sent, with array lengths) or a
dump description seen as a writer (:func:`migstream.compare.checkdesc.as_written`); the
reader's side is a ``-dump-vmstate`` description (field names, versions, in-memory element
sizes, ``field_exists`` for fields guarded by a test).  A stream's description names the
k-th of several same-named fields ``NAME[k]``; elements of a struct array repeat the name.
Renamed fields of the same size, ``unused`` padding standing for several fields (and the
reverse), and guarded fields that may read what the writer sent under another name are
accepted; anything else that leaves bytes unread or reads bytes never sent is an error.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from migstream.compare.dump import JsonObj

_INDEX = re.compile(r"(\[\d+\])+$")

#: Deepest nesting of structs and subsections compared (real descriptions stay under 10).
MAX_DEPTH = 64


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


class FieldAligner:
    """Pairs the fields a writer sent with those a reader reads, and records what does not fit."""

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
        top = as_int(desc.get("version_id"))
        low = as_int(desc.get("minimum_version_id"))
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
            and (as_int(s.get("size")) != 0 or s.get("struct") or s.get("elements_unknown"))
        ]
        wanted = [(n, t) for n, t in reader_names(tgt) if (as_int(t.get("version_id")) or 0) <= version]
        later = [n for n, _t in wanted]
        src = _flatten_moved(src, later)
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
                start = i
                moved = self.renamed(src, i, t, later[k + 1 :], fpath) if i < len(src) else None
                if moved is not None:
                    i = moved
                    if all(e.get("optional") for e in src[start:i]):
                        passed.append(sum(_total(e) for e in src[start:i]))
                elif not isinstance(t.get("Description"), Mapping) and as_int(t.get("size")):
                    passed.append(as_int(t.get("size")) or 0)
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
            elif isinstance(t.get("Description"), Mapping) or not as_int(t.get("size")):
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
        inner = t.get("Description")
        prefix = f"{t.get('field')}."
        if isinstance(inner, Mapping) and str(src[i].get("name", "")).startswith(prefix):
            # Fields written flat ("core.a", "core.b") that the reader now reads as a struct.
            j = i
            while j < len(src) and str(src[j].get("name", "")).startswith(prefix):
                j += 1
            moved = [dict(e, name=str(e["name"])[len(prefix) :]) for e in src[i:j]]
            self.fields(moved, inner, as_int(inner.get("version_id")) or 0, path)
            return j
        tsize = as_int(t.get("size")) or 0
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
            if path.count(".") > MAX_DEPTH:
                self.add("warning", path, f"nested deeper than {MAX_DEPTH} levels: not compared")
                return
            # A nested struct is read with the target's own version of it.
            tver = as_int(tdesc.get("version_id")) or 0
            self.fields(as_list(sub.get("fields")), tdesc, tver, path)
            self.subsections(sub, tdesc, path)
            return
        if isinstance(sub, Mapping) != isinstance(tdesc, Mapping):
            self.add("warning", path, f"field '{t.get('field')}' is a struct on one side only")
            return
        tsize = as_int(t.get("size"))
        if tsize and not _compatible(s, t):
            self.add(
                "error",
                path,
                f"field size differs: the source wrote {_total(s)} bytes, the target reads {tsize}",
            )

    def subsections(self, src: JsonObj, tgt: JsonObj, path: str) -> None:
        if path.count(".") > MAX_DEPTH:
            return
        known = {str(d.get("name")): d for d in as_list(tgt.get("Subsections")) if isinstance(d, Mapping)}
        for sub in as_list(src.get("subsections")):
            if not isinstance(sub, Mapping):
                continue
            name = str(sub.get("vmsd_name", ""))
            spath = f"{path}.{name}"
            tdesc = known.get(name)
            if tdesc is None:
                if self.optional_subsections:
                    self.add("warning", spath, f"the reader has no subsection '{name}' (fails if it is sent)")
                else:
                    self.add("error", spath, f"the target has no subsection '{name}'")
                continue
            version = as_int(sub.get("version")) or 0
            before = len(self.findings)
            ok = self.versions(f"subsection '{name}'", spath, version, tdesc)
            if self.optional_subsections:
                self.findings[before:] = [
                    dataclasses.replace(f, severity="warning") for f in self.findings[before:]
                ]
            if ok:
                self.fields(as_list(sub.get("fields")), tdesc, version, spath)
                self.subsections(sub, tdesc, spath)


def reader_names(desc: JsonObj) -> list[tuple[str, JsonObj]]:
    """Each target field with the name a stream description gives it (``NAME[k]`` for repeats)."""
    fields = [f for f in as_list(desc.get("Fields")) if isinstance(f, Mapping)]
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


def _flatten_moved(src: Sequence[JsonObj], names: Sequence[str]) -> list[JsonObj]:
    """A written struct whose fields the reader reads flat (``core`` -> ``core.a``, ``core.b``)
    is replaced by its fields under those names."""
    out: list[JsonObj] = []
    for s in src:
        sub = s.get("struct")
        name = str(s.get("name", ""))
        if isinstance(sub, Mapping) and name not in names and any(n.startswith(name + ".") for n in names):
            out.extend(dict(f, name=f"{name}.{f.get('name')}") for f in as_list(sub.get("fields")))
        else:
            out.append(s)
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
    size = sum(as_int(s.get("size")) or 0 for s in entries)
    return f"the source wrote {size} bytes the target does not read ({where}): {names}{more}"


def _base(s: JsonObj) -> str:
    return _INDEX.sub("", str(s.get("name", "")))


def _compatible(s: JsonObj, t: JsonObj) -> bool:
    """Same wire layout under another name: plain fields of one size (element or whole), or structs."""
    if isinstance(s.get("struct"), Mapping) or isinstance(t.get("Description"), Mapping):
        return isinstance(s.get("struct"), Mapping) and isinstance(t.get("Description"), Mapping)
    tsize = as_int(t.get("size")) or 0
    total = _total(s)
    if tsize in (as_int(s.get("size")), total):
        return True
    unused = "unused" in (_base(s), t.get("field"))
    if s.get("elements_unknown") and unused and tsize and total:
        return tsize % total == 0 or total % tsize == 0  # a dump does not say how many elements
    return unused and tsize > 0 and total % tsize == 0


def _total(s: JsonObj) -> int:
    """Bytes an entry of a stream description stands for."""
    return (as_int(s.get("size")) or 0) * (as_int(s.get("array_len")) or 1)


def _subset_sum(sizes: Sequence[int], want: int) -> bool:
    reach = {0}
    for n in sizes[:64]:
        reach |= {r + n for r in reach if r + n <= want}
    return want in reach


def as_int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def as_list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []
