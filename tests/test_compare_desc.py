"""``check-desc`` and the field pairing on small hand-written ``-dump-vmstate`` descriptions."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from migstream.compare.checkdesc import check_desc
from migstream.compare.dump import load_dump, parse_dump
from migstream.errors import DescriptionError, MigstreamError


def field(name: str, size: int, version: int = 0, guarded: bool = False, **extra: Any) -> dict[str, Any]:
    return {"field": name, "version_id": version, "field_exists": guarded, "size": size, **extra}


def vmsd(name: str, fields: list[dict[str, Any]], version: int = 1, minimum: int = 1, subs: Any = ()) -> Any:
    desc: dict[str, Any] = {
        "name": name,
        "version_id": version,
        "minimum_version_id": minimum,
        "Fields": fields,
    }
    if subs:
        desc["Subsections"] = list(subs)
    return desc


def dump(*descs: Any, machine: str = "pc-i440fx-9.0") -> Any:
    data: dict[str, Any] = {"vmschkmachine": {"Name": machine}}
    for d in descs:
        data[f"{d['name']}-class"] = {
            "Name": d["name"],
            "version_id": d["version_id"],
            "minimum_version_id": d["minimum_version_id"],
            "Description": d,
        }
    return parse_dump(data)


BASE = vmsd("dev", [field("a", 4), field("b", 2), field("c", 8)])


def errors(old: Any, new: Any) -> list[str]:
    return [
        f"{f.field}: {f.message}" for f in check_desc(dump(old), dump(new)).findings if f.severity == "error"
    ]


def test_identical_is_clean() -> None:
    res = check_desc(dump(BASE), dump(BASE))
    assert not res.findings and not res.changes and not res.breaking


def test_renamed_field_of_the_same_size() -> None:
    new = vmsd("dev", [field("a", 4), field("b_renamed", 2), field("c", 8)])
    assert errors(BASE, new) == []
    assert check_desc(dump(BASE), dump(new)).to_json()["changes"] == [
        {"section": "dev", "fields_removed": ["b"], "fields_added": ["b_renamed"]}
    ]


def test_field_that_changed_size_breaks() -> None:
    new = vmsd("dev", [field("a", 4), field("b", 4), field("c", 8)])
    (err,) = errors(BASE, new)
    assert err.startswith("dev.b: field size differs")


def test_new_unconditional_field_breaks_guarded_does_not() -> None:
    added = vmsd("dev", [field("a", 4), field("b", 2), field("x", 1), field("c", 8)])
    assert len(errors(BASE, added)) >= 1
    guarded = vmsd("dev", [field("a", 4), field("b", 2), field("x", 1, guarded=True), field("c", 8)])
    assert errors(BASE, guarded) == []
    versioned = vmsd(
        "dev", [field("a", 4), field("b", 2), field("c", 8), field("x", 1, version=2)], version=2
    )
    assert errors(BASE, versioned) == []  # read only from version 2 streams


def test_removed_field_breaks() -> None:
    new = vmsd("dev", [field("a", 4), field("c", 8)])
    assert any("does not read" in e for e in errors(BASE, new))


def test_fields_turned_into_padding_and_back() -> None:
    padded = vmsd("dev", [field("a", 4), field("unused", 2), field("c", 8)])
    assert errors(BASE, padded) == []
    assert errors(padded, BASE) == []
    wide = vmsd("dev", [field("unused", 6), field("c", 8)])  # a and b became one 6-byte pad
    assert errors(BASE, wide) == []
    assert errors(wide, BASE) == []


def test_fields_moved_into_a_struct_and_back() -> None:
    flat = vmsd("dev", [field("core.a", 4), field("core.b", 2), field("c", 8)])
    nested = vmsd(
        "dev", [field("core", 64, Description=vmsd("core", [field("a", 4), field("b", 2)])), field("c", 8)]
    )
    assert errors(flat, nested) == []
    assert errors(nested, flat) == []
    broken = copy.deepcopy(nested)
    broken["Fields"][0]["Description"]["Fields"][1]["size"] = 4
    assert errors(flat, broken)


def test_repeated_names_pair_by_occurrence() -> None:
    old = vmsd("dev", [field("x", 4), field("a", 4), field("x", 2)])
    new = vmsd("dev", [field("x", 4), field("a", 4), field("x", 2)])
    assert errors(old, new) == []
    grown = vmsd("dev", [field("x", 4), field("a", 4), field("x", 4)])
    assert [e.split(":")[0] for e in errors(old, grown)] == ["dev.x"]


def test_versions_and_subsections() -> None:
    bumped = copy.deepcopy(BASE) | {"version_id": 2, "minimum_version_id": 2}
    res = check_desc(dump(BASE), dump(bumped))
    assert [f.message for f in res.findings if f.severity == "error"] == [
        "old -> new: section version 1 is older than the target's minimum 2"
    ]
    newer = copy.deepcopy(BASE) | {"version_id": 2}
    res = check_desc(dump(BASE), dump(newer))
    assert not res.breaking
    assert any("NEW writes version 2, OLD accepts up to 1" in f.message for f in res.findings)
    with_sub = vmsd("dev", BASE["Fields"], subs=[vmsd("dev/extra", [field("e", 4)])])
    res = check_desc(dump(with_sub), dump(BASE))
    assert not res.breaking  # sent only when needed: a warning
    assert any("no subsection 'dev/extra'" in f.message for f in res.findings)


def test_sections_added_removed_and_machine() -> None:
    other = vmsd("other", [field("z", 1)])
    res = check_desc(dump(BASE, other), dump(BASE, machine="pc-i440fx-9.1"))
    doc = res.to_json()
    assert doc["sections"] == {"added": [], "removed": ["other"]}
    assert doc["machine"] == {"old": "pc-i440fx-9.0", "new": "pc-i440fx-9.1"}
    assert json.loads(json.dumps(doc)) == doc


def test_load_dump_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(MigstreamError):
        load_dump(bad)
    bad.write_text("{broken")
    with pytest.raises(DescriptionError):
        load_dump(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"vmschkmachine": {"Name": "q"}, "x": {"Description": BASE}}))
    d = load_dump(good)
    assert d.machine == "q" and d.descriptions("dev") == (BASE,)


def test_deep_nesting_is_bounded() -> None:
    inner: Any = vmsd("leaf", [field("v", 1)])
    for level in range(300):
        inner = vmsd(f"s{level}", [field("n", 8, Description=inner)])
    res = check_desc(dump(inner), dump(inner))
    assert not res.breaking
    assert any("nested deeper" in f.message for f in res.findings)
