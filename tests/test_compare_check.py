"""``migstream check`` against what real QEMU did: the 333 loads of ``corpus/loads``.

The oracle is ``loads/matrix.json``: every load's outcome on a real target (5.2 / 7.2 / 10.0).
A load without a target dump (the target could not start with that machine type) is checked
against the target version's dump of the same machine family (``pc`` / ``q35``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from conftest import CORPUS

from migstream.compare.check import CheckResult, check_file
from migstream.compare.dump import VmstateDump, load_dump

LOADS = CORPUS / "loads"
needs_loads = pytest.mark.skipif(not (LOADS / "matrix.json").is_file(), reason=f"no load matrix at {LOADS}")
pytestmark = needs_loads

#: Loads where the prediction and the real outcome disagree, by cause (README, `check`).
#: A change in this set (a new disagreement, or one fixed) must update the README table.
KNOWN_DISAGREEMENTS = {
    # slirp instance ids: 10.0 numbers its 'slirp' sections 0, 1; 5.2 / 7.2 register both as 0.
    # Not a device class: a dump does not show it (a warning names the section).
    ("10.0", "5.2", "pc-i440fx-5.2", "mix"),
    ("10.0", "7.2", "pc-i440fx-5.2", "mix"),
    ("10.0", "5.2", "pc-q35-5.2", "mix"),
    ("10.0", "7.2", "pc-q35-5.2", "mix"),
    ("10.0", "7.2", "pc-i440fx-7.2", "mix"),
    ("10.0", "7.2", "pc-q35-7.2", "mix"),
    ("10.0", "5.2", "pc-i440fx-2.12", "mix"),
    ("10.0", "7.2", "pc-i440fx-2.12", "mix"),
    # isa-vga: the target crashes in post_load (vram size from the command line).
    ("10.0", "5.2", "pc-i440fx-5.2", "isa-vga"),
    ("10.0", "7.2", "pc-i440fx-5.2", "isa-vga"),
    ("10.0", "10.0", "pc-i440fx-5.2", "isa-vga"),
    # igb: the target does not have the device; the dump lacks its vmsd, which it also lacks
    # for devices that register state at realize time (5.2's piix3 'ide'): a warning only.
    ("10.0", "5.2", "pc-i440fx-5.2", "igb"),
    ("10.0", "7.2", "pc-i440fx-5.2", "igb"),
    # pc-i440fx-2.0 on 10.0: the machine type is gone; the stream (machine < 2.4) has no
    # configuration record, so nothing in it names the machine.
    ("5.2", "10.0", "pc-i440fx-2.0", "none"),
    ("7.2", "10.0", "pc-i440fx-2.0", "none"),
}


@cache
def _matrix() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((LOADS / "matrix.json").read_text())
    return data


@cache
def _dump(rel: str) -> VmstateDump:
    return load_dump(LOADS / rel)


def _dump_for(load: dict[str, Any]) -> str:
    rel = load.get("target_dump")
    if rel is None:
        family = "q35" if "q35" in load["machine"] else "pc"
        rel = f"vmstate-dump/{load['target']}/{family}.json.xz"
    return str(rel)


@cache
def _results() -> list[tuple[dict[str, Any], CheckResult]]:
    out = []
    for load in _matrix()["loads"]:
        stream = LOADS / "streams" / f"{load['stream_id']}.mig.xz"
        out.append((load, check_file(stream, _dump(_dump_for(load)))))
    return out


def _key(load: dict[str, Any]) -> tuple[str, str, str, str]:
    return (load["source"], load["target"], load["machine"], load["devices"])


def test_agreement_with_real_loads() -> None:
    results = _results()
    assert len(results) == 333
    agree = [(load["outcome"] == "OK") == (res.verdict == "loads") for load, res in results]
    always_loads = sum(load["outcome"] == "OK" for load, _r in results) / len(results)
    figure = sum(agree) / len(results)
    print(f"check agreement: {sum(agree)}/{len(results)} = {figure:.1%} (always 'loads': {always_loads:.1%})")
    assert figure >= 0.95
    assert figure > always_loads + 0.09
    wrong = {_key(load) for (load, _r), ok in zip(results, agree) if not ok}
    assert wrong == KNOWN_DISAGREEMENTS


def test_failed_loads_name_the_section() -> None:
    """Where QEMU's error names a section, a failing prediction names the same one."""
    named = 0
    for load, res in _results():
        if load["outcome"] != "FAILED" or _key(load) in KNOWN_DISAGREEMENTS:
            continue
        error = load.get("error") or ""
        m = re.search(r"Missing section footer for (\S+)|unsupported version \d+ for '([^']+)'", error)
        if m:
            section = m.group(1) or m.group(2)
            assert section in {f.section for f in res.findings if f.severity == "error"}, (load, res)
            named += 1
        elif "Machine type received" in error:
            assert any(f.section == "configuration" for f in res.findings if f.severity == "error")
            named += 1
    assert named >= 15


def test_same_version_loads_have_no_errors() -> None:
    """A stream loaded by the QEMU that wrote it (all OK but the isa-vga crash) gets no error."""
    for load, res in _results():
        if load["direction"] == "same" and load["outcome"] == "OK":
            assert res.verdict == "loads", (load, [f for f in res.findings if f.severity == "error"])


def test_findings_carry_offsets() -> None:
    for _load, res in _results():
        for f in res.findings:
            if f.section not in ("configuration", "stream"):
                assert f.offset is not None and f.offset > 0


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "migstream", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_cli_check_json_and_exit_codes(tmp_path: Path) -> None:
    stream = LOADS / "streams" / "7.2__pc-i440fx-5.2__am53c974.mig.xz"
    fails = _cli(
        "check", str(stream), "--against", str(LOADS / "vmstate-dump/5.2/pc-i440fx-5.2.json.xz"), "--json"
    )
    assert fails.returncode == 1, fails.stderr
    doc = json.loads(fails.stdout)
    assert doc["verdict"] == "fails"
    errors = [f for f in doc["findings"] if f["severity"] == "error"]
    assert errors and errors[0]["section"] == "0000:00:02.0/pciespscsi"
    assert set(errors[0]) >= {"severity", "section", "instance", "offset", "field", "message"}
    loads = _cli("check", str(stream), "--against", str(LOADS / "vmstate-dump/7.2/pc-i440fx-5.2.json.xz"))
    assert loads.returncode == 0, loads.stderr
    assert "predicted to load" in loads.stdout and "cannot reveal" in loads.stdout
    # A plain (uncompressed) dump works the same.
    plain = tmp_path / "dump.json"
    plain.write_bytes(_dump_bytes("vmstate-dump/5.2/pc-i440fx-5.2.json.xz"))
    assert _cli("check", str(stream), "--against", str(plain)).returncode == 1
    # Errors exit 2 with one line.
    bad = _cli("check", str(stream), "--against", str(tmp_path / "missing.json"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    notjson = tmp_path / "x.json"
    notjson.write_text("{not json")
    bad = _cli("check", str(stream), "--against", str(notjson))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_cli_machine_mismatch() -> None:
    stream = LOADS / "streams" / "5.2__pc__none.mig.xz"
    res = _cli("check", str(stream), "--against", str(LOADS / "vmstate-dump/7.2/pc.json.xz"), "--json")
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    machine = [f for f in doc["findings"] if f["section"] == "configuration"]
    assert machine and "pc-i440fx-5.2" in machine[0]["message"] and "pc-i440fx-7.2" in machine[0]["message"]


def _dump_bytes(rel: str) -> bytes:
    import lzma

    return lzma.decompress((LOADS / rel).read_bytes())


# -- check-desc ------------------------------------------------------------------------------------

#: What check-desc reports as breaking between the corpus versions, with the load that proves it.
BREAKING = {
    # am53c974 5.2/7.2 -> 10.0: "Missing section footer for 0000:00:02.0/pciespscsi"
    ("5.2", "10.0"): {"pciespscsi", "sysbusespscsi", "virtio-iommu"},
    ("7.2", "10.0"): {"pciespscsi", "sysbusespscsi"},
    # 5.2 writes virtio-iommu v1; 7.2 accepts v2 only (minimum_version_id 2)
    ("5.2", "7.2"): {"virtio-iommu"},
    # am53c974 7.2/10.0 -> 5.2: "unsupported version 2 for '0000:00:02.0/pciespscsi' v1"
    ("7.2", "5.2"): {"pciespscsi", "sysbusespscsi", "virtio-iommu"},
    ("10.0", "5.2"): {"pciespscsi", "sysbusespscsi", "virtio-iommu"},
    # 10.0 -> 7.2 loads everything of the corpus
    ("10.0", "7.2"): set(),
}


@pytest.mark.parametrize("pair", sorted(BREAKING), ids=lambda p: f"{p[0]}->{p[1]}")
def test_check_desc_corpus_pairs(pair: tuple[str, str]) -> None:
    from migstream.compare.checkdesc import check_desc

    old, new = pair
    res = check_desc(_dump(f"vmstate-dump/{old}/pc.json.xz"), _dump(f"vmstate-dump/{new}/pc.json.xz"))
    flagged = {f.section for f in res.findings if f.severity == "error"}
    assert flagged == BREAKING[pair]
    assert res.breaking == bool(BREAKING[pair])
    doc = res.to_json()
    assert doc["machine"] == {"old": _dump(f"vmstate-dump/{old}/pc.json.xz").machine, "new": res.new_machine}
    if (old, new) == ("5.2", "10.0"):
        changed = {c["section"]: c for c in doc["changes"]}
        assert changed["pciespscsi"]["version_id"] == [1, 2]


def test_check_desc_same_dump_is_clean() -> None:
    from migstream.compare.checkdesc import check_desc

    d = _dump("vmstate-dump/10.0/pc.json.xz")
    res = check_desc(d, d)
    assert not res.findings and not res.changes and not res.added and not res.removed


def test_cli_check_desc() -> None:
    a = LOADS / "vmstate-dump/7.2/pc.json.xz"
    b = LOADS / "vmstate-dump/10.0/pc.json.xz"
    res = _cli("check-desc", str(a), str(b), "--json")
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    assert doc["verdict"] == "breaking" and "igb" in doc["sections"]["added"]
    assert _cli("check-desc", str(b), str(b)).returncode == 0


def test_cut_stream_fails_everywhere(tmp_path: Path) -> None:
    import lzma

    data = lzma.decompress((LOADS / "streams" / "10.0__pc-i440fx-5.2__none.mig.xz").read_bytes())
    cut = tmp_path / "cut.mig"
    cut.write_bytes(data[:300000])
    res = check_file(cut, _dump("vmstate-dump/10.0/pc-i440fx-5.2.json.xz"))
    assert res.verdict == "fails"
    (err,) = [f for f in res.findings if f.severity == "error"]
    assert err.section == "stream" and err.offset is not None and err.offset <= 300000
