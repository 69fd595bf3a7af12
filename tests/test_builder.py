"""Checks of the test-only stream builder (tests/builder.py).

The builder is checked against byte layouts written out by hand, against real
corpus streams (header area, configuration JSON, mapped-ram layout) and against
an independent reader: QEMU's own ``scripts/analyze-migration.py`` (fetched by
``/work/shared/tools/get-analyze-migration.sh`` into a cache folder, never
copied here).  Tests that need the script or the corpus skip without them.
"""

from __future__ import annotations

import json
import lzma
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from builder import (
    QEMU_VM_FILE_VERSION_COMPAT,
    RAM_SAVE_FLAG_CONTINUE,
    RAM_SAVE_FLAG_PAGE,
    JsonObj,
    RamBlock,
    StreamBuilder,
    be32,
    be64,
    cstr8,
    encode_vmsd,
    uleb128_2,
    xbzrle_decode,
    xbzrle_encode,
)

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
PS = 4096


def analyze_script() -> Path | None:
    base = Path(os.environ.get("MIGSTREAM_CACHE") or Path.home() / ".cache" / "migstream")
    p = base / "qemu-scripts-trixie" / "analyze-migration.py"
    return p if p.is_file() else None


def run_analyze(stream: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    script = analyze_script()
    if script is None:
        pytest.skip("analyze-migration.py not cached (run /work/shared/tools/get-analyze-migration.sh)")
    return subprocess.run(
        [sys.executable, str(script), "-f", str(stream), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def analyze_state(stream: Path) -> JsonObj:
    proc = run_analyze(stream, "-d", "state")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out: JsonObj = json.loads(proc.stdout)
    return out


def corpus_head(stream_id: str, n: int | None = None) -> bytes:
    path = CORPUS / stream_id / "stream.mig.xz"
    if not path.is_file():
        pytest.skip(f"corpus stream {stream_id} absent")
    if n is None:
        return lzma.decompress(path.read_bytes())
    dec = lzma.LZMADecompressor()
    return dec.decompress(path.read_bytes(), max_length=n)


def manifest_entry(stream_id: str) -> JsonObj:
    path = CORPUS / "MANIFEST.json"
    if not path.is_file():
        pytest.skip("corpus manifest absent")
    for s in json.loads(path.read_text())["streams"]:
        if s["id"] == stream_id:
            entry: JsonObj = s
            return entry
    pytest.skip(f"{stream_id} not in the manifest")


def trailing_vmdesc(data: bytes) -> JsonObj:
    """The vmdesc of a complete stream, found by its 0x06 + be32 length + '{' framing."""
    pos = data.rfind(b"{")
    while pos >= 5:
        n = int.from_bytes(data[pos - 4 : pos], "big")
        if data[pos - 5] == 0x06 and pos + n == len(data):
            obj: JsonObj = json.loads(data[pos : pos + n])
            return obj
        pos = data.rfind(b"{", 0, pos)
    raise AssertionError("no vmdesc found")


def page(seed: int) -> bytes:
    return random.Random(seed).randbytes(PS)


# ---------------------------------------------------------------------------
# primitives


def test_uleb128_two_byte_limit() -> None:
    assert uleb128_2(0) == b"\x00"
    assert uleb128_2(0x7F) == b"\x7f"
    assert uleb128_2(0x80) == b"\x80\x01"
    assert uleb128_2(4096) == b"\x80\x20"
    assert uleb128_2(0x3FFF) == b"\xff\x7f"
    with pytest.raises(ValueError):
        uleb128_2(0x4000)


def test_xbzrle_encoding_by_hand() -> None:
    old = bytes(16)
    new = bytearray(old)
    new[0:2] = b"\xaa\xbb"  # literal run at the very start: zrun 0
    new[5] = 0xCC  # zrun 3, nzrun 1
    enc = xbzrle_encode(old, bytes(new))
    assert enc == b"\x00\x02\xaa\xbb" + b"\x03\x01\xcc"  # trailing unchanged run not encoded
    assert xbzrle_decode(old, enc) == bytes(new)


@pytest.mark.parametrize("seed", range(20))
def test_xbzrle_round_trip(seed: int) -> None:
    rng = random.Random(seed)
    old = rng.randbytes(PS)
    new = bytearray(old)
    for _ in range(rng.randrange(1, 60)):
        at = rng.randrange(PS)
        ln = rng.randrange(1, 200)
        new[at : at + ln] = rng.randbytes(len(new[at : at + ln]))
    enc = xbzrle_encode(old, bytes(new))
    assert xbzrle_decode(old, enc) == bytes(new)


def test_xbzrle_long_runs() -> None:
    old = bytes(PS)
    new = bytearray(PS)
    new[-1] = 1  # zrun of 4095 needs two ULEB bytes
    enc = xbzrle_encode(old, bytes(new))
    assert enc == uleb128_2(PS - 1) + b"\x01\x01"
    full = bytes([0xFF]) * PS
    enc = xbzrle_encode(old, full)
    assert enc == b"\x00" + uleb128_2(PS) + full
    assert xbzrle_decode(old, enc) == full


# ---------------------------------------------------------------------------
# byte layouts written out by hand


def test_header_configuration_ram_start_bytes() -> None:
    b = StreamBuilder()
    assert b.header() == 0
    assert b.configuration("pc-q35-9.2") == 8
    assert b.section_start(2, "ram", 0, 4) == 23
    assert b.ram_mem_size([RamBlock("pc.ram", 0x40000000)]) == 40
    assert b.ram_eos() == 63
    assert b.close_section() == 71
    expected = bytes.fromhex(
        "5145564d 00000003"
        "07 0000000a 70632d7133352d392e32"
        "01 00000002 0372616d 00000000 00000004"
        "0000000040000004 06 70632e72616d 0000000040000000"
        "0000000000000010"
        "7e 00000002".replace(" ", "")
    )
    assert b.data() == expected
    assert b.expected_info() == {
        "records": [
            {"type": "HEADER", "offset": 0},
            {"type": "CONFIGURATION", "offset": 8},
            {
                "type": "SECTION_START",
                "offset": 23,
                "section_id": 2,
                "name": "ram",
                "instance_id": 0,
                "version_id": 4,
            },
        ],
        "ram_blocks": [{"name": "pc.ram", "size": 0x40000000}],
    }


def test_ram_records_and_continue_bytes() -> None:
    b = StreamBuilder()
    b.section_part(2)
    p0, p1 = page(1), page(2)
    assert b.ram_page("pc.ram", 0, p0) == 5
    at = b.ram_page("pc.ram", 0x1000, p1)
    assert at == 5 + 8 + 7 + PS
    z = b.ram_zero("pc.ram", 0x2000)
    b.ram_eos()
    b.section_end(2)
    b.ram_zero("pc.ram", 0x3000)  # CONTINUE crosses the section boundary
    b.ram_page("other", 0, p0)
    b.ram_eos()
    data = b.data()
    assert data[5:13] == be64(RAM_SAVE_FLAG_PAGE) and data[13:20] == cstr8("pc.ram")
    assert data[at : at + 8] == be64(0x1000 | RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_CONTINUE)
    assert data[z : z + 9] == bytes.fromhex("0000000000002022 00".replace(" ", ""))
    end = b.records[1]["offset"]
    assert data[end + 5 : end + 14] == bytes.fromhex("000000000000302200")
    assert data[end + 14 : end + 22] == be64(RAM_SAVE_FLAG_PAGE)
    assert b.records[1] == {"type": "SECTION_END", "offset": end, "section_id": 2}


def test_forced_continue_without_previous_block() -> None:
    b = StreamBuilder()
    b.ram_page("pc.ram", 0x5000, page(3), cont=True)
    assert b.data()[:8] == be64(0x5000 | RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_CONTINUE)
    assert len(b.data()) == 8 + PS


def test_commands_bytes() -> None:
    b = StreamBuilder()
    offs = [
        b.open_return_path(),
        b.ping(1),
        b.postcopy_advise(0x201000, PS),
        b.postcopy_advise(),
        b.postcopy_listen(),
        b.postcopy_run(),
        b.postcopy_ram_discard("pc.ram", [(0x1000, 0x2000), (0x10000, 0x1000)]),
        b.enable_colo(),
        b.postcopy_resume(),
        b.recv_bitmap("pc.ram"),
        b.switchover_start(),
    ]
    data = b.data()
    assert data[offs[0] : offs[1]] == bytes.fromhex("0800010000")
    assert data[offs[1] : offs[2]] == bytes.fromhex("080002000400000001")
    assert data[offs[2] : offs[3]] == bytes.fromhex("0800030010") + be64(0x201000) + be64(PS)
    assert data[offs[3] : offs[4]] == bytes.fromhex("0800030000")
    discard = data[offs[6] : offs[7]]
    assert discard[:5] == bytes.fromhex("0800060029")  # 3 + 6 + 2*16 = 41
    assert discard[5:] == b"\x00\x06pc.ram\x00" + be64(0x1000) + be64(0x2000) + be64(0x10000) + be64(0x1000)
    assert data[offs[9] : offs[10]] == bytes.fromhex("08000a0007") + cstr8("pc.ram")
    assert data[offs[10] :] == bytes.fromhex("08000b0000")
    names = [r["command"] for r in b.records]
    assert names == [
        "OPEN_RETURN_PATH",
        "PING",
        "POSTCOPY_ADVISE",
        "POSTCOPY_ADVISE",
        "POSTCOPY_LISTEN",
        "POSTCOPY_RUN",
        "POSTCOPY_RAM_DISCARD",
        "ENABLE_COLO",
        "POSTCOPY_RESUME",
        "RECV_BITMAP",
        "SWITCHOVER_START",
    ]
    assert [r["offset"] for r in b.records] == offs


def test_packaged_offsets_are_outer() -> None:
    inner = StreamBuilder()
    inner.postcopy_listen()
    inner.section_full(7, "timer", 0, 2, bytes(20))
    inner.ping(3)
    inner.postcopy_run()
    inner_len = len(inner.data())
    b = StreamBuilder()
    b.header()
    pk = b.packaged(inner)
    assert pk == 8
    data = b.data()
    assert data[8:17] == bytes.fromhex("0800070004") + be32(inner_len)
    assert len(data) == 17 + inner_len
    recs = b.records
    assert recs[1] == {"type": "COMMAND", "offset": 8, "command": "PACKAGED"}
    assert recs[2] == {"type": "COMMAND", "offset": 17, "command": "POSTCOPY_LISTEN"}
    assert recs[3]["offset"] == 22 and recs[3]["type"] == "SECTION_FULL"
    assert data[22] == 0x04 and data[23:27] == be32(7)
    assert b.footer_offsets == [22 + 1 + 4 + 6 + 8 + 20]


def test_footer_variants() -> None:
    b = StreamBuilder(footers=False)
    b.section_full(3, "a", 0, 1, b"\x01")
    b.section_full(4, "b", 0, 1, b"\x02", footer=True)
    b.section_full(5, "c", 0, 1, b"\x03", footer=99)
    b.eof()
    data = b.data()
    assert data == (
        b"\x04" + be32(3) + cstr8("a") + be32(0) + be32(1) + b"\x01"
        b"\x04" + be32(4) + cstr8("b") + be32(0) + be32(1) + b"\x02" + b"\x7e" + be32(4) + b"\x04"
        b"" + be32(5) + cstr8("c") + be32(0) + be32(1) + b"\x03" + b"\x7e" + be32(99) + b"\x00"
    )


def test_version2_header_and_vmdesc_padding() -> None:
    b = StreamBuilder()
    b.header(version=QEMU_VM_FILE_VERSION_COMPAT)
    b.eof()
    vd = b.vmdescription(padding=1000)
    data = b.data()
    assert data[:8] == bytes.fromhex("5145564d00000002")
    n = int.from_bytes(data[vd + 1 : vd + 5], "big")
    assert json.loads(data[vd + 5 : vd + 5 + n]) == {"page_size": PS, "devices": []}
    assert data[vd + 5 + n :] == bytes(1000)


def test_special_section_payload_bytes() -> None:
    b = StreamBuilder(footers=False)
    b.section_start(1, "dirty-bitmap", 0, 1)
    b.dirty_bitmap_start("disk0", "bm0", 65536, 0x03)
    b.dirty_bitmap_bits("disk0", "bm0", 0, 128, None)
    b.dirty_bitmap_complete("disk0", "bm0")
    b.dirty_bitmap_eos()
    body = b.data()[1 + 4 + 13 + 8 :]
    assert body == (
        b"\x1c" + cstr8("disk0") + cstr8("bm0") + be32(65536) + b"\x03"
        b"\x42" + be64(0) + be32(128) + b"\x20\x01"
    )
    b2 = StreamBuilder(footers=False)
    b2.block_chunk("raw0", 2048, None)
    b2.block_progress(100)
    b2.stattr_more(0x10, b"\x01\x02")
    b2.stattr_done()
    b2.vfio_data(b"xyz")
    assert b2.data() == (
        be64((2048 << 9) | 0x09)
        + cstr8("raw0")
        + be64((100 << 9) | 0x04)
        + be64(0x10002)
        + be64(2)
        + b"\x01\x02"
        + be64(0x08)
        + be64(0xFFFFFFFFEF100004)
        + be64(3)
        + b"xyz"
    )


# ---------------------------------------------------------------------------
# vmstate encoder


INNER: JsonObj = {
    "vmsd_name": "inner_state",
    "version": 1,
    "fields": [
        {"name": "a", "type": "uint16"},
        {"name": "b", "type": "buffer", "size": 3},
    ],
    "subsections": [
        {"vmsd_name": "inner_state/extra", "version": 2, "fields": [{"name": "x", "type": "uint64"}]},
    ],
}

QUEUE: JsonObj = {
    "vmsd_name": "queue",
    "version": 1,
    "fields": [{"name": "head", "type": "uint16"}, {"name": "tail", "type": "uint16"}],
}

DEV_DESC: JsonObj = {
    "vmsd_name": "testdev",
    "version": 3,
    "fields": [
        {"name": "u8", "type": "uint8"},
        {"name": "i8", "type": "int8"},
        {"name": "u16", "type": "uint16"},
        {"name": "i16", "type": "int16"},
        {"name": "u32", "type": "uint32"},
        {"name": "i32", "type": "int32"},
        {"name": "u64", "type": "uint64"},
        {"name": "i64", "type": "int64"},
        {"name": "eq", "type": "int32 equal"},
        {"name": "ueq", "type": "uint32 equal"},
        {"name": "le", "type": "int32 le"},
        {"name": "flag", "type": "bool"},
        {"name": "off", "type": "bool"},
        {"name": "buf", "type": "buffer", "size": 6},
        {"name": "regs", "type": "uint32", "array_len": 4},
        {"name": "inner", "type": "struct", "struct": INNER},
        {"name": "queues", "type": "struct", "array_len": 2, "struct": QUEUE},
        {"name": "slots", "type": "uint32", "array_len": 2},
        {"name": "slots", "type": "nullptr"},
        {"name": "slots", "type": "uint32"},
        {"name": "ptr", "type": "nullptr"},
    ],
    "subsections": [
        {"vmsd_name": "testdev/sub1", "version": 1, "fields": [{"name": "s", "type": "int16"}]},
        {"vmsd_name": "testdev/notsent", "version": 1, "fields": [{"name": "q", "type": "uint8"}]},
    ],
}

DEV_VALUES: dict[str, Any] = {
    "u8": 0xAB,
    "i8": -2,
    "u16": 0xBEEF,
    "i16": -300,
    "u32": 0xDEADBEEF,
    "i32": -70000,
    "u64": 0x0123456789ABCDEF,
    "i64": -(1 << 40),
    "eq": 7,
    "ueq": 0xFFFFFFFF,
    "le": 5,
    "flag": True,
    "off": False,
    "buf": b"\x00\x01\x02\xfd\xfe\xff",
    "regs": [1, 2, 0xFFFFFFFF, 0x80000000],
    "inner": {"a": 0x1234, "b": b"abc", "inner_state/extra": {"x": 42}},
    "queues": [{"head": 1, "tail": 2}, {"head": 3, "tail": 4}],
    "slots": [10, 11, None, 13],
    "ptr": None,
    "testdev/sub1": {"s": -1},
}

DEV_WIRE = b"".join(
    [
        b"\xab\xfe\xbe\xef\xfe\xd4",
        bytes.fromhex("deadbeef"),
        (-70000).to_bytes(4, "big", signed=True),
        bytes.fromhex("0123456789abcdef"),
        (-(1 << 40)).to_bytes(8, "big", signed=True),
        be32(7) + be32(0xFFFFFFFF) + be32(5),
        b"\x01\x00",
        b"\x00\x01\x02\xfd\xfe\xff",
        be32(1) + be32(2) + be32(0xFFFFFFFF) + be32(0x80000000),
        b"\x12\x34abc" + b"\x05" + cstr8("inner_state/extra") + be32(2) + be64(42),
        b"\x00\x01\x00\x02\x00\x03\x00\x04",
        be32(10) + be32(11) + b"\x30" + be32(13),
        b"\x30",
        b"\x05" + cstr8("testdev/sub1") + be32(1) + b"\xff\xff",
    ]
)


def test_encode_vmsd_wire_and_sizes() -> None:
    wire, desc = encode_vmsd(DEV_DESC, DEV_VALUES)
    assert wire == DEV_WIRE
    sizes = {(f["name"], f.get("array_len"), f["type"]): f["size"] for f in desc["fields"]}
    assert sizes[("u8", None, "uint8")] == 1
    assert sizes[("i64", None, "int64")] == 8
    assert sizes[("buf", None, "buffer")] == 6
    assert sizes[("regs", 4, "uint32")] == 4  # compressed arrays give one element's size
    assert sizes[("inner", None, "struct")] == 5 + 1 + 18 + 4 + 8  # includes its subsection
    assert sizes[("queues", 2, "struct")] == 4
    assert sizes[("slots", None, "nullptr")] == 1
    assert [s["vmsd_name"] for s in desc["subsections"]] == ["testdev/sub1"]
    inner = next(f for f in desc["fields"] if f["name"] == "inner")["struct"]
    assert inner["subsections"][0] == {
        "vmsd_name": "inner_state/extra",
        "version": 2,
        "fields": [{"name": "x", "type": "uint64", "size": 8}],
    }
    # described fields in vmdesc key order
    assert list(desc["fields"][14]) == ["name", "array_len", "type", "size"]


def test_device_records_and_vmdesc_entry() -> None:
    b = StreamBuilder()
    off = b.device(9, "0000:00:03.0/testdev", 1, DEV_DESC, DEV_VALUES)
    assert b.records == [
        {
            "type": "SECTION_FULL",
            "offset": off,
            "section_id": 9,
            "name": "0000:00:03.0/testdev",
            "instance_id": 1,
            "version_id": 3,
        }
    ]
    entry = b.devices[0]
    assert list(entry)[:4] == ["name", "instance_id", "vmsd_name", "version"]
    assert entry["name"] == "0000:00:03.0/testdev" and entry["instance_id"] == 1
    head = 1 + 4 + 1 + len("0000:00:03.0/testdev") + 8
    assert b.data()[head : head + len(DEV_WIRE)] == DEV_WIRE


# ---------------------------------------------------------------------------
# the analyze-migration.py oracle


def _hex_int(value: int, size: int, signed: bool) -> str:
    u = value & ((1 << (8 * size)) - 1)
    text = f"0x{u:0{size * 2}x}"
    return f"{text} ({value})" if signed and value < 0 else text


SCRIPT_SIGNED = {"int8", "int16", "int32", "int64", "int32 equal", "int32 le", "int64 equal"}
SCRIPT_SIGNED |= {"uint8 equal", "uint16 equal"}
SCRIPT_INT = {"uint8", "uint16", "uint32", "uint64", "uint32 equal"} | SCRIPT_SIGNED
SCRIPT_INT_SIZE = {"8": 1, "16": 2, "32": 4, "64": 8}


def oracle_view(desc: JsonObj, values: dict[str, Any]) -> JsonObj:
    """How analyze-migration.py prints ``values`` encoded with ``desc``."""

    def one(f: JsonObj, v: Any) -> Any:
        t = f["type"]
        if t == "struct":
            return oracle_view(f["struct"], v)
        if t == "bool":
            return bool(v)
        if t == "nullptr":
            return "nullptr"
        if t in SCRIPT_INT:
            size = next(s for k, s in SCRIPT_INT_SIZE.items() if k in t)
            signed = t in SCRIPT_SIGNED
            return _hex_int(v if signed else v & ((1 << (8 * size)) - 1), size, signed)
        return " ".join(f"{c:02x}" for c in v)

    out: JsonObj = {}
    cursor: dict[str, int] = {}
    counts: dict[str, int] = {}
    for f in desc["fields"]:
        counts[f["name"]] = counts.get(f["name"], 0) + 1
    for f in desc["fields"]:
        name = f["name"]
        if counts[name] > 1 or "array_len" in f:
            pos = cursor.get(name, 0)
            n = int(f.get("array_len", 1))
            cursor[name] = pos + n
            items = [one(f, v) for v in values[name][pos : pos + n]]
            out.setdefault(name, []).extend(items)
        else:
            out[name] = one(f, values[name])
    for sub in desc.get("subsections", []):
        if sub["vmsd_name"] in values:
            out[sub["vmsd_name"]] = oracle_view(sub, values[sub["vmsd_name"]])
    return out


def _rich_stream(b: StreamBuilder) -> None:
    blocks = [RamBlock("pc.ram", 16 * PS), RamBlock("/rom@etc/acpi/tables", 2 * PS)]
    b.header()
    b.configuration("pc-i440fx-10.0")
    b.ram_start(1, blocks, multifd_flush=True)
    b.section_part(1)
    b.ram_page("pc.ram", 0, page(10))
    b.ram_page("pc.ram", 3 * PS, page(11))
    b.ram_zero("pc.ram", 4 * PS)
    b.ram_page("/rom@etc/acpi/tables", PS, page(12))
    b.ram_multifd_flush()
    b.ram_eos()
    b.section_part(1)
    b.ram_page("/rom@etc/acpi/tables", 0, page(13))  # CONTINUE across sections
    b.ram_page("pc.ram", 0, page(14))  # second iteration of page 0
    b.ram_eos()
    b.switchover_start()
    b.section_end(1)
    b.ram_page("pc.ram", 15 * PS, page(15))
    b.ram_zero("pc.ram", 5 * PS)  # (the script skips zero fills, so only never-sent pages)
    b.ram_eos()
    b.device(2, "testdev", 0, DEV_DESC, DEV_VALUES)
    b.device(3, "timer", 0, QUEUE, {"head": 9, "tail": 8})
    b.eof()
    b.vmdescription()


def test_oracle_reads_device_state(tmp_path: Path) -> None:
    b = StreamBuilder()
    _rich_stream(b)
    path = b.write(tmp_path / "rich.mig")
    state = analyze_state(path)
    assert list(state) == ["ram (1)", "testdev (2)", "timer (3)"]
    assert state["ram (1)"] == {
        "section sizes": {"pc.ram": "0x%016x" % (16 * PS), "/rom@etc/acpi/tables": "0x%016x" % (2 * PS)}
    }
    assert state["testdev (2)"] == oracle_view(DEV_DESC, DEV_VALUES)
    assert state["timer (3)"] == {"head": "0x0009", "tail": "0x0008"}
    # spot checks written out by hand, independent of oracle_view
    dev = state["testdev (2)"]
    assert dev["i8"] == "0xfe (-2)"
    assert dev["u64"] == "0x0123456789abcdef"
    assert dev["flag"] is True and dev["off"] is False
    assert dev["buf"] == "00 01 02 fd fe ff"
    assert dev["regs"] == ["0x00000001", "0x00000002", "0xffffffff", "0x80000000"]
    assert dev["inner"]["inner_state/extra"] == {"x": "0x000000000000002a"}
    assert dev["queues"][1] == {"head": "0x0003", "tail": "0x0004"}
    assert dev["slots"] == ["0x0000000a", "0x0000000b", "nullptr", "0x0000000d"]
    assert dev["testdev/sub1"] == {"s": "0xffff (-1)"}


def test_oracle_extracts_ram_pages(tmp_path: Path) -> None:
    b = StreamBuilder()
    _rich_stream(b)
    path = b.write(tmp_path / "rich.mig")
    out = tmp_path / "x"
    out.mkdir()
    proc = run_analyze(path, "-x", cwd=out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name, size in (("pc.ram", 16 * PS), ("/rom@etc/acpi/tables", 2 * PS)):
        want = bytearray(size)
        for off, content in b.memory[name].items():
            want[off : off + PS] = content
        got = (out / name.lstrip("/")).read_bytes()
        assert got == bytes(want), name
    assert b.memory["pc.ram"][0] == page(14)
    assert b.memory["pc.ram"][5 * PS] == bytes(PS)


def test_oracle_without_footers_and_configuration(tmp_path: Path) -> None:
    b = StreamBuilder(footers=False)
    b.header()
    b.ram_start(5, [RamBlock("pc.ram", 4 * PS)])
    b.section_end(5)
    b.ram_page("pc.ram", PS, page(20))
    b.ram_eos()
    b.device(6, "testdev", 2, DEV_DESC, DEV_VALUES)
    b.eof()
    b.vmdescription()
    state = analyze_state(b.write(tmp_path / "nofoot.mig"))
    assert state["testdev (6)"] == oracle_view(DEV_DESC, DEV_VALUES)
    assert not b.footer_offsets


def test_oracle_configuration_subsections_and_mr_addr(tmp_path: Path) -> None:
    uuid = bytes(range(0xA0, 0xB0))
    b = StreamBuilder()
    b.header()
    b.configuration("pc-i440fx-10.0", target_page_bits=12, capabilities=["x-ignore-shared"], uuid=uuid)
    b.ram_start(1, [RamBlock("pc.ram", 8 * PS, mr_addr=0), RamBlock("pc.bios", 2 * PS, mr_addr=0xFFFC0000)])
    b.section_end(1)
    b.ram_page("pc.bios", 0, page(30))
    b.ram_eos()
    b.eof()
    b.vmdescription()
    path = b.write(tmp_path / "cfg.mig")
    state = analyze_state(path)
    assert state["ram (1)"]["section sizes"] == {
        "pc.ram": "0x%016x" % (8 * PS),
        "pc.bios": "0x%016x" % (2 * PS),
    }
    out = tmp_path / "x"
    out.mkdir()
    proc = run_analyze(path, "-x", cwd=out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "pc.bios").read_bytes() == page(30) + bytes(PS)
    assert b.config_desc is not None
    subs = [s["vmsd_name"] for s in b.config_desc["subsections"]]
    assert subs == ["configuration/target-page-bits", "configuration/capabilities", "configuration/uuid"]


def test_oracle_two_capabilities(tmp_path: Path) -> None:
    b = StreamBuilder()
    b.header()
    b.configuration("pc-q35-10.0", capabilities=["validate-uuid", "x-ignore-shared"])
    b.ram_start(1, [RamBlock("pc.ram", 2 * PS, mr_addr=0x100000000)])
    b.eof()
    b.vmdescription()
    state = analyze_state(b.write(tmp_path / "caps.mig"))
    assert state["ram (1)"]["section sizes"] == {"pc.ram": "0x%016x" % (2 * PS)}


def test_oracle_htab_and_storage_attributes(tmp_path: Path) -> None:
    b = StreamBuilder()
    b.header()
    b.configuration("pseries-10.0")
    b.ram_start(1, [RamBlock("ppc_spapr.ram", 4 * PS)])
    b.section_start(2, "spapr/htab", 0, 1)
    b.htab_start_payload(18)
    b.section_start(3, "s390-storage_attributes", 0, 0)
    b.stattr_eos()
    b.section_part(2)
    b.htab_part_header()
    b.htab_chunk(0, [bytes(range(16)), bytes(range(16, 32))], 3)
    b.htab_chunk(100, [], 5)
    b.htab_end_marker()
    b.section_part(3)  # (the script cannot read MORE chunks: checked by hand above)
    b.stattr_eos()
    b.switchover_start()
    b.section_end(1)
    b.ram_eos()
    b.section_end(2)
    b.htab_part_header()
    b.htab_end_marker()
    b.section_end(3)
    b.stattr_done()
    b.stattr_eos()
    b.device(4, "testdev", 0, QUEUE, {"head": 1, "tail": 2})
    b.eof()
    b.vmdescription()
    state = analyze_state(b.write(tmp_path / "special.mig"))
    assert list(state) == ["ram (1)", "spapr/htab (2)", "s390-storage_attributes (3)", "testdev (4)"]
    assert state["testdev (4)"] == {"head": "0x0001", "tail": "0x0002"}


def test_oracle_old_style_section(tmp_path: Path) -> None:
    from builder import oldstyle_entry

    b = StreamBuilder()
    b.header()
    b.configuration("s390-ccw-virtio-10.0")
    blob = bytes([1, 0]) + be64(0x1122334455667788)
    b.section_full(5, "todclock", 0, 1, blob, describe=oldstyle_entry("todclock", 0, len(blob)))
    b.eof()
    b.vmdescription()
    state = analyze_state(b.write(tmp_path / "old.mig"))
    assert state["todclock (5)"] == {"data": " ".join(f"{c:02x}" for c in blob)}


# ---------------------------------------------------------------------------
# the builder against real streams


@pytest.mark.parametrize(
    ("stream_id", "opts"),
    [
        ("qemu-10.0/pc-paused-min", {}),
        ("qemu-7.2/pc-paused-min", {}),
        ("qemu-10.0/pc-x-ignore-shared", {"capabilities": ["x-ignore-shared"]}),
        ("qemu-7.2/pc-x-ignore-shared", {"capabilities": ["x-ignore-shared"]}),
        ("qemu-10.0/pc-validate-uuid", {"uuid": True}),
    ],
)
def test_corpus_header_round_trip(stream_id: str, opts: dict[str, Any]) -> None:
    m = manifest_entry(stream_id)
    real = corpus_head(stream_id, 4096)
    machine = m["sections"]["sequence"][1]
    assert machine.startswith("CONFIG(")
    kw = dict(opts)
    if kw.pop("uuid", False):
        name_len = int.from_bytes(real[9:13], "big")
        start = 13 + name_len + 1 + 1 + len("configuration/uuid") + 4
        kw["uuid"] = real[start : start + 16]
    sections = corpus_sections(stream_id)
    ram_id = sections[2]["id"]
    b = StreamBuilder()
    b.header()
    b.configuration(machine[len("CONFIG(") : -1], **kw)
    blocks = [
        RamBlock(x["name"], x["used_length"], mr_addr=x.get("mr_addr"))
        for x in m["sections"]["ram"]["blocks"]
    ]
    b.ram_start(ram_id, blocks)
    ours = b.data()
    assert ours == real[: len(ours)]
    want = [(r["type"], r["off"]) for r in sections[:3]]
    got = [(r["type"], r["offset"]) for r in b.records]
    assert got == [(t.replace("START", "SECTION_START"), o) for t, o in want]
    assert b.ram_blocks == [
        {"name": x["name"], "size": x["used_length"]} for x in m["sections"]["ram"]["blocks"]
    ]


def corpus_sections(stream_id: str) -> list[JsonObj]:
    path = CORPUS / stream_id / "sections.json.xz"
    if not path.is_file():
        pytest.skip(f"{stream_id}: no sections.json.xz")
    recs: list[JsonObj] = json.loads(lzma.decompress(path.read_bytes()))["records"]
    return recs


@pytest.mark.parametrize(
    ("stream_id", "opts"),
    [
        ("qemu-10.0/pc-x-ignore-shared", {"capabilities": ["x-ignore-shared"]}),
        ("qemu-10.0/pc-validate-uuid", {"uuid": True}),
        ("qemu-10.0/pc-paused-min", {}),
    ],
)
def test_corpus_configuration_json(stream_id: str, opts: dict[str, Any]) -> None:
    data = corpus_head(stream_id)
    vmdesc = trailing_vmdesc(data)
    kw = dict(opts)
    if kw.pop("uuid", False):
        start = 13 + 14 + 1 + 1 + len("configuration/uuid") + 4
        kw["uuid"] = data[start : start + 16]
    b = StreamBuilder()
    b.configuration("pc-i440fx-10.0", **kw)
    assert b.config_desc == vmdesc["configuration"]


def test_corpus_mapped_ram_layout() -> None:
    stream_id = "qemu-10.0/pc-mapped-ram"
    m = manifest_entry(stream_id)
    blocks = m["sections"]["ram"]["blocks"]
    b = StreamBuilder()
    b.header()
    b.configuration(m["sections"]["sequence"][1][len("CONFIG(") : -1], capabilities=["mapped-ram"])
    b.ram_start(1, [RamBlock(x["name"], x["used_length"], mapped_ram=True) for x in blocks])
    for x in blocks:
        lay = b.mapped_ram[x["name"]]
        want = x["mapped_ram"]
        assert (lay.bitmap_offset, lay.pages_offset) == (want["bitmap_offset"], want["pages_offset"])
    real = corpus_head(stream_id, 4096)
    first = b.mapped_ram[blocks[0]["name"]].bitmap_offset
    assert b.data()[:first] == real[:first]
    recs = corpus_sections(stream_id)
    part = next(r for r in recs if r["type"] == "PART")
    assert len(b.data()) == part["off"]


def test_mapped_ram_page_and_bitmap() -> None:
    b = StreamBuilder()
    b.mapped_ram_alignment = PS
    b.section_start(1, "ram", 0, 4)
    b.ram_mem_size([RamBlock("pc.ram", 70 * PS, mapped_ram=True)])
    lay = b.mapped_ram["pc.ram"]
    assert lay.bitmap_offset == 17 + 8 + 7 + 8 + 28
    assert lay.pages_offset == PS  # 16-byte bitmap, page aligned
    b.mapped_ram_page("pc.ram", 65 * PS, page(40))
    eos = b.ram_eos()
    assert eos == lay.pages_offset + 70 * PS
    data = b.data()
    assert data[lay.bitmap_offset : lay.bitmap_offset + 16] == bytes(8) + b"\x02" + bytes(7)
    assert data[lay.pages_offset + 65 * PS : lay.pages_offset + 66 * PS] == page(40)
