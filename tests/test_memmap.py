"""Guest-physical placement of RAM blocks (migstream.arch.memory_map over migstream.ram.layout)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from migstream.arch import memory_map, parse_machine
from migstream.errors import UsageError
from migstream.ram.layout import FOUR_GIB, GiB, MemoryMap, MiB, Placement
from migstream.vmstate.values import Leaf, Struct


def _corpus_dir() -> Path:
    env = os.environ.get("MIGSTREAM_CORPUS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "corpus"


def _corpus_streams() -> list[dict[str, Any]]:
    manifest = _corpus_dir() / "MANIFEST.json"
    if not manifest.is_file():
        return []
    streams = json.loads(manifest.read_text())["streams"]
    return [s for s in streams if not s.get("failed")]


CORPUS = _corpus_streams()
_CONFIG = re.compile(r"^CONFIG\((.*)\)$")


def _config_machine(stream: dict[str, Any]) -> str | None:
    """Machine name of the configuration section (first CONFIG(...) record), None without one."""
    for entry in stream["sections"]["sequence"]:
        m = _CONFIG.match(entry) if isinstance(entry, str) else None
        if m:
            return m.group(1)
    return None


def _blocks(stream: dict[str, Any]) -> list[tuple[str, int]]:
    return [(b["name"], b["used_length"]) for b in stream["sections"]["ram"]["blocks"]]


def _assert_consistent(mm: MemoryMap, blocks: list[tuple[str, int]]) -> None:
    sizes = dict(blocks)
    prev_end = -1
    for p in mm.placements:
        assert p.gpa >= prev_end, f"overlap at {p}"
        prev_end = p.gpa_end
        assert p.block_offset >= 0 and p.block_offset + p.size <= sizes[p.block]
    placed = {p.block for p in mm.placements}
    assert placed.isdisjoint(mm.unplaced)
    assert placed | set(mm.unplaced) == set(sizes)


@pytest.mark.skipif(not CORPUS, reason="corpus MANIFEST.json not found (set MIGSTREAM_CORPUS)")
@pytest.mark.parametrize("stream", CORPUS, ids=[s["id"] for s in CORPUS])
@pytest.mark.parametrize("source", ["config", "resolved"])
def test_corpus_ram_covers_pmemsave_ranges(stream: dict[str, Any], source: str) -> None:
    blocks = _blocks(stream)
    machine = _config_machine(stream) if source == "config" else stream["machine_resolved"]
    mm = memory_map(blocks, machine=machine, arch=None)
    _assert_consistent(mm, blocks)
    expected = tuple((r["gpa"], r["size"]) for r in stream["pmemsave"]["ranges"])
    assert mm.ram_ranges() == expected, mm.describe()
    assert mm.arch == stream["target"]
    # Firmware lies outside guest RAM.
    for p in mm.placements:
        if p.kind != "ram":
            assert all(p.gpa_end <= g or g + s <= p.gpa for g, s in expected), p
    # Only the documented blocks are placed.
    for p in mm.placements:
        assert p.block in {
            "pc.ram",
            "pc.bios",
            "mach-virt.ram",
            "virt.flash0",
            "virt.flash1",
            "ppc_spapr.ram",
            "s390.ram",
        }


@pytest.mark.skipif(not CORPUS, reason="corpus MANIFEST.json not found (set MIGSTREAM_CORPUS)")
def test_corpus_q35_highmem_offsets() -> None:
    streams = [s for s in CORPUS if s["id"].endswith("/q35-3G-highmem")]
    assert streams
    for stream in streams:
        mm = memory_map(_blocks(stream), machine=_config_machine(stream), arch="x86_64")
        assert mm.placements_of("pc.ram") == (
            Placement("pc.ram", 0, 0, 2 * GiB),
            Placement("pc.ram", 2 * GiB, FOUR_GIB, 1 * GiB),
        )
        assert mm.gpa_of("pc.ram", 2 * GiB + 0x123) == FOUR_GIB + 0x123
        assert mm.block_at(FOUR_GIB + 5) == ("pc.ram", 2 * GiB + 5)
        assert mm.block_at(3 * GiB) is None


@pytest.mark.skipif(not CORPUS, reason="corpus MANIFEST.json not found (set MIGSTREAM_CORPUS)")
def test_corpus_firmware_agrees_with_mr_addr() -> None:
    """x-ignore-shared streams carry each block's MemoryRegion address: pc.bios must match it."""
    checked = 0
    for stream in CORPUS:
        raw = stream["sections"]["ram"]["blocks"]
        mr = {b["name"]: b["mr_addr"] for b in raw if "mr_addr" in b}
        if not mr:
            continue
        mm = memory_map(_blocks(stream), machine=_config_machine(stream), arch=None)
        assert mm.gpa_of("pc.bios", 0) == mr["pc.bios"]
        assert "pc.rom" in mm.unplaced and mr["pc.rom"] == 0xC0000
        checked += 1
    assert checked


# --- synthetic layouts ---------------------------------------------------------


def _ram(mm: MemoryMap) -> list[tuple[int, int, int]]:
    return [(p.block_offset, p.gpa, p.size) for p in mm.placements if p.kind == "ram"]


@pytest.mark.parametrize(
    ("machine", "ram", "expected"),
    [
        ("pc-i440fx-10.0", 4 * GiB, [(0, 0, 3 * GiB), (3 * GiB, FOUR_GIB, 1 * GiB)]),
        ("pc", 0xE000_0000, [(0, 0, 3 * GiB), (3 * GiB, FOUR_GIB, 0x2000_0000)]),
        ("pc-i440fx-2.0", 3 * GiB, [(0, 0, 3 * GiB)]),
        ("pc-i440fx-2.0", 0xDFFF_F000, [(0, 0, 0xDFFF_F000)]),
        ("pc-i440fx-1.7", 4 * GiB, [(0, 0, 0xE000_0000), (0xE000_0000, FOUR_GIB, 0x2000_0000)]),
        ("pc-1.2", 4 * GiB, [(0, 0, 0xE000_0000), (0xE000_0000, FOUR_GIB, 0x2000_0000)]),
        ("isapc", 4 * GiB, [(0, 0, 0xE000_0000), (0xE000_0000, FOUR_GIB, 0x2000_0000)]),
        ("pc-q35-7.2", 0xB000_0000, [(0, 0, 2 * GiB), (2 * GiB, FOUR_GIB, 0x3000_0000)]),
        ("q35", 0xAFFF_F000, [(0, 0, 0xAFFF_F000)]),
        ("pc-q35-1.7", 4 * GiB, [(0, 0, 0xB000_0000), (0xB000_0000, FOUR_GIB, 0x5000_0000)]),
        ("pc-q35-10.0", 64 * MiB, [(0, 0, 64 * MiB)]),
    ],
)
def test_x86_split(machine: str, ram: int, expected: list[tuple[int, int, int]]) -> None:
    mm = memory_map([("pc.ram", ram), ("pc.bios", 256 * 1024)], machine=machine, arch=None)
    assert _ram(mm) == expected
    assert mm.gpa_of("pc.bios", 0) == FOUR_GIB - 256 * 1024
    assert mm.arch == "x86_64"


def test_x86_without_device_state_ram_is_whole() -> None:
    blocks = [
        ("pc.ram", 128 * MiB),
        ("pc.rom", 128 * 1024),
        ("pc.bios", 128 * 1024),
        ("/rom@etc/acpi/tables", 128 * 1024),
        ("0000:00:02.0/e1000.rom", 256 * 1024),
    ]
    mm = memory_map(blocks, machine="pc-i440fx-7.2", arch="x86_64")
    assert mm.unplaced == ("pc.rom", "/rom@etc/acpi/tables", "0000:00:02.0/e1000.rom")
    assert any("no decoded device state" in n for n in mm.notes)
    assert mm.ranges() == ((0, 128 * MiB), (FOUR_GIB - 128 * 1024, 128 * 1024))


def test_x86_pflash_stack_below_4g() -> None:
    blocks = [("pc.ram", 1 * GiB), ("system.flash0", 4 * MiB), ("system.flash1", 512 * 1024)]
    mm = memory_map(blocks, machine="pc-q35-9.2", arch=None)
    # pflash is a ROM device: QEMU's dump leaves it out, so does the map (--map places it).
    assert mm.unplaced == ("system.flash0", "system.flash1")
    assert any(f"system.flash0 (pflash, {FOUR_GIB - 4 * MiB:#x}" in n for n in mm.notes)
    assert any(f"system.flash1 (pflash, {FOUR_GIB - 4 * MiB - 512 * 1024:#x}" in n for n in mm.notes)


def test_memory_backend_named_main_block() -> None:
    blocks = [
        ("/rom@etc/acpi/tables", 128 * 1024),
        ("pc.bios", 256 * 1024),
        ("mem0", 3 * GiB),
        ("vga.vram", 16 * MiB),
    ]
    mm = memory_map(blocks, machine="pc-q35-10.0", arch=None)
    assert _ram(mm) == [(0, 0, 2 * GiB), (2 * GiB, FOUR_GIB, 1 * GiB)]
    assert {p.block for p in mm.placements if p.kind == "ram"} == {"mem0"}
    assert any("mem0" in n and "largest" in n for n in mm.notes)
    assert "vga.vram" in mm.unplaced


def test_aarch64_virt() -> None:
    blocks = [
        ("mach-virt.ram", 128 * MiB),
        ("virt.flash0", 64 * MiB),
        ("virt.flash1", 64 * MiB),
        ("/rom@etc/acpi/rsdp", 4096),
    ]
    mm = memory_map(blocks, machine="virt-10.0", arch="aarch64")
    # The flash is a ROM device: QEMU's dump-guest-memory leaves it out.
    assert mm.placements == (Placement("mach-virt.ram", 0, 0x4000_0000, 128 * MiB),)
    assert mm.unplaced == ("virt.flash0", "virt.flash1", "/rom@etc/acpi/rsdp")
    assert any("virt.flash1" in n and "0x4000000-0x7ffffff" in n for n in mm.notes)


@pytest.mark.parametrize(
    ("machine", "block", "arch"),
    [
        ("pseries-7.2", "ppc_spapr.ram", "ppc64"),
        ("pseries", "ppc_spapr.ram", "ppc64"),
        ("s390-ccw-virtio-10.0", "s390.ram", "s390x"),
        (None, "s390.ram", "s390x"),
        (None, "ppc_spapr.ram", "ppc64"),
    ],
)
def test_ram_at_zero(machine: str | None, block: str, arch: str) -> None:
    mm = memory_map([(block, 256 * MiB)], machine=machine, arch=None)
    assert mm.placements == (Placement(block, 0, 0, 256 * MiB),)
    assert mm.arch == arch


def test_unknown_machine_and_override() -> None:
    mm = memory_map([("microvm.ram", 64 * MiB)], machine="microvm", arch="x86_64")
    assert mm.placements == () and mm.unplaced == ("microvm.ram",)
    assert any("microvm" in n and "--map" in n for n in mm.notes)
    mm = memory_map(
        [("microvm.ram", 64 * MiB)], machine="microvm", arch=None, overrides={"microvm.ram": 0x1000}
    )
    assert mm.placements == (Placement("microvm.ram", 0, 0x1000, 64 * MiB, "override"),)


def test_override_replaces_default_and_rom_placement() -> None:
    blocks = [("pc.ram", 64 * MiB), ("pc.rom", 128 * 1024), ("vga.vram", 16 * MiB)]
    mm = memory_map(
        blocks, machine="pc", arch=None, overrides={"pc.ram": 0x1_0000_0000, "vga.vram": 0xFD00_0000}
    )
    assert mm.placements_of("pc.ram") == (Placement("pc.ram", 0, 0x1_0000_0000, 64 * MiB, "override"),)
    assert mm.gpa_of("vga.vram", 0) == 0xFD00_0000
    assert mm.gpa_of("pc.rom", 0) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "riscv64"}, "unknown architecture"),
        ({"arch": "aarch64", "machine": "pc-i440fx-10.0"}, "not an aarch64 machine"),
        ({"overrides": {"nope": 0}}, "not in the stream"),
        ({"overrides": {"vga.vram": 0x100000}}, "overlap"),
        ({"overrides": {"vga.vram": -1}}, "negative"),
    ],
)
def test_usage_errors(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"machine": "pc-i440fx-10.0", "arch": None}
    args.update(kwargs)
    with pytest.raises(UsageError, match=message):
        memory_map([("pc.ram", 64 * MiB), ("vga.vram", 16 * MiB)], **args)


def test_duplicate_block_is_an_error() -> None:
    with pytest.raises(UsageError, match="twice"):
        memory_map([("pc.ram", 4096), ("pc.ram", 4096)], machine="pc", arch=None)


def test_parse_machine() -> None:
    assert parse_machine("pc-i440fx-10.0") == ("pc", (10, 0))
    assert parse_machine("pc-q35-7.2") == ("q35", (7, 2))
    assert parse_machine("pc-i440fx-2.3") == ("pc", (2, 3))
    assert parse_machine("pc-0.15") == ("pc", (0, 15))
    assert parse_machine("virt") == ("virt", None)
    assert parse_machine("pseries-2.12-sxxm") == ("pseries", (2, 12))
    assert parse_machine("s390-ccw-virtio-10.0") == ("s390-ccw-virtio", (10, 0))
    assert parse_machine("microvm") is None


def test_describe_and_json() -> None:
    mm = memory_map(
        [("pc.ram", 3 * GiB), ("pc.bios", 256 * 1024), ("pc.rom", 128 * 1024)],
        machine="pc-q35-7.2",
        arch=None,
    )
    text = mm.describe()
    assert "0x0000000100000000-0x000000013fffffff  pc.ram" in text
    assert "unplaced: pc.rom" in text
    assert str(mm) == text
    doc = json.loads(json.dumps(mm.to_json()))
    assert doc["placements"][0] == {
        "block": "pc.ram",
        "block_offset": 0,
        "gpa": 0,
        "size": 2 * GiB,
        "kind": "ram",
        "source": "machine rule",
    }


def test_no_machine_name_backend_block() -> None:
    """Old stream, RAM in a memory backend: firmware names tell the family."""
    blocks = [("ram0", 64 * MiB), ("pc.bios", 256 * 1024), ("pc.rom", 128 * 1024)]
    mm = memory_map(blocks, machine=None, arch=None)
    assert mm.family == "pc" and mm.arch == "x86_64"
    assert mm.placements_of("ram0") == (Placement("ram0", 0, 0, 64 * MiB),)


# --- layout from the decoded device state (chipset registers, PCI BARs) ---------------
# The oracle is QEMU's routing as its source states it (hw/pci-host/pam.c, i440fx.c,
# q35.c, hw/pci/pci.c); tests/test_dump_equality.py checks the same against real QEMU.

KiB = 1024
X86_BLOCKS = [
    ("pc.ram", 128 * MiB),
    ("pc.bios", 256 * KiB),
    ("pc.rom", 128 * KiB),
    ("0000:00:02.0/vga.vram", 16 * MiB),
    ("0000:00:02.0/vga.rom", 64 * KiB),
]


def _pci_device(idstr: str, config: dict[int, int | bytes]) -> tuple[str, int, Struct]:
    """A decoded PCI device section whose 256-byte configuration space holds ``config``."""
    space = bytearray(256)
    for offset, value in config.items():
        data = value if isinstance(value, bytes) else bytes([value])
        space[offset : offset + len(data)] = data
    parent = Struct(0)
    parent.add("config[0]", Leaf("pci config", 0, 256, bytes(space)))
    top = Struct(0)
    top.add("parent_obj", parent)
    return idstr, 0, top


def _x86(
    machine: str,
    host: dict[int, int | bytes],
    vga: dict[int, int | bytes] | None = None,
    has_vga: bool = True,
) -> MemoryMap:
    """The map with a host bridge and (unless ``has_vga`` is false) a VGA-class PCI device."""
    name = "0000:00:00.0/mch" if "q35" in machine else "0000:00:00.0/I440FX"
    devices = [_pci_device(name, host)]
    if has_vga:
        devices.append(_pci_device("0000:00:02.0/vga", {0x0B: 0x03, **(vga or {})}))
    return memory_map(X86_BLOCKS, machine=machine, arch=None, devices=devices)


def test_i440fx_pam_routes_each_segment() -> None:
    # PAM0 high nibble: 0xf0000 segment; then low/high nibbles for 0xc0000, 0xc4000, ...
    mm = _x86("pc-i440fx-7.2", {0x59: 0x30, 0x5A: 0x01, 0x5F: 0x20})
    assert mm.block_at(0xF0000) == ("pc.ram", 0xF0000)  # RAM read/write
    assert mm.block_at(0xC0000) == ("pc.ram", 0xC0000)  # read-only RAM
    assert mm.block_at(0xC4000) == ("pc.rom", 0x4000)  # PCI: pc.rom
    assert mm.block_at(0xE4000) == ("pc.bios", 0x24000)  # PCI: the ISA BIOS (last 128 KiB of pc.bios)
    assert mm.block_at(0xEC000) == ("pc.ram", 0xEC000)  # write-only: QEMU still reads RAM
    assert mm.block_at(0xA0000) is None and mm.block_at(0xBFFFF) is None  # SMRAM closed
    assert mm.block_at(0x9FFFF) == ("pc.ram", 0x9FFFF) and mm.block_at(0x100000) == ("pc.ram", 0x100000)
    sources = {p.source for p in mm.placements if 0xC0000 <= p.gpa < 0x100000}
    assert all(s.startswith("PAM I440FX") for s in sources)


def test_without_vga_ram_shows_through_the_window() -> None:
    """Nothing in the PCI window at 0xa0000 (no VGA device): QEMU's dump shows RAM there."""
    mm = _x86("pc-i440fx-7.2", {}, has_vga=False)
    assert mm.block_at(0xA0000) == ("pc.ram", 0xA0000) and mm.block_at(0xBFFFF) == ("pc.ram", 0xBFFFF)
    assert mm.block_at(0xC0000) == ("pc.rom", 0)


def test_small_isa_bios_leaves_ram_in_the_window() -> None:
    """A 64 KiB BIOS fills only 0xf0000-0xfffff; 0xe0000-0xeffff in PCI mode shows RAM."""
    blocks = [("pc.ram", 128 * MiB), ("pc.bios", 64 * KiB), ("pc.rom", 128 * KiB)]
    devices = [_pci_device("0000:00:00.0/I440FX", {})]
    mm = memory_map(blocks, machine="pc-i440fx-7.2", arch=None, devices=devices)
    assert mm.block_at(0xE0000) == ("pc.ram", 0xE0000)
    assert mm.block_at(0xF0000) == ("pc.bios", 0)


def test_reset_state_is_the_pci_window() -> None:
    mm = _x86("pc-q35-7.2", {0x9D: 0x02, 0x9E: 0x38})
    assert mm.block_at(0xC0000) == ("pc.rom", 0)
    assert mm.block_at(0xFFFF0) == ("pc.bios", 256 * KiB - 0x10)
    assert mm.ranges() == ((0, 0xA0000), (0xC0000, 128 * MiB - 0xC0000), (FOUR_GIB - 256 * KiB, 256 * KiB))


def test_smram_open() -> None:
    mm = _x86("pc-i440fx-7.2", {0x72: 0x4A})
    assert mm.block_at(0xA0000) == ("pc.ram", 0xA0000)
    # q35: D_OPEN with H_SMRAME shows the RAM at 0xfeda0000 instead.
    mm = _x86("pc-q35-7.2", {0x9D: 0x4A, 0x9E: 0x80})
    assert mm.block_at(0xA0000) is None
    assert mm.block_at(0xFEDA0000) == ("pc.ram", 0xA0000)
    mm = _x86("pc-q35-7.2", {0x9D: 0x4A, 0x9E: 0x00})
    assert mm.block_at(0xA0000) == ("pc.ram", 0xA0000) and mm.block_at(0xFEDA0000) is None


@pytest.mark.parametrize(
    ("esmramc", "machine", "size"),
    [(0x01, "pc-q35-7.2", 1 * MiB), (0x03, "pc-q35-7.2", 2 * MiB), (0x05, "pc-q35-7.2", 8 * MiB),
     (0x07, "pc-q35-7.2", 16 * MiB), (0x07, "pc-q35-2.9", 0), (0x06, "pc-q35-7.2", 0)],
)  # fmt: skip
def test_q35_tseg_black_hole(esmramc: int, machine: str, size: int) -> None:
    mm = _x86(machine, {0x9E: esmramc})
    top = 128 * MiB
    assert mm.block_at(top - size - 1) == ("pc.ram", top - size - 1)
    if size:
        assert mm.block_at(top - size) is None and mm.block_at(top - 1) is None
    else:
        assert mm.block_at(top - 1) == ("pc.ram", top - 1)


def test_bars_place_device_memory() -> None:
    bar0 = (0xFD000008).to_bytes(4, "little")  # prefetchable 32-bit memory BAR
    rom = (0xFEBC0001).to_bytes(4, "little")  # enabled expansion ROM
    mm = _x86("pc-i440fx-7.2", {}, {0x04: 0x03, 0x10: bar0, 0x30: rom})
    assert mm.block_at(0xFD000000) == ("0000:00:02.0/vga.vram", 0)
    assert mm.block_at(0xFEBC0000) == ("0000:00:02.0/vga.rom", 0)
    assert [p.source for p in mm.placements if p.kind == "device"] == [
        "BAR0 of 0000:00:02.0",
        "ROM BAR of 0000:00:02.0",
    ]
    # Memory decoding off, or a disabled ROM: not mapped.
    mm = _x86("pc-i440fx-7.2", {}, {0x04: 0x01, 0x10: bar0, 0x30: rom})
    assert {"0000:00:02.0/vga.vram", "0000:00:02.0/vga.rom"} <= set(mm.unplaced)
    mm = _x86(
        "pc-i440fx-7.2", {}, {0x04: 0x02, 0x10: bar0, 0x30: rom[:1].replace(b"\x01", b"\x00") + rom[1:]}
    )
    assert mm.block_at(0xFD000000) is not None and "0000:00:02.0/vga.rom" in mm.unplaced
    # --map still wins.
    devices = [_pci_device("0000:00:02.0/vga", {0x04: 0x02, 0x10: bar0})]
    mm = memory_map(
        X86_BLOCKS, machine="pc", arch=None, devices=devices, overrides={"0000:00:02.0/vga.vram": 0xE0000000}
    )
    assert mm.gpa_of("0000:00:02.0/vga.vram", 0) == 0xE0000000


def test_no_host_bridge_section_is_said() -> None:
    mm = memory_map(X86_BLOCKS, machine="pc", arch=None, devices=[("cpu", 0, Struct(0))])
    assert any("I440FX" in n and "not applied" in n for n in mm.notes)
    assert mm.block_at(0xA0000) == ("pc.ram", 0xA0000)


def test_pseries_bars_through_the_bridge_windows() -> None:
    """sPAPR bridge 0: bus addresses from 2 GiB show at 0x200080000000; 64-bit BARs 1:1."""
    blocks = [("ppc_spapr.ram", 512 * MiB), ("pci@800000020000000:00.0/vga.vram", 16 * MiB),
              ("pci@800000020000001:01.0/vga.vram", 16 * MiB)]  # fmt: skip
    bar32 = (0x80000008).to_bytes(4, "little")
    bar64 = (0x210000000000 | 0xC).to_bytes(8, "little")  # 64-bit prefetchable
    devices = [
        _pci_device("pci@800000020000000:00.0/vga", {0x04: 0x02, 0x10: bar32}),
        _pci_device("pci@800000020000001:01.0/vga", {0x04: 0x02, 0x10: bar64}),
    ]
    mm = memory_map(blocks, machine="pseries-7.2", arch=None, devices=devices)
    assert mm.gpa_of("pci@800000020000000:00.0/vga.vram", 0) == 0x2000_8000_0000
    assert mm.gpa_of("pci@800000020000001:01.0/vga.vram", 0) == 0x2100_0000_0000
    assert mm.gpa_of("ppc_spapr.ram", 0) == 0


def test_virt_bars_are_bus_addresses() -> None:
    blocks = [("mach-virt.ram", 128 * MiB), ("0000:00:01.0/vga.vram", 16 * MiB)]
    devices = [_pci_device("0000:00:01.0/vga", {0x04: 0x02, 0x10: (0x10000008).to_bytes(4, "little")})]
    mm = memory_map(blocks, machine="virt-7.2", arch=None, devices=devices)
    assert mm.gpa_of("0000:00:01.0/vga.vram", 0) == 0x1000_0000


def test_isapc_rom_windows_over_ram() -> None:
    mm = memory_map(X86_BLOCKS[:3], machine="isapc", arch=None, devices=[("cpu", 0, Struct(0))])
    assert mm.block_at(0xA0000) == ("pc.ram", 0xA0000)
    assert mm.block_at(0xC0000) == ("pc.rom", 0) and mm.block_at(0xE0000) == ("pc.bios", 0x20000)
