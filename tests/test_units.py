"""Unit tests of single pieces: description framing, XBZRLE, special payloads, file names, readers."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from builder import RamBlock, StreamBuilder

import migstream
from migstream.errors import LimitError, StreamFormatError
from migstream.outputs.extract import safe_relpath
from migstream.ram.xbzrle import apply_xbzrle
from migstream.sections.s390_keys_tod import decode_skeys, decode_todclock
from migstream.stream.vmdesc import locate_vmdesc
from migstream.wire.reader import Reader


def _trailer(desc: dict[str, object], padding: int = 0) -> bytes:
    text = json.dumps(desc).encode()
    return b"\x00\x06" + struct.pack(">I", len(text)) + text + bytes(padding)


@pytest.mark.parametrize("padding", [0, 1, 1024, 70000])
def test_vmdesc_found_with_trailing_zero_padding(padding: int) -> None:
    desc = {"page_size": 4096, "devices": []}
    buf = memoryview(b"QEVM\x00\x00\x00\x03" + b"x" * 100 + _trailer(desc, padding))
    found = locate_vmdesc(buf)
    assert found is not None and found.data == desc and found.offset == 109


def test_vmdesc_framing_must_agree() -> None:
    good = _trailer({"devices": []})
    bad_len = good[:2] + struct.pack(">I", 5) + good[6:]
    assert locate_vmdesc(memoryview(b"QEVM" + bad_len)) is None
    not_json = b"\x00\x06" + struct.pack(">I", 5) + b"{abc}"
    assert locate_vmdesc(memoryview(b"QEVM" + not_json)) is None
    assert locate_vmdesc(memoryview(b"QEVM\x00\x00\x00\x03}")) is None


def test_xbzrle_applies_runs_and_keeps_the_rest() -> None:
    page = bytearray(b"A" * 4096)
    # unchanged 10, literal 3 "xyz"; unchanged 200 (two-byte ULEB128: 0xc8 0x01), literal 1 "!"
    apply_xbzrle(bytes([10, 3]) + b"xyz" + bytes([0xC8, 0x01, 1]) + b"!", page)
    assert page[10:13] == b"xyz" and page[213:214] == b"!" and page.count(b"A") == 4092


@pytest.mark.parametrize("delta", [bytes([0, 0]), bytes([5, 200]) + b"x", bytes([0x80, 0x80, 0x01])])
def test_xbzrle_rejects_malformed_deltas(delta: bytes) -> None:
    with pytest.raises(StreamFormatError):
        apply_xbzrle(delta, bytearray(4096))


def test_skeys_and_todclock_payloads() -> None:
    skeys = struct.pack(">QQ", 0x2, 3) + bytes([6, 0, 6]) + struct.pack(">Q", 0x1)
    assert decode_skeys(Reader(memoryview(skeys)), "SECTION_FULL") == {"pages": 3, "nonzero_keys": 2}
    tod = bytes([1, 2]) + struct.pack(">Q", 12345)
    assert decode_todclock(Reader(memoryview(tod)), "SECTION_FULL") == {
        "present": True,
        "tod_high": 2,
        "tod_low": 12345,
    }
    huge = struct.pack(">QQ", 0x2, 1 << 60)
    with pytest.raises(LimitError):
        decode_skeys(Reader(memoryview(huge)), "SECTION_FULL")


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("pc.ram", "pc.ram"),
        ("/rom@etc/acpi/tables", "rom@etc/acpi/tables"),
        ("../../etc/passwd", "etc/passwd"),
        ("a/./b/../c", "a/b/c"),
        ("", "_"),
        ("bad\x00name\n", "bad_name_"),
        ("..", "_"),
    ],
)
def test_block_names_become_safe_relative_paths(name: str, want: str) -> None:
    assert safe_relpath(name) == want


def _small_stream(tmp_path: Path) -> Path:
    b = StreamBuilder()
    b.header()
    b.configuration("pc-i440fx-10.0")
    b.section_start(1, "ram", 0, 4)
    b.ram_mem_size([RamBlock("pc.ram", 1 << 20)])
    b.ram_eos()
    b.section_part(1)
    b.ram_page("pc.ram", 0x3000, b"\x11" * 4096)
    b.ram_page("pc.ram", 0x3000, b"\x22" * 4096)  # sent twice: the last copy wins
    b.ram_zero("pc.ram", 0x4000, fill=0)
    b.ram_eos()
    b.eof()
    path = tmp_path / "s.mig"
    path.write_bytes(b.data())
    return path


def test_last_copy_wins_and_readers_seek(tmp_path: Path) -> None:
    with migstream.open(_small_stream(tmp_path)) as s:
        ram = s.block("pc.ram")
        ram.seek(0x3000)
        assert ram.read(4) == b"\x22" * 4
        assert ram.pread(0x2FFE, 4) == b"\x00\x00\x22\x22"
        assert ram.pread(0x4000, 4096) == bytes(4096)
        phys = s.physical()
        assert phys.pread(0x3000, 2) == b"\x22\x22"
        assert phys.pread((1 << 20) - 1, 10) == b"\x00"  # reads stop at the end of memory


def test_memory_from_stdin_and_map_override(tmp_path: Path) -> None:
    stream = _small_stream(tmp_path)
    out = tmp_path / "phys.raw"
    cli = [sys.executable, "-m", "migstream", "memory", "-", "-o", str(out), "--map", "pc.ram=0x100000"]
    with open(stream, "rb") as f:
        proc = subprocess.run(cli, stdin=f, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    with open(out, "rb") as f:
        f.seek(0x100000 + 0x3000)
        assert f.read(4) == b"\x22" * 4


def test_extract_refuses_to_overwrite_and_stays_inside(tmp_path: Path) -> None:
    stream = _small_stream(tmp_path)
    outdir = tmp_path / "out"
    cli = [sys.executable, "-m", "migstream", "extract", str(stream), "-o", str(outdir)]
    first = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    index = json.loads((outdir / "index.json").read_text())
    assert index["blocks"] == [{"block": "pc.ram", "file": "ram/pc.ram", "size": 1 << 20}]
    again = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and "--force" in again.stderr and len(again.stderr.splitlines()) == 1
    forced = subprocess.run([*cli, "--force"], capture_output=True, text=True, timeout=60)
    assert forced.returncode == 0, forced.stderr
    assert os.path.getsize(outdir / "ram" / "pc.ram") == 1 << 20


def test_huge_announced_block_does_not_allocate(tmp_path: Path) -> None:
    """A block of 1 PiB with one page near its end: info works, memory says no in one line."""
    b = StreamBuilder()
    b.header()
    b.configuration("pc-i440fx-10.0")
    b.section_start(1, "ram", 0, 4)
    b.ram_mem_size([RamBlock("pc.ram", 1 << 50)])
    b.ram_eos()
    b.section_part(1)
    b.ram_page("pc.ram", (1 << 50) - 4096, b"\x33" * 4096)
    b.ram_eos()
    b.eof()
    path = tmp_path / "huge.mig"
    path.write_bytes(b.data())
    info = subprocess.run(
        [sys.executable, "-m", "migstream", "info", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert info.returncode == 0, info.stderr
    mem = subprocess.run(
        [sys.executable, "-m", "migstream", "memory", str(path), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert mem.returncode != 0 and len(mem.stderr.splitlines()) == 1 and "Traceback" not in mem.stderr


@pytest.mark.parametrize(
    ("ftype", "raw", "value", "script_text"),
    [
        ("uint8 equal", b"\xff", 255, "0xff (-1)"),
        ("uint16 equal", b"\x80\x01", 0x8001, "0x8001 (-32767)"),
        ("int32 equal", b"\xff\xff\xff\xfe", -2, "0xfffffffe (-2)"),
        ("uint32 equal", b"\xff\xff\xff\xfe", 0xFFFFFFFE, "0xfffffffe"),
    ],
)
def test_equal_types_unsigned_except_in_the_script_output(
    ftype: str, raw: bytes, value: int, script_text: str
) -> None:
    """QEMU reads uintN equal unsigned; only the drop-in output keeps the script's signed reading."""
    from migstream.outputs.analyze_migration import _leaf
    from migstream.vmstate.decoder import VmstateDecoder

    desc = {"vmsd_name": "t", "fields": [{"name": "x", "type": ftype, "size": len(raw)}]}
    state = VmstateDecoder("t").decode_vmsd(Reader(memoryview(raw)), desc)
    assert state["x"].value == value
    assert _leaf(state["x"]) == script_text
