"""``migstream diff`` on builder-made pairs whose differences are known exactly."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from builder import JsonObj, RamBlock, StreamBuilder

import migstream
from migstream.compare.diff import CHUNK, Ignore, diff_streams

PS = 4096
RAM_PAGES = 600
CLI = [sys.executable, "-m", "migstream"]

DEV: JsonObj = {
    "vmsd_name": "testdev",
    "version": 3,
    "fields": [
        {"name": "u32", "type": "uint32"},
        {"name": "mac", "type": "buffer", "size": 6},
        {"name": "regs", "type": "uint32", "array_len": 4},
        {
            "name": "ring",
            "type": "struct",
            "struct": {
                "vmsd_name": "ring",
                "version": 1,
                "fields": [{"name": "base", "type": "uint64"}, {"name": "size", "type": "uint16"}],
            },
        },
        {
            "name": "queues",
            "type": "struct",
            "array_len": 2,
            "struct": {
                "vmsd_name": "queue",
                "version": 1,
                "fields": [{"name": "head", "type": "uint16"}, {"name": "tail", "type": "uint16"}],
            },
        },
    ],
    "subsections": [
        {"vmsd_name": "testdev/sub", "version": 2, "fields": [{"name": "extra", "type": "int16"}]}
    ],
}
VALUES: dict[str, Any] = {
    "u32": 0xDEADBEEF,
    "mac": bytes.fromhex("525400123456"),
    "regs": [0, 1, 2, 3],
    "ring": {"base": 0x7FF000, "size": 256},
    "queues": [{"head": 1, "tail": 2}, {"head": 30, "tail": 40}],
    "testdev/sub": {"extra": -7},
}
RTC: JsonObj = {"vmsd_name": "mc146818rtc", "version": 3, "fields": [{"name": "base_rtc", "type": "uint64"}]}
IDSTR = "0000:00:03.0/testdev"


def page(seed: int) -> bytes:
    head = f"page-{seed:08d}".encode()
    return (head * (PS // len(head) + 1))[:PS]


def build(
    path: Path,
    *,
    values: dict[str, Any] | None = None,
    desc: JsonObj = DEV,
    pages: dict[int, bytes] | None = None,
    rtc: int = 1000,
    extra_device: bool = False,
    rom_pages: int = 2,
) -> Path:
    """A precopy stream: RAM (pc.ram + a ROM), the test device, an RTC, optionally one more device."""
    b = StreamBuilder()
    b.header()
    b.configuration("pc-i440fx-10.0")
    b.ram_start(1, [RamBlock("pc.ram", RAM_PAGES * PS), RamBlock("rom", rom_pages * PS)])
    b.section_part(1)
    for offset, data in sorted((pages or {5: page(5), 7: page(7)}).items()):
        b.ram_page("pc.ram", offset * PS, data)
    b.ram_page("rom", 0, page(99))
    b.ram_eos()
    b.section_end(1)
    b.ram_eos()
    b.device(2, IDSTR, 0, desc, values if values is not None else VALUES)
    b.device(3, "mc146818rtc", 0, RTC, {"base_rtc": rtc})
    if extra_device:
        port92 = {"vmsd_name": "port92", "version": 1, "fields": [{"name": "x", "type": "uint8"}]}
        b.device(4, "port92", 0, port92, {"x": 1})
    b.eof()
    b.vmdescription()
    return b.write(path)


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=120, check=False)


def diff_json(a: Path, b: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    res = run("diff", a, b, "--json", *extra)
    assert res.returncode in (0, 1), res.stderr
    return res.returncode, json.loads(res.stdout)


def fields_of(doc: dict[str, Any], section: str = IDSTR) -> dict[str, tuple[Any, Any]]:
    for dev in doc["devices"]:
        if dev["section"] == section:
            return {f["path"]: (f["a"], f["b"]) for f in dev["fields"]}
    return {}


def test_equal_streams_exit_0(tmp_path: Path) -> None:
    a = build(tmp_path / "a.mig")
    b = build(tmp_path / "b.mig")
    code, doc = diff_json(a, b)
    assert code == 0
    assert doc["sections"] == {"only_a": [], "only_b": []}
    assert doc["devices"] == []
    assert all(
        r["pages_differ"] == 0 and r["ranges"] == [] and r["digest_a"] == r["digest_b"] for r in doc["ram"]
    )
    text = run("diff", a, b)
    assert text.returncode == 0 and "equal" in text.stdout


def test_exact_field_differences(tmp_path: Path) -> None:
    changed = copy.deepcopy(VALUES)
    changed["u32"] = 0x12345678
    changed["regs"][2] = 0xFFFF
    changed["ring"]["base"] = 0x1000
    changed["queues"][1]["tail"] = 41
    changed["testdev/sub"]["extra"] = 5
    a = build(tmp_path / "a.mig")
    b = build(tmp_path / "b.mig", values=changed)
    code, doc = diff_json(a, b)
    assert code == 1
    got = fields_of(doc)
    p = f"{IDSTR}[0]"
    assert got == {
        f"{p}.u32": (0xDEADBEEF, 0x12345678),
        f"{p}.regs[2]": (2, 0xFFFF),
        f"{p}.ring.base": (0x7FF000, 0x1000),
        f"{p}.queues[1].tail": (40, 41),
        f"{p}.testdev/sub.extra": (-7, 5),
    }
    assert [d["section"] for d in doc["devices"]] == [IDSTR]  # the RTC is equal: not listed
    assert all(r["pages_differ"] == 0 for r in doc["ram"])


def test_arrays_are_aligned_by_index_never_shifted(tmp_path: Path) -> None:
    """B's array has one element more at the end: only that element differs."""
    longer = copy.deepcopy(DEV)
    longer["fields"][2]["array_len"] = 5
    vals = copy.deepcopy(VALUES)
    vals["regs"] = [0, 1, 2, 3, 4]
    a = build(tmp_path / "a.mig")
    b = build(tmp_path / "b.mig", values=vals, desc=longer)
    _code, doc = diff_json(a, b)
    assert fields_of(doc) == {f"{IDSTR}[0].regs[4]": (None, 4)}


def test_ram_pages_ranges_and_digests(tmp_path: Path) -> None:
    base = {5: page(5), 7: page(7), 100: page(100), 101: page(101), 102: page(102)}
    other = dict(base)
    other[7] = page(77)  # changed page
    other[101] = page(1010)  # changed pages 101, 102 (a range of two)
    other[102] = page(1020)
    other[300] = page(300)  # sent only in B (zero in A)
    del other[5]  # sent only in A (zero in B)
    a = build(tmp_path / "a.mig", pages=base)
    b = build(tmp_path / "b.mig", pages=other)
    code, doc = diff_json(a, b)
    assert code == 1
    ram = {r["block"]: r for r in doc["ram"]}
    r = ram["pc.ram"]
    assert r["pages_differ"] == 5
    assert r["ranges"] == [[5 * PS, 6 * PS], [7 * PS, 8 * PS], [101 * PS, 103 * PS], [300 * PS, 301 * PS]]

    def digest(pages: dict[int, bytes]) -> str:
        mem = bytearray(RAM_PAGES * PS)
        for i, data in pages.items():
            mem[i * PS : (i + 1) * PS] = data
        return hashlib.sha256(mem).hexdigest()

    assert r["digest_a"] == digest(base) and r["digest_b"] == digest(other)
    assert ram["rom"]["pages_differ"] == 0 and ram["rom"]["digest_a"] == ram["rom"]["digest_b"]
    assert doc["devices"] == []


def test_block_of_another_size(tmp_path: Path) -> None:
    a = build(tmp_path / "a.mig")
    b = build(tmp_path / "b.mig", rom_pages=3)
    code, doc = diff_json(a, b)
    assert code == 1
    rom = next(r for r in doc["ram"] if r["block"] == "rom")
    assert (rom["size_a"], rom["size_b"], rom["pages_differ"]) == (2 * PS, 3 * PS, 0)


def test_sections_in_one_stream_only(tmp_path: Path) -> None:
    a = build(tmp_path / "a.mig")
    b = build(tmp_path / "b.mig", extra_device=True)
    code, doc = diff_json(a, b)
    assert code == 1
    assert doc["sections"] == {"only_a": [], "only_b": ["port92"]}
    code, doc = diff_json(b, a)
    assert doc["sections"] == {"only_a": ["port92"], "only_b": []}


def test_ignore_and_scopes(tmp_path: Path) -> None:
    a = build(tmp_path / "a.mig", rtc=1000)
    b = build(tmp_path / "b.mig", rtc=1001, pages={5: page(5), 7: page(8)})
    code, doc = diff_json(a, b)
    assert fields_of(doc, "mc146818rtc") == {"mc146818rtc[0].base_rtc": (1000, 1001)}
    code, doc = diff_json(a, b, "--ignore", "mc146818rtc.*")
    assert code == 1 and doc["devices"] == []  # RAM still differs
    code, doc = diff_json(a, b, "--ignore", "mc146818rtc[0].base_rtc", "--ignore", "pc.ram")
    assert code == 0
    code, doc = diff_json(a, b, "--devices-only")
    assert code == 1 and doc["ram"] == [] and doc["devices"]
    code, doc = diff_json(a, b, "--memory-only", "--ignore", "mc146818rtc*")
    assert code == 1 and doc["devices"] == [] and any(r["pages_differ"] == 1 for r in doc["ram"])
    assert run("diff", a, b, "--devices-only", "--memory-only").returncode == 2


def test_ignore_globs() -> None:
    ig = Ignore(["mc146818rtc.*", "cpu[*].env.cr[3]"])
    assert ig("mc146818rtc[0].cmos_data")
    assert ig("cpu[1].env.cr[3]") and not ig("cpu[1].env.cr[2]")
    assert not ig("0000:00:03.0/testdev[0].u32")


def test_errors_exit_2_one_line(tmp_path: Path) -> None:
    a = build(tmp_path / "a.mig")
    res = run("diff", a, tmp_path / "missing.mig")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a stream at all")
    res = run("diff", junk, a, "--json")
    assert res.returncode == 2 and "Traceback" not in res.stderr and res.stdout == ""


def test_compressed_against_plain(tmp_path: Path) -> None:
    import lzma

    a = build(tmp_path / "a.mig")
    xz = tmp_path / "a.mig.xz"
    xz.write_bytes(lzma.compress(a.read_bytes()))
    code, _doc = diff_json(a, xz)
    assert code == 0


@pytest.mark.slow
def test_chunked_compare_of_a_large_block(tmp_path: Path) -> None:
    """A block larger than one read chunk: ranges across the chunk boundary stay exact."""
    pages_per_chunk = CHUNK // PS
    big = 2 * pages_per_chunk + 10
    b1, b2 = StreamBuilder(), StreamBuilder()
    for b, changed in ((b1, False), (b2, True)):
        b.header()
        b.ram_start(1, [RamBlock("pc.ram", big * PS)])
        b.section_part(1)
        for i in (pages_per_chunk - 1, pages_per_chunk, big - 1):
            b.ram_page("pc.ram", i * PS, page(i + (1000 if changed else 0)))
        b.ram_eos()
        b.section_end(1)
        b.ram_eos()
        b.eof()
    a = b1.write(tmp_path / "a.mig")
    b_ = b2.write(tmp_path / "b.mig")
    with migstream.open(a) as sa, migstream.open(b_) as sb:
        d = diff_streams(sa, sb)
    (r,) = d.ram
    assert r.ranges == (((pages_per_chunk - 1) * PS, (pages_per_chunk + 1) * PS), ((big - 1) * PS, big * PS))
    assert r.pages_differ == 3


def _encoded_stream(path: Path, how: str) -> Path:
    """pc.ram page 3 = page(3), reaching its final content plainly, by XBZRLE or compressed."""
    b = StreamBuilder()
    b.header()
    b.ram_start(1, [RamBlock("pc.ram", 8 * PS)])
    b.section_part(1)
    if how == "plain":
        b.ram_page("pc.ram", 3 * PS, page(3))
    elif how == "xbzrle":
        near = bytearray(page(3))
        near[10:20] = b"0123456789"
        b.ram_page("pc.ram", 3 * PS, bytes(near))
        b.ram_xbzrle("pc.ram", 3 * PS, page(3))
    else:
        b.ram_compress_page("pc.ram", 3 * PS, page(3))
    b.ram_page("pc.ram", 6 * PS, bytes(PS))  # sent as data, but all zero
    b.ram_eos()
    b.section_end(1)
    b.ram_eos()
    b.eof()
    return b.write(path)


@pytest.mark.parametrize("how", ["xbzrle", "compressed"])
def test_final_content_counts_not_the_encoding(tmp_path: Path, how: str) -> None:
    a = _encoded_stream(tmp_path / "a.mig", "plain")
    b = _encoded_stream(tmp_path / "b.mig", how)
    with migstream.open(a) as sa, migstream.open(b) as sb:
        d = diff_streams(sa, sb)
        assert d.equal
        (r,) = d.ram
        mem = bytearray(8 * PS)
        mem[3 * PS : 4 * PS] = page(3)
        assert r.digest_a == r.digest_b == hashlib.sha256(mem).hexdigest()
