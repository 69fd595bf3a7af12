"""CLI-level record tests: byte-exact builder streams -> ``migstream info FILE --json``.

Each stream is written by tests/builder.py, which logs every record it writes in
the shape of the CLI contract; the tests compare the CLI's ``records`` and
``ram_blocks`` with that log the way ``corpus-check`` does (records of the
contract types only, keys type/offset/section_id/name/instance_id/version_id/
command; ``name`` of PART/END checked when present).  A few offsets are also
written out by hand.  Error cases check the contract's error rules: non-zero
exit, exactly one stderr line that names the byte offset, no traceback.

The stream recipes at the top are shared with tests/test_robust.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from builder import (
    CONTRACT_TYPES,
    MIG_CMD_OPEN_RETURN_PATH,
    MIG_CMD_PACKAGED,
    MIG_CMD_PING,
    MIG_CMD_POSTCOPY_ADVISE,
    MIG_CMD_SWITCHOVER_START,
    VFIO_MIG_FLAG_DEV_SETUP_STATE,
    VFIO_MIG_FLAG_END_OF_STATE,
    JsonObj,
    RamBlock,
    StreamBuilder,
    be32,
    oldstyle_entry,
)

PS = 4096
ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "migstream.cli.main"]
CALL_TIMEOUT = 60  # hang guard only
RECORD_KEYS = ("type", "offset", "section_id", "name", "instance_id", "version_id", "command")

# ---------------------------------------------------------------------------
# stream recipes


def pg(seed: int) -> bytes:
    """A deterministic, non-zero page."""
    head = f"page-{seed:08d}".encode()
    return (head * (PS // len(head) + 1))[:PS]


BLOCKS = [RamBlock("pc.ram", 32 * PS), RamBlock("/rom@etc/acpi/tables", 2 * PS), RamBlock("pc.bios", 4 * PS)]

TIMER_DESC: JsonObj = {
    "vmsd_name": "timer",
    "version": 2,
    "fields": [
        {"name": "cpu_ticks_offset", "type": "int64"},
        {"name": "unused", "type": "unused_buffer", "size": 8},
        {"name": "cpu_clock_offset", "type": "int64"},
    ],
}
TIMER_VALUES: dict[str, Any] = {"cpu_ticks_offset": -5, "unused": None, "cpu_clock_offset": 1 << 33}

QUEUE_DESC: JsonObj = {
    "vmsd_name": "queue",
    "version": 1,
    "fields": [{"name": "head", "type": "uint16"}, {"name": "tail", "type": "uint16"}],
}

DEVICE_DESC: JsonObj = {
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
        {"name": "enabled", "type": "bool"},
        {"name": "halted", "type": "bool"},
        {"name": "mac", "type": "buffer", "size": 6},
        {"name": "regs", "type": "uint32", "array_len": 4},
        {
            "name": "ring",
            "type": "struct",
            "struct": {
                "vmsd_name": "ring",
                "version": 1,
                "fields": [{"name": "base", "type": "uint64"}, {"name": "size", "type": "uint16"}],
                "subsections": [
                    {"vmsd_name": "ring/extra", "version": 1, "fields": [{"name": "flags", "type": "uint32"}]}
                ],
            },
        },
        {"name": "queues", "type": "struct", "array_len": 2, "struct": QUEUE_DESC},
        {"name": "ptr", "type": "nullptr"},
    ],
    "subsections": [
        {"vmsd_name": "testdev/sub", "version": 2, "fields": [{"name": "extra", "type": "int16"}]},
    ],
}

DEVICE_VALUES: dict[str, Any] = {
    "u8": 200,
    "i8": -100,
    "u16": 0xBEEF,
    "i16": -2,
    "u32": 0xDEADBEEF,
    "i32": -123456,
    "u64": 0xFEDCBA9876543210,
    "i64": -(1 << 50),
    "enabled": True,
    "halted": False,
    "mac": bytes.fromhex("525400123456"),
    "regs": [0, 1, 0xFFFFFFFF, 0x12345678],
    "ring": {"base": 0x7FF000, "size": 256, "ring/extra": {"flags": 3}},
    "queues": [{"head": 1, "tail": 2}, {"head": 30, "tail": 40}],
    "ptr": None,
    "testdev/sub": {"extra": -7},
}


def add_devices(b: StreamBuilder, first_id: int = 10) -> None:
    b.device(0, "timer", 0, TIMER_DESC, TIMER_VALUES)
    b.device(first_id, "0000:00:03.0/testdev", 0, DEVICE_DESC, DEVICE_VALUES)
    b.device(first_id + 1, "queue", 1, QUEUE_DESC, {"head": 5, "tail": 6})


def finish(b: StreamBuilder, ram_section: int = 1) -> StreamBuilder:
    """The usual end of a precopy stream: switchover, an empty RAM END, the devices, EOF, description."""
    b.switchover_start()
    b.section_end(ram_section)
    b.ram_eos()
    add_devices(b)
    b.eof()
    b.vmdescription()
    return b


def precopy_stream(
    *,
    footers: bool = True,
    config: bool = True,
    vmdesc: bool = True,
    padding: int = 0,
    switchover: bool = True,
) -> StreamBuilder:
    """Header, config, RAM START/PART/PART/END (CONTINUE across sections, page 0
    sent three times), devices, EOF, vmdesc."""
    b = StreamBuilder(footers=footers)
    b.header()
    if config:
        b.configuration("pc-i440fx-10.0")
    b.ram_start(2, BLOCKS)
    b.section_part(2)
    b.ram_page("pc.ram", 0, pg(1))
    b.ram_page("pc.ram", PS, pg(2))
    b.ram_zero("pc.ram", 2 * PS)
    b.ram_page("/rom@etc/acpi/tables", PS, pg(3))
    b.ram_eos()
    b.section_part(2)
    b.ram_page("/rom@etc/acpi/tables", 0, pg(4))  # CONTINUE from the previous section
    b.ram_page("pc.ram", 0, pg(5))  # second iteration
    b.ram_eos()
    if switchover:
        b.switchover_start()
    b.section_end(2)
    b.ram_page("pc.ram", 0, pg(6), cont=True)  # third iteration, CONTINUE
    b.ram_zero("pc.bios", 3 * PS)
    b.ram_eos()
    add_devices(b)
    b.eof()
    if vmdesc:
        b.vmdescription(padding=padding)
    return b


def every_command_stream() -> StreamBuilder:
    inner = StreamBuilder()
    inner.ping(7)
    b = StreamBuilder()
    b.header()
    b.configuration("pc-i440fx-10.0")
    b.open_return_path()
    b.ping(1)
    b.postcopy_advise(PS, PS)
    b.postcopy_advise()
    b.enable_colo()
    b.postcopy_listen()
    b.postcopy_run()
    b.postcopy_ram_discard("pc.ram", [(0, PS), (8 * PS, 4 * PS)])
    b.packaged(inner)
    b.postcopy_resume()
    b.recv_bitmap("pc.ram")
    b.switchover_start()
    b.eof()
    return b


def postcopy_stream() -> StreamBuilder:
    """Postcopy shape: advise, RAM, discards, PING(2), PACKAGED(listen, devices,
    PING(3), PING(0x42), run), PING(4), postcopy RAM, END, EOF; no vmdesc."""
    b = StreamBuilder()
    b.header()
    b.configuration("pc-i440fx-10.0")
    b.open_return_path()
    b.ping(1)
    b.postcopy_advise(PS, PS)
    b.ram_start(1, BLOCKS)
    b.section_part(1)
    for i in range(4):
        b.ram_page("pc.ram", i * PS, pg(10 + i))
    b.ram_eos()
    b.section_part(1)  # save_postcopy_prepare: just EOS
    b.ram_eos()
    b.switchover_start()
    b.postcopy_ram_discard("pc.ram", [(0, PS), (2 * PS, 2 * PS)])
    b.postcopy_ram_discard("pc.bios", [(PS, PS)])
    b.ping(2)
    inner = StreamBuilder()
    inner.postcopy_listen()
    add_devices(inner)
    inner.ping(3)
    inner.ping(0x42)
    inner.postcopy_run()
    b.packaged(inner)
    b.ping(4)
    b.section_part(1)
    b.ram_page("pc.ram", 0, pg(20), cont=False)
    b.ram_zero("pc.ram", 2 * PS)
    b.ram_page("pc.ram", 3 * PS, pg(21))
    b.ram_eos()
    b.section_end(1)
    b.ram_eos()
    b.eof()
    return b


def xbzrle_stream() -> StreamBuilder:
    b = StreamBuilder()
    b.header()
    b.configuration("pc-i440fx-10.0")
    b.ram_start(1, BLOCKS)
    b.section_part(1)
    for i in range(3):
        b.ram_page("pc.ram", i * PS, pg(30 + i))
    b.ram_eos()
    b.section_part(1)
    p0 = bytearray(pg(30))
    p0[100:104] = b"\x01\x02\x03\x04"
    b.ram_xbzrle("pc.ram", 0, bytes(p0))
    p2 = bytearray(pg(32))
    p2[0] ^= 0xFF
    p2[-1] ^= 0xFF
    b.ram_xbzrle("pc.ram", 2 * PS, bytes(p2))
    b.ram_eos()
    b.switchover_start()
    b.section_end(1)
    p0[4000:4090] = bytes(90)
    b.ram_xbzrle("pc.ram", 0, bytes(p0))
    b.ram_eos()
    add_devices(b)
    b.eof()
    b.vmdescription()
    return b


def compress_stream() -> StreamBuilder:
    b = StreamBuilder()
    b.header()
    b.configuration("pc-i440fx-7.2")
    b.ram_start(3, BLOCKS)
    b.section_part(3)
    b.ram_compress_page("pc.ram", 0, pg(40))
    b.ram_compress_page("pc.ram", PS, pg(41), level=9)
    b.ram_zero("pc.ram", 2 * PS)
    b.ram_compress_page("pc.bios", 0, bytes(PS))
    b.ram_page("pc.bios", PS, pg(42))
    b.ram_eos()
    b.section_end(3)
    b.ram_compress_page("pc.bios", 2 * PS, pg(43))
    b.ram_eos()
    add_devices(b)
    b.eof()
    b.vmdescription()
    return b


def multifd_flush_stream() -> StreamBuilder:
    b = StreamBuilder()
    b.header()
    b.configuration("pc-i440fx-10.0")
    b.ram_start(1, BLOCKS, multifd_flush=True)
    b.section_part(1)
    b.ram_zero("pc.ram", 0)
    b.ram_multifd_flush()
    b.ram_eos()
    b.section_part(1)
    b.ram_multifd_flush()
    b.ram_eos()
    return finish(b)


def mapped_ram_stream(alignment: int = PS) -> StreamBuilder:
    b = StreamBuilder()
    b.mapped_ram_alignment = alignment
    b.header()
    b.configuration("pc-i440fx-10.0", capabilities=["mapped-ram"])
    blocks = [RamBlock(x.name, x.used_length, mapped_ram=True) for x in BLOCKS]
    b.ram_start(1, blocks)
    b.mapped_ram_page("pc.ram", 0, pg(50))
    b.mapped_ram_page("pc.ram", 31 * PS, pg(51))
    b.mapped_ram_page("pc.bios", PS, pg(52))
    b.section_part(1)
    b.ram_eos()
    return finish(b)


def ignore_shared_stream() -> StreamBuilder:
    b = StreamBuilder()
    b.header()
    b.configuration("pc-i440fx-10.0", capabilities=["x-ignore-shared"])
    blocks = [
        RamBlock("pc.ram", 32 * PS, mr_addr=0),
        RamBlock("/rom@etc/acpi/tables", 2 * PS, mr_addr=0),
        RamBlock("pc.bios", 4 * PS, mr_addr=0xFFFC0000),
    ]
    b.ram_start(1, blocks)
    b.section_part(1)
    b.ram_page("pc.bios", 0, pg(60))  # pc.ram is shared: never sent
    b.ram_eos()
    return finish(b)


def hugepage_postcopy_stream() -> StreamBuilder:
    """Postcopy-capable source with a 2 MiB hugepage block: page_size in the block list."""
    b = StreamBuilder()
    b.header()
    b.configuration("pc-i440fx-10.0")
    b.open_return_path()
    b.ping(1)
    b.postcopy_advise(0x200000 | PS, PS)
    blocks = [RamBlock("pc.ram", 0x400000, page_size=0x200000), RamBlock("pc.bios", 4 * PS)]
    b.ram_start(1, blocks)
    b.section_part(1)
    b.ram_page("pc.ram", 0x200000, pg(70))
    b.ram_page("pc.bios", 0, pg(71))
    b.ram_eos()
    return finish(b)


def special_sections_stream() -> StreamBuilder:
    """block, dirty-bitmap, spapr/htab, s390-storage_attributes and vfio sections."""
    b = StreamBuilder()
    b.header()
    b.configuration("pc-i440fx-7.2")
    b.open_return_path()
    b.ping(1)
    b.postcopy_advise()  # 0-byte form: dirty-bitmap postcopy only
    b.section_start(1, "block", 0, 1)
    b.block_chunk("raw0", 0, None)
    b.block_eos()
    b.ram_start(2, BLOCKS)
    b.section_start(3, "dirty-bitmap", 0, 1)
    b.dirty_bitmap_start("disk0", "bm0")
    b.dirty_bitmap_start("disk0", "bm1", 4096, 0x01)
    b.dirty_bitmap_eos()
    b.section_start(4, "spapr/htab", 0, 1)
    b.htab_start_payload(24)
    b.section_start(5, "s390-storage_attributes", 0, 0)
    b.stattr_eos()
    b.section_start(6, "0000:00:05.0/vfio", 0, 1)
    b.vfio_tag(VFIO_MIG_FLAG_DEV_SETUP_STATE)
    b.vfio_tag(VFIO_MIG_FLAG_END_OF_STATE)
    b.section_part(1)
    b.block_chunk("raw0", 2048, bytes(range(256)) * 4096)
    b.block_progress(50)
    b.block_eos()
    b.section_part(2)
    b.ram_page("pc.ram", 0, pg(80))
    b.ram_eos()
    b.section_part(4)
    b.htab_part_header()
    b.htab_chunk(0, [bytes(range(16))], 2)
    b.htab_end_marker()
    b.section_part(5)
    b.stattr_more(0x100, bytes([1, 2, 3]))
    b.stattr_eos()
    b.section_part(6)
    b.vfio_data(b"vendor-state-chunk")
    b.vfio_tag(VFIO_MIG_FLAG_END_OF_STATE)
    b.switchover_start()
    b.section_end(1)
    b.block_progress(100)
    b.block_eos()
    b.section_end(2)
    b.ram_eos()
    b.section_end(3)
    b.dirty_bitmap_bits("disk0", "bm0", 0, 128, bytes(32))
    b.dirty_bitmap_bits("disk0", "bm0", 128, 128, None)
    b.dirty_bitmap_complete("disk0", "bm0")
    b.dirty_bitmap_complete("disk0", "bm1")
    b.dirty_bitmap_eos()
    b.section_end(4)
    b.htab_part_header()
    b.htab_chunk(8, [bytes(16), bytes(range(16, 32))])
    b.htab_end_marker()
    b.section_end(5)
    b.stattr_more(0x200, bytes([4]))
    b.stattr_done()
    b.stattr_eos()
    b.section_end(6)
    b.vfio_data(b"final")
    b.vfio_tag(VFIO_MIG_FLAG_END_OF_STATE)
    add_devices(b, first_id=20)
    cfg = b"\x01\x02\x03\x04"
    full = b.section_full(6, "0000:00:05.0/vfio", 0, 1)
    b.vfio_config(cfg)
    size = b.offset - full - (1 + 4 + 1 + len("0000:00:05.0/vfio") + 8)
    b.devices.append(oldstyle_entry("0000:00:05.0/vfio", 0, size))
    b.eof()
    b.vmdescription()
    return b


# ---------------------------------------------------------------------------
# CLI plumbing


def run_cli(*args: str, timeout: float = CALL_TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*CLI, *args], capture_output=True, timeout=timeout, cwd=ROOT)


def stderr_lines(proc: subprocess.CompletedProcess[bytes]) -> list[str]:
    return [x for x in proc.stderr.decode("utf-8", "replace").splitlines() if x.strip()]


def cli_json(*args: str) -> Any:
    proc = run_cli(*args)
    err = proc.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err[-3000:]
    assert proc.returncode == 0, f"exit {proc.returncode}: {err[-1000:]}"
    return json.loads(proc.stdout)


def info_json(path: Path) -> JsonObj:
    out = cli_json("info", str(path), "--json")
    assert isinstance(out, dict)
    return out


def _describe(rec: Any) -> str:
    if not isinstance(rec, dict):
        return repr(rec)
    return " ".join(f"{k}={rec[k]!r}" for k in RECORD_KEYS if k in rec)


def assert_records(got_all: Iterable[Any], want: list[JsonObj]) -> None:
    """Compare like corpus-check: contract types only, contract keys only."""
    got = [r for r in got_all if not isinstance(r, dict) or r.get("type") in CONTRACT_TYPES]
    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        assert isinstance(g, dict), f"record #{i} is not an object: {g!r}"
        ctx = f"record #{i}: got {_describe(g)}; want {_describe(w)}"
        assert (g.get("type"), g.get("offset")) == (w["type"], w["offset"]), ctx
        t = w["type"]
        if t.startswith("SECTION_"):
            assert g.get("section_id") == w["section_id"], ctx
            if t in ("SECTION_START", "SECTION_FULL"):
                for k in ("name", "instance_id", "version_id"):
                    assert g.get(k) == w[k], ctx
            elif "name" in g:
                assert g["name"] == w.get("name"), ctx
        if t == "COMMAND":
            assert g.get("command") == w["command"], ctx
    if len(got) != len(want):
        i = min(len(got), len(want))
        extra = _describe(got[i]) if len(got) > i else "nothing"
        more = _describe(want[i]) if len(want) > i else "nothing"
        raise AssertionError(f"{len(got)} records, want {len(want)}; #{i}: got {extra}, want {more}")


def assert_info(b: StreamBuilder, path: Path) -> JsonObj:
    got = info_json(path)
    want = b.expected_info()
    assert isinstance(got.get("records"), list), "no records list"
    assert_records(got["records"], want["records"])
    blocks = got.get("ram_blocks")
    assert isinstance(blocks, list), "no ram_blocks list"
    assert [(x.get("name"), x.get("size")) for x in blocks] == [
        (x["name"], x["size"]) for x in want["ram_blocks"]
    ]
    return got


def mentions_offset(text: str, offsets: Iterable[int]) -> bool:
    for off in offsets:
        pat = rf"(?<![0-9A-Za-z])(?:{off}|0x0*{off:x})(?![0-9A-Fa-f])"
        if re.search(pat, text, re.IGNORECASE):
            return True
    return False


def assert_clean_error(path: Path, offsets: Iterable[int], *words: str) -> str:
    """Non-zero exit, exactly one stderr line naming one of ``offsets`` (and each
    regex in ``words``), no traceback, no internal error."""
    offs = list(offsets)
    proc = run_cli("info", str(path), "--json")
    err = proc.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err[-3000:]
    assert proc.returncode != 0, "exit 0 on a broken stream"
    lines = stderr_lines(proc)
    assert len(lines) == 1, f"want one stderr line, got {len(lines)}: {err[-1000:]}"
    line = lines[0]
    assert "internal error" not in line.lower(), line
    assert mentions_offset(line, offs), f"error names none of the offsets {[hex(o) for o in offs]}: {line}"
    for w in words:
        assert re.search(w, line, re.IGNORECASE), f"error lacks {w!r}: {line}"
    return line


# ---------------------------------------------------------------------------
# records


def test_precopy_stream_records(tmp_path: Path) -> None:
    b = precopy_stream()
    got = assert_info(b, b.write(tmp_path / "s.mig"))
    recs = [r for r in got["records"] if r.get("type") in CONTRACT_TYPES]
    # a few offsets written out by hand
    assert recs[0] == {**recs[0], "type": "HEADER", "offset": 0}
    assert (recs[1]["type"], recs[1]["offset"]) == ("CONFIGURATION", 8)
    assert (recs[2]["type"], recs[2]["offset"]) == ("SECTION_START", 27)
    ram_start_len = 1 + 4 + 4 + 4 + 4 + 8 + sum(1 + len(x.name) + 8 for x in BLOCKS) + 8 + 5
    assert (recs[3]["type"], recs[3]["offset"]) == ("SECTION_PART", 27 + ram_start_len)


def test_every_command(tmp_path: Path) -> None:
    b = every_command_stream()
    got = assert_info(b, b.write(tmp_path / "cmds.mig"))
    cmds = [r["command"] for r in got["records"] if r.get("type") == "COMMAND"]
    assert cmds == [
        "OPEN_RETURN_PATH",
        "PING",
        "POSTCOPY_ADVISE",
        "POSTCOPY_ADVISE",
        "ENABLE_COLO",
        "POSTCOPY_LISTEN",
        "POSTCOPY_RUN",
        "POSTCOPY_RAM_DISCARD",
        "PACKAGED",
        "PING",
        "POSTCOPY_RESUME",
        "RECV_BITMAP",
        "SWITCHOVER_START",
    ]
    assert got["ram_blocks"] == []


def test_postcopy_package_outer_offsets(tmp_path: Path) -> None:
    b = postcopy_stream()
    got = assert_info(b, b.write(tmp_path / "postcopy.mig"))
    recs = [r for r in got["records"] if r.get("type") in CONTRACT_TYPES]
    i = next(k for k, r in enumerate(recs) if r.get("command") == "PACKAGED")
    pk = recs[i]["offset"]
    data = b.data()
    assert data[pk : pk + 5] == bytes.fromhex("0800070004")
    assert recs[i + 1]["offset"] == pk + 9 and recs[i + 1]["command"] == "POSTCOPY_LISTEN"
    assert recs[i + 2]["offset"] == pk + 14 and recs[i + 2]["type"] == "SECTION_FULL"
    assert recs[-1]["type"] == "EOF" and recs[-1]["offset"] == len(data) - 1


def test_without_footers(tmp_path: Path) -> None:
    b = precopy_stream(footers=False)
    assert not b.footer_offsets
    assert_info(b, b.write(tmp_path / "nofooter.mig"))


def test_without_configuration_and_footers(tmp_path: Path) -> None:
    b = precopy_stream(footers=False, config=False, switchover=False)
    assert_info(b, b.write(tmp_path / "old.mig"))


def test_without_configuration(tmp_path: Path) -> None:
    b = precopy_stream(config=False)
    got = assert_info(b, b.write(tmp_path / "noconfig.mig"))
    assert got["records"][1]["type"] == "SECTION_START" and got["records"][1]["offset"] == 8


def test_without_vmdesc(tmp_path: Path) -> None:
    b = precopy_stream(vmdesc=False)
    got = assert_info(b, b.write(tmp_path / "novmdesc.mig"))
    assert [r for r in got["records"] if r.get("type") in CONTRACT_TYPES][-1]["type"] == "EOF"


def test_vmdesc_followed_by_zero_padding(tmp_path: Path) -> None:
    b = precopy_stream(padding=1536)
    data = b.data()
    assert data.endswith(bytes(1536))
    assert_info(b, b.write(tmp_path / "padded.mig"))


def test_xbzrle(tmp_path: Path) -> None:
    b = xbzrle_stream()
    assert_info(b, b.write(tmp_path / "xbzrle.mig"))


def test_compress_page(tmp_path: Path) -> None:
    b = compress_stream()
    assert_info(b, b.write(tmp_path / "compress.mig"))


def test_multifd_flush(tmp_path: Path) -> None:
    b = multifd_flush_stream()
    assert_info(b, b.write(tmp_path / "flush.mig"))


@pytest.mark.parametrize("alignment", [PS, 0x100000])
def test_mapped_ram(tmp_path: Path, alignment: int) -> None:
    b = mapped_ram_stream(alignment)
    got = assert_info(b, b.write(tmp_path / "mapped.mig"))
    part = next(r for r in got["records"] if r.get("type") == "SECTION_PART")
    last = b.mapped_ram["pc.bios"]
    assert part["offset"] == last.pages_offset + 4 * PS + 8 + 5  # after the jump, EOS, footer


def test_x_ignore_shared_mr_addr(tmp_path: Path) -> None:
    b = ignore_shared_stream()
    assert_info(b, b.write(tmp_path / "shared.mig"))


def test_postcopy_hugepage_block_page_size(tmp_path: Path) -> None:
    b = hugepage_postcopy_stream()
    assert_info(b, b.write(tmp_path / "huge.mig"))


def test_special_sections(tmp_path: Path) -> None:
    b = special_sections_stream()
    got = assert_info(b, b.write(tmp_path / "special.mig"))
    names = [r.get("name") for r in got["records"] if r.get("type") == "SECTION_START"]
    assert names == [
        "block",
        "ram",
        "dirty-bitmap",
        "spapr/htab",
        "s390-storage_attributes",
        "0000:00:05.0/vfio",
    ]


def test_full_sections_unknown_to_vmdesc(tmp_path: Path) -> None:
    """FULL sections the vmdesc does not list (and an old-style blob) are still listed."""
    b = StreamBuilder()
    b.header()
    b.configuration("pc-i440fx-10.0")
    b.section_full(3, "slirp", 0, 4, b"\x00\x11\x22\x33\x44")
    b.device(4, "queue", 0, QUEUE_DESC, {"head": 1, "tail": 2}, describe=False)
    add_devices(b)
    b.eof()
    b.vmdescription()
    assert_info(b, b.write(tmp_path / "undescribed.mig"))


# ---------------------------------------------------------------------------
# errors


def _ram_part_stream() -> tuple[StreamBuilder, int]:
    b = StreamBuilder()
    b.header()
    b.configuration("pc-i440fx-10.0")
    b.ram_start(1, BLOCKS)
    return b, b.section_part(1)


def test_error_version_2_header(tmp_path: Path) -> None:
    b = StreamBuilder()
    b.header(version=2)
    b.eof()
    assert_clean_error(b.write(tmp_path / "v2.mig"), [0, 4], r"version")


def test_error_unknown_command(tmp_path: Path) -> None:
    b2 = StreamBuilder()
    b2.header()
    b2.configuration("pc-i440fx-10.0")
    bad = b2.command(0x63, b"\x00\x00")
    b2.eof()
    assert_clean_error(b2.write(tmp_path / "cmd.mig"), [bad, bad + 1], r"command")


@pytest.mark.parametrize(
    ("cmd", "name", "length", "expect"),
    [
        (MIG_CMD_PING, "PING", 7, 4),
        (MIG_CMD_OPEN_RETURN_PATH, "OPEN_RETURN_PATH", 2, 0),
        (MIG_CMD_PACKAGED, "PACKAGED", 2, 4),
        (MIG_CMD_POSTCOPY_ADVISE, "POSTCOPY_ADVISE", 8, 16),
    ],
)
def test_error_wrong_command_length(tmp_path: Path, cmd: int, name: str, length: int, expect: int) -> None:
    b = StreamBuilder()
    b.header()
    b.configuration("pc-i440fx-10.0")
    bad = b.command(cmd, bytes(length))
    b.eof()
    line = assert_clean_error(b.write(tmp_path / "len.mig"), [bad, bad + 1, bad + 3], name)
    assert mentions_offset(line, [length]) and mentions_offset(line, [expect]), line


def test_error_switchover_start_with_payload(tmp_path: Path) -> None:
    b = StreamBuilder()
    b.header()
    bad = b.command(MIG_CMD_SWITCHOVER_START, b"\x00\x00\x00")
    b.eof()
    line = assert_clean_error(b.write(tmp_path / "sw.mig"), [bad, bad + 1, bad + 3], "SWITCHOVER_START")
    assert mentions_offset(line, [3]), line


def test_error_ram_hook(tmp_path: Path) -> None:
    b, _ = _ram_part_stream()
    b.ram_page("pc.ram", 0, pg(1))
    hook = b.ram_hook()
    b.ram_eos()
    b.eof()
    assert_clean_error(b.write(tmp_path / "hook.mig"), [hook], r"hook|rdma")


def test_error_bad_footer(tmp_path: Path) -> None:
    b = StreamBuilder()
    b.header()
    b.configuration("pc-i440fx-10.0")
    b.ram_start(1, BLOCKS)
    b.section_part(1, footer=0x99)
    b.ram_eos()
    footer = b.close_section()
    assert footer is not None
    b.eof()
    assert_clean_error(b.write(tmp_path / "footer.mig"), [footer, footer + 1], r"footer")


def test_error_continue_without_block(tmp_path: Path) -> None:
    b, _ = _ram_part_stream()
    bad = b.ram_page("pc.ram", 0, pg(1), cont=True)
    b.ram_eos()
    b.eof()
    assert_clean_error(b.write(tmp_path / "cont.mig"), [bad], r"continue|previous|block")


def test_error_unknown_iterative_section(tmp_path: Path) -> None:
    """An undescribed START payload cannot be sized: a clean error, not a guess."""
    b = StreamBuilder()
    b.header()
    b.configuration("pc-i440fx-10.0")
    bad = b.section_start(9, "0000:00:07.0/mystery", 0, 1, b"\x12\x34\x56\x78" * 8)
    b.eof()
    path = b.write(tmp_path / "mystery.mig")
    proc = run_cli("info", str(path), "--json")
    err = proc.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err
    if proc.returncode == 0:
        # recovering through the footer is allowed; then the records must be right
        assert_info(b, path)
        return
    assert len(stderr_lines(proc)) == 1, err
    assert mentions_offset(err, [bad, bad + 5]) or "mystery" in err, err


# ---------------------------------------------------------------------------
# state


def expected_state_values(desc: JsonObj, values: dict[str, Any]) -> JsonObj:
    """The decoded values as `migstream state --json` should show them: numbers as
    numbers, bools as bools, bytes as hex strings, structs as objects, arrays as
    lists, subsections under their vmsd name, NULL pointers as null.  Change
    this one function if the JSON shape changes."""

    def one(f: JsonObj, v: Any) -> Any:
        if f["type"] == "struct":
            return expected_state_values(f["struct"], v)
        if isinstance(v, (bytes, bytearray)):
            return bytes(v).hex()
        if f["type"] == "unused_buffer" and v is None:
            return bytes(int(f["size"])).hex()
        return v

    out: JsonObj = {}
    for f in desc["fields"]:
        v = values[f["name"]]
        out[f["name"]] = [one(f, x) for x in v] if "array_len" in f else one(f, v)
    for sub in desc.get("subsections", []):
        if sub["vmsd_name"] in values:
            out[sub["vmsd_name"]] = expected_state_values(sub, values[sub["vmsd_name"]])
    return out


def state_of_device(doc: Any, name: str, instance_id: int = 0) -> JsonObj:
    """Pick one device's decoded state out of `state --json` (adapt here if the shape changes)."""
    devices = doc["devices"] if isinstance(doc, dict) and "devices" in doc else doc
    for d in devices:
        if d.get("name") == name and d.get("instance_id", 0) == instance_id:
            st: JsonObj = d.get("state", d.get("fields", d))
            return st
    raise AssertionError(f"device {name}/{instance_id} not in the state output")


def assert_state_values(got: JsonObj, want: JsonObj) -> None:
    for k, v in want.items():
        assert k in got, f"{k} missing from {sorted(got)}"
        if isinstance(v, dict):
            assert isinstance(got[k], dict), f"{k}: {got[k]!r}"
            assert_state_values(got[k], v)
        else:
            assert got[k] == v, f"{k}: got {got[k]!r}, want {v!r}"


def test_state_decodes_builder_device(tmp_path: Path) -> None:
    b = precopy_stream()
    path = b.write(tmp_path / "state.mig")
    doc = cli_json("state", str(path), "--json")
    assert_state_values(
        state_of_device(doc, "0000:00:03.0/testdev"), expected_state_values(DEVICE_DESC, DEVICE_VALUES)
    )
    assert_state_values(state_of_device(doc, "timer"), expected_state_values(TIMER_DESC, TIMER_VALUES))
    assert_state_values(state_of_device(doc, "queue", 1), {"head": 5, "tail": 6})


def test_state_without_vmdesc_is_one_line_error(tmp_path: Path) -> None:
    b = precopy_stream(vmdesc=False)
    proc = run_cli("state", str(b.write(tmp_path / "nodesc.mig")), "--json")
    assert "Traceback" not in proc.stderr.decode("utf-8", "replace")
    assert proc.returncode != 0
    assert len(stderr_lines(proc)) == 1


def test_state_with_desc_file(tmp_path: Path) -> None:
    with_desc = precopy_stream()
    desc_file = tmp_path / "desc.json"
    desc_file.write_text(json.dumps(with_desc.vmdesc_json()))
    b = precopy_stream(vmdesc=False)
    path = b.write(tmp_path / "nodesc.mig")
    doc = cli_json("state", str(path), "--desc", str(desc_file), "--json")
    assert_state_values(
        state_of_device(doc, "0000:00:03.0/testdev"), expected_state_values(DEVICE_DESC, DEVICE_VALUES)
    )


def test_header_bytes_are_what_the_records_say(tmp_path: Path) -> None:
    """Guard for the recipes themselves: every logged offset holds the right type byte."""
    type_bytes = {
        "CONFIGURATION": 0x07,
        "SECTION_START": 0x01,
        "SECTION_PART": 0x02,
        "SECTION_END": 0x03,
        "SECTION_FULL": 0x04,
        "COMMAND": 0x08,
        "EOF": 0x00,
        "VMDESCRIPTION": 0x06,
    }
    for recipe in (
        precopy_stream,
        every_command_stream,
        postcopy_stream,
        special_sections_stream,
        mapped_ram_stream,
    ):
        b = recipe()
        data = b.data()
        for r in b.records:
            if r["type"] == "HEADER":
                assert data[r["offset"] : r["offset"] + 4] == be32(0x5145564D)
            else:
                assert data[r["offset"]] == type_bytes[r["type"]], (recipe.__name__, r)
        for f in b.footer_offsets:
            assert data[f] == 0x7E
