"""ELF64 core layout (migstream.outputs.elf), read back with pyelftools, gdb, readelf, volatility3.

The expected values are facts of <elf.h> and the Linux ABI stated here, apart
from the writer: the tests share neither its constants nor its struct formats.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from elftools.elf.elffile import ELFFile

from migstream.arch import CpuState
from migstream.errors import UsageError
from migstream.outputs.elf import ElfCoreLayout, build_elf_core

# <elf.h>: e_machine values, extended program header numbering.
EM_PPC64 = 21
EM_S390 = 22
EM_X86_64 = 62
EM_386 = 3
#: QEMU's hidden flag for long mode active.
HF_LMA_MASK = 1 << 14
EM_AARCH64 = 183
PN_XNUM = 0xFFFF
# <elf.h> note types (s390x ones under the name "LINUX"); QEMU's CPU state note has type 0.
NT_S390_CTRS = 0x304
NT_S390_PREFIX = 0x305
NT_QEMU_CPUSTATE = 0
# LP64 Linux struct elf_prstatus: pr_pid after pr_info, pr_cursig, pr_sigpend, pr_sighold;
# pr_reg after the pids and four struct timevals; the size depends on elf_gregset_t.
PRSTATUS_PID_OFFSET = 32
PRSTATUS_REG_OFFSET = 112
PRSTATUS_SIZE = {"x86_64": 336, "aarch64": 392, "ppc64": 504, "s390x": 336}
# QEMU's x86 CPU state record: version, size, 18 GPRs, 10 segments of 24 bytes, 5 CRs, KERNEL_GS_BASE.
QEMU_CPUSTATE_SIZE = 4 + 4 + 18 * 8 + 10 * 24 + 5 * 8 + 8

GDB = shutil.which("gdb")
GDB_MULTIARCH = shutil.which("gdb-multiarch")
READELF = shutil.which("readelf")

#: Three ranges: low RAM, an unaligned odd-sized one, one above 4 GiB.
RANGES = [(0x0, 0x20000), (0x100123, 0x2ABC), (0x1_0000_0000, 0x3000)]


def _seg(selector: int, base: int, limit: int = 0xFFFF, flags: int = 0x9300) -> dict[str, int]:
    return {"selector": selector, "base": base, "limit": limit, "flags": flags}


X86_CPUS = [
    CpuState(
        0,
        "x86_64",
        {
            "rax": 0x1122334455667788,
            "rbx": 0xB0B,
            "rsp": 0x7000,
            "r15": 0xF15,
            "rip": 0xFFF0,
            "rflags": 0x2,
            "cr0": 0x60000010,
            "cr3": 0x1000,
            "cs": _seg(0xF000, 0xFFFF0000),
            "ds": _seg(0x10, 0),
            "fs": _seg(0x18, 0x12345000),
            "gdt": {"base": 0xF6000, "limit": 0x37},
            "idt": {"base": 0, "limit": 0x3FF},
        },
        {"hflags": HF_LMA_MASK},  # long mode: EM_X86_64 and the x86_64 elf_prstatus
    ),
    CpuState(1, "x86_64", {"eax": 0x55, "eip": 0x7C00}),  # 32-bit view names
]


def _content(gpa: int, size: int) -> bytes:
    out = b""
    i = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d:%d" % (gpa, i)).digest()
        i += 1
    return out[:size]


def _write_core(path: Path, layout: ElfCoreLayout) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        layout.write_header(fd)
        for seg in layout.segments:
            os.pwrite(fd, _content(seg.gpa, seg.size), seg.file_offset)
    finally:
        os.close(fd)


def _elf_notes(f: BinaryIO) -> list[tuple[bytes, Any, bytes]]:
    """(name, type, desc) of every note, as pyelftools reads them (type: NT_ name or number)."""
    out = []
    for seg in ELFFile(f).iter_segments():
        if seg["p_type"] == "PT_NOTE":
            out += [(n["n_name"].encode(), n["n_type"], bytes(n["n_descdata"])) for n in seg.iter_notes()]
    return out


def _elf_loads(path: Path) -> list[tuple[int, int, int, int, int]]:
    """(paddr, vaddr, offset, filesz, memsz) of every PT_LOAD, as pyelftools reads them."""
    with open(path, "rb") as f:
        return [
            (s["p_paddr"], s["p_vaddr"], s["p_offset"], s["p_filesz"], s["p_memsz"])
            for s in ELFFile(f).iter_segments()
            if s["p_type"] == "PT_LOAD"
        ]


def _read_physical(path: Path, gpa: int, length: int) -> bytes:
    """Bytes at guest-physical ``gpa`` by the PT_LOADs (zeros outside them)."""
    out = bytearray(length)
    with open(path, "rb") as f:
        for paddr, _vaddr, offset, filesz, _memsz in _elf_loads(path):
            lo, hi = max(gpa, paddr), min(gpa + length, paddr + filesz)
            if lo < hi:
                f.seek(offset + lo - paddr)
                out[lo - gpa : hi - gpa] = f.read(hi - lo)
    return bytes(out)


def _volatility_read_physical(path: Path, gpa: int, length: int) -> bytes:
    """Guest-physical bytes through volatility3's ELF64 layer (file layer, then the ELF stacker)."""
    contexts: Any = importlib.import_module("volatility3.framework.contexts")
    physical: Any = importlib.import_module("volatility3.framework.layers.physical")
    elf: Any = importlib.import_module("volatility3.framework.layers.elf")
    ctx = contexts.Context()
    ctx.config["base.location"] = path.resolve().as_uri()
    ctx.add_layer(physical.FileLayer(ctx, "base", "base"))
    layer = elf.Elf64Stacker.stack(ctx, "base")
    assert layer is not None, "volatility3 does not take the file for an ELF64 core"
    ctx.add_layer(layer)
    return bytes(layer.read(gpa, length, pad=True))


@pytest.fixture(scope="module")
def x86_core(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("elf") / "x86.core"
    _write_core(path, build_elf_core(RANGES, X86_CPUS, "x86_64"))
    return path


def _run(args: Sequence[str]) -> str:
    env = dict(os.environ, LC_ALL="C")
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _gdb_bytes(gdb: str, core: Path, addr: int, count: int = 8) -> bytes:
    out = _run([gdb, "-nx", "-batch", "-c", str(core), "-ex", f"x/{count}xb {addr:#x}"])
    line = next(ln for ln in out.splitlines() if re.match(rf"^{addr:#x}\b", ln))
    return bytes(int(tok, 16) for tok in line.split(":", 1)[1].split())


def _gdb_registers(gdb: str, core: Path) -> dict[str, int]:
    out = _run([gdb, "-nx", "-batch", "-c", str(core), "-ex", "info registers"])
    regs = {}
    for line in out.splitlines():
        m = re.match(r"^(\w+)\s+(0x[0-9a-f]+)", line)
        if m:
            regs[m.group(1)] = int(m.group(2), 16)
    return regs


# --- layout ------------------------------------------------------------------------


def test_layout_segments() -> None:
    layout = build_elf_core(RANGES, X86_CPUS, "x86_64")
    assert [(s.gpa, s.size) for s in layout.segments] == RANGES
    end = len(layout.header)
    for seg in layout.segments:
        assert seg.file_offset >= end
        assert seg.file_offset % 4096 == seg.gpa % 4096  # page aligned for aligned GPAs
        end = seg.file_offset + seg.size
    assert layout.total_size == end
    assert layout.byteorder == "little" and layout.e_machine == EM_X86_64


def test_header_fields() -> None:
    layout = build_elf_core(RANGES, X86_CPUS, "x86_64")
    h = layout.header
    assert h[:4] == b"\x7fELF" and h[4] == 2 and h[5] == 1
    e_type, e_machine, _, _, e_phoff, e_shoff, _, _, phentsize, phnum = struct.unpack_from(
        "<HHIQQQIHHH", h, 16
    )
    assert (e_type, e_machine, e_phoff, e_shoff, phentsize, phnum) == (4, EM_X86_64, 64, 0, 56, 4)
    p_type = struct.unpack_from("<I", h, 64)[0]
    assert p_type == 4  # PT_NOTE first
    for i, (gpa, size) in enumerate(RANGES):
        fields = struct.unpack_from("<IIQQQQQQ", h, 64 + 56 * (i + 1))
        assert fields[0] == 1  # PT_LOAD
        assert fields[3] == gpa and fields[4] == gpa  # p_vaddr, p_paddr
        assert fields[5] == size and fields[6] == size
        assert fields[2] == layout.segments[i].file_offset


def test_notes_x86() -> None:
    layout = build_elf_core(RANGES, list(reversed(X86_CPUS)), "x86_64")
    notes = _notes_of(layout)
    assert [(n, t) for n, t, _ in notes] == [(b"CORE", "NT_PRSTATUS")] * 2 + [(b"QEMU", NT_QEMU_CPUSTATE)] * 2
    pr0, pr1 = notes[0][2], notes[1][2]
    assert len(pr0) == PRSTATUS_SIZE["x86_64"]
    assert struct.unpack_from("<I", pr0, PRSTATUS_PID_OFFSET)[0] == 1
    assert struct.unpack_from("<I", pr1, PRSTATUS_PID_OFFSET)[0] == 2
    regs = struct.unpack_from("<27Q", pr0, PRSTATUS_REG_OFFSET)
    assert regs[0] == 0xF15  # r15 first
    assert regs[10] == 0x1122334455667788  # rax
    assert regs[16] == 0xFFF0 and regs[17] == 0xF000  # rip, cs selector
    assert regs[18] == 0x2 and regs[19] == 0x7000  # eflags, rsp
    assert regs[21] == 0x12345000  # fs_base
    assert regs[23] == 0x10  # ds
    regs1 = struct.unpack_from("<27Q", pr1, PRSTATUS_REG_OFFSET)
    assert regs1[10] == 0x55 and regs1[16] == 0x7C00  # eax / eip view
    q = notes[2][2]
    assert len(q) == QEMU_CPUSTATE_SIZE
    version, size, rax = struct.unpack_from("<IIQ", q, 0)
    assert (version, size, rax) == (1, QEMU_CPUSTATE_SIZE, 0x1122334455667788)
    cs = struct.unpack_from("<IIIIQ", q, 8 + 18 * 8)
    assert cs == (0xF000, 0xFFFF, 0x9300, 0, 0xFFFF0000)
    gdt = struct.unpack_from("<IIIIQ", q, 8 + 18 * 8 + 8 * 24)
    assert gdt == (0, 0x37, 0, 0, 0xF6000)
    crs = struct.unpack_from("<5Q", q, 8 + 18 * 8 + 10 * 24)
    assert crs == (0x60000010, 0, 0, 0x1000, 0)


def test_x86_outside_long_mode_is_em_386() -> None:
    """QEMU's rule: vCPU 0 not in long mode -> EM_386 and the i386 elf_prstatus (144 bytes)."""
    cpus = [dataclasses.replace(c, extra={}) for c in X86_CPUS]
    layout = build_elf_core(RANGES, cpus, "x86_64")
    assert layout.e_machine == EM_386
    assert struct.unpack_from("<H", layout.header, 18)[0] == EM_386
    notes = _notes_of(layout)
    assert [(n, t, len(d)) for n, t, d in notes] == [(b"CORE", "NT_PRSTATUS", 144)] * 2 + [
        (b"QEMU", NT_QEMU_CPUSTATE, QEMU_CPUSTATE_SIZE)
    ] * 2
    pr0, pr1 = notes[0][2], notes[1][2]
    assert struct.unpack_from("<I", pr0, 24)[0] == 1 and struct.unpack_from("<I", pr1, 24)[0] == 2
    # ebx ecx edx esi edi ebp eax, ds es fs gs (16 bits, padded), orig_eax eip cs eflags esp ss
    ebx, _ecx, _edx, _esi, _edi, _ebp, eax = struct.unpack_from("<7I", pr0, 72)
    assert (ebx, eax) == (0xB0B, 0x55667788)
    ds, _, _es, _, fs, _, _gs, _ = struct.unpack_from("<8H", pr0, 100)
    assert (ds, fs) == (0x10, 0x18)
    _orig, eip, cs, _, eflags, esp, _ss, _ = struct.unpack_from("<2I2H2I2H", pr0, 116)
    assert (eip, cs, eflags, esp) == (0xFFF0, 0xF000, 0x2, 0x7000)
    assert struct.unpack_from("<I", pr1, 72 + 24)[0] == 0x55
    assert struct.unpack_from("<I", pr1, 120)[0] == 0x7C00


def _notes_of(layout: ElfCoreLayout) -> list[tuple[bytes, Any, bytes]]:
    return _elf_notes(io.BytesIO(layout.header))


@pytest.mark.parametrize(
    ("arch", "regs", "machine", "order"),
    [
        ("aarch64", {"x0": 1, "pc": 0x40000000}, EM_AARCH64, "little"),
        ("ppc64", {"r0": 1, "nip": 0x100, "msr": 1 << 63}, EM_PPC64, "big"),
        ("ppc64", {"r0": 1, "nip": 0x100, "msr": (1 << 63) | 1}, EM_PPC64, "little"),
        ("ppc64", {"r0": 1, "msr": 1}, EM_PPC64, "big"),  # with lpcr below: ILE clear wins
        ("s390x", {"r0": 1, "psw_addr": 0x10000}, EM_S390, "big"),
    ],
)
def test_arch_header_and_prstatus(arch: str, regs: dict[str, int], machine: int, order: str) -> None:
    extra = {"lpcr": 0} if arch == "ppc64" and regs.get("msr") == 1 else {}
    layout = build_elf_core([(0, 0x1000)], [CpuState(0, arch, regs, extra)], arch)
    assert layout.e_machine == machine and layout.byteorder == order
    assert layout.header[5] == (1 if order == "little" else 2)
    notes = _notes_of(layout)
    name, ntype, desc = notes[0]
    assert (name, ntype, len(desc)) == (b"CORE", "NT_PRSTATUS", PRSTATUS_SIZE[arch])
    e = "<" if order == "little" else ">"
    # pr_pid as QEMU writes it: the vCPU's device-tree id on ppc64 (its index), index + 1
    # elsewhere; s390x leaves it in the host's byte order (little endian).
    pid_order = "<" if arch == "s390x" else e
    pid = struct.unpack_from(pid_order + "I", desc, PRSTATUS_PID_OFFSET)[0]
    assert pid == (0 if arch == "ppc64" else 1)
    kinds = [t for _, t, _ in notes]
    if arch == "ppc64":
        assert kinds == ["NT_PRSTATUS", "NT_FPREGSET", 0x100, 0x102, 0x101]  # VMX, VSX, SPE
        assert [len(d) for _, _, d in notes[2:]] == [544, 256, 140]
    if arch == "s390x":
        assert kinds[-3:] == [0x309, 0x30A, 0x30B]  # VXRS_LOW, VXRS_HIGH, GS_CB
        assert [len(d) for _, _, d in notes[-3:]] == [128, 256, 32]
    if arch == "aarch64":
        assert struct.unpack_from(e + "i", desc, PRSTATUS_REG_OFFSET + 34 * 8)[0] == 1  # pr_fpvalid
    first_reg = struct.unpack_from(e + "Q", desc, PRSTATUS_REG_OFFSET)[0]
    if arch == "s390x":
        assert first_reg == 0  # psw mask first
        assert struct.unpack_from(e + "QQQ", desc, PRSTATUS_REG_OFFSET)[1:] == (0x10000, 1)
        kinds = [t for _, t, _ in notes]
        assert NT_S390_PREFIX in kinds and NT_S390_CTRS in kinds
    else:
        assert first_reg == 1
        assert notes[1][1] == "NT_FPREGSET"  # NT_PRFPREG


def test_byteorder_can_be_forced() -> None:
    layout = build_elf_core([(0, 0x1000)], [], "ppc64", byteorder="little")
    assert layout.byteorder == "little" and layout.header[5] == 1


@pytest.mark.parametrize(
    ("ranges", "message"),
    [
        ([(0x2000, 0x1000), (0x1000, 0x1000)], "out of order"),
        ([(0x0, 0x2000), (0x1000, 0x1000)], "overlaps"),
        ([(0x0, 0)], "bad range"),
        ([(-1, 0x1000)], "bad range"),
    ],
)
def test_bad_ranges(ranges: list[tuple[int, int]], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        build_elf_core(ranges, [], "x86_64")


def test_bad_arch_and_cpu_mismatch() -> None:
    with pytest.raises(UsageError, match="unknown architecture"):
        build_elf_core([], [], "mips")
    with pytest.raises(UsageError, match="not aarch64"):
        build_elf_core([], X86_CPUS, "aarch64")


@pytest.mark.parametrize(("count", "extended"), [(PN_XNUM - 2, False), (PN_XNUM - 1, True), (PN_XNUM, True)])
def test_pn_xnum(tmp_path: Path, count: int, extended: bool) -> None:
    ranges = [(i * 0x2000, 0x1000) for i in range(count)]
    layout = build_elf_core(ranges, X86_CPUS[:1], "x86_64")
    phnum = count + 1
    e_shoff, e_phnum, e_shentsize, e_shnum = struct.unpack_from("<Q", layout.header, 40) + struct.unpack_from(
        "<HHH", layout.header, 56
    )
    if extended:
        assert e_phnum == PN_XNUM and e_shnum == 1 and e_shentsize == 64
        assert struct.unpack_from("<I", layout.header, e_shoff + 44)[0] == phnum  # sh_info
    else:
        assert e_phnum == phnum and e_shnum == 0 and e_shoff == 0
    path = tmp_path / "many.core"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        layout.write_header(fd)
        os.pwrite(fd, b"LASTPAGE", layout.segments[-1].file_offset)
    finally:
        os.close(fd)
    with open(path, "rb") as f:
        assert ELFFile(f).num_segments() == phnum
    assert len(_elf_loads(path)) == count
    assert _read_physical(path, ranges[-1][0], 8) == b"LASTPAGE"
    if READELF and extended:
        out = _run([READELF, "-h", str(path)])
        assert re.search(rf"Number of program headers:\s+{PN_XNUM} \({phnum}\)", out)
    if GDB and count == PN_XNUM:
        assert _gdb_bytes(GDB, path, ranges[-1][0]) == b"LASTPAGE"


def test_read_back(x86_core: Path) -> None:
    with open(x86_core, "rb") as f:
        elf = ELFFile(f)
        assert elf.little_endian and elf["e_machine"] == "EM_X86_64" and elf["e_type"] == "ET_CORE"
    assert [(p, v, fs, ms) for p, v, _o, fs, ms in _elf_loads(x86_core)] == [(g, g, s, s) for g, s in RANGES]
    for gpa, size in RANGES:
        assert _read_physical(x86_core, gpa, size) == _content(gpa, size)
    assert _read_physical(x86_core, 0x20000 - 4, 8) == _content(0, 0x20000)[-4:] + bytes(4)


# --- real tools ---------------------------------------------------------------------


@pytest.mark.skipif(READELF is None, reason="readelf (binutils) not installed")
def test_readelf_parses(x86_core: Path) -> None:
    assert READELF is not None
    done = subprocess.run([READELF, "-a", "-W", str(x86_core)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "CORE (Core file)" in done.stdout and "X86-64" in done.stdout
    assert done.stdout.count("NT_PRSTATUS") == 2
    for gpa, size in RANGES:
        assert re.search(rf"LOAD\s+0x[0-9a-f]+ {gpa:#018x} {gpa:#018x} {size:#08x} {size:#08x}", done.stdout)
    assert "Warning" not in done.stderr


@pytest.mark.skipif(GDB is None, reason="gdb not installed")
def test_gdb_reads_memory(x86_core: Path) -> None:
    assert GDB is not None
    for gpa, size in RANGES:
        assert _gdb_bytes(GDB, x86_core, gpa) == _content(gpa, size)[:8]
        assert _gdb_bytes(GDB, x86_core, gpa + size - 8) == _content(gpa, size)[-8:]


@pytest.mark.skipif(GDB is None, reason="gdb not installed")
def test_gdb_reads_registers(x86_core: Path) -> None:
    assert GDB is not None
    regs = _gdb_registers(GDB, x86_core)
    assert regs["rip"] == 0xFFF0
    assert regs["rax"] == 0x1122334455667788
    assert regs["rbx"] == 0xB0B and regs["rsp"] == 0x7000 and regs["cs"] == 0xF000
    out = _run(
        [GDB, "-nx", "-batch", "-c", str(x86_core), "-ex", "thread 2", "-ex", "p/x $pc", "-ex", "p/x $rax"]
    )
    assert "0x7c00" in out and "0x55" in out


def test_volatility_reads_physical(x86_core: Path) -> None:
    pytest.importorskip("volatility3")
    for gpa, size in RANGES:
        assert _volatility_read_physical(x86_core, gpa, size) == _content(gpa, size)
    # A hole between ranges reads as zeros (padded).
    assert _volatility_read_physical(x86_core, 0x20000, 16) == bytes(16)


MULTIARCH_CASES = [
    ("aarch64", {"x0": 0xDEAD, "x7": 7, "pc": 0x40001000, "sp": 0x40002000}, "pc", 0x40001000),
    ("ppc64", {"r0": 0xDEAD, "r7": 7, "nip": 0x100, "msr": 1 << 63, "lr": 0x42}, "pc", 0x100),
    ("s390x", {"r0": 0xDEAD, "r7": 7, "psw_addr": 0x10000, "psw_mask": 0x180000000}, "pswa", 0x10000),
]


@pytest.mark.skipif(GDB_MULTIARCH is None, reason="gdb-multiarch not installed")
@pytest.mark.parametrize(
    ("arch", "regs", "pc_name", "pc"), MULTIARCH_CASES, ids=[c[0] for c in MULTIARCH_CASES]
)
def test_gdb_multiarch(tmp_path: Path, arch: str, regs: dict[str, int], pc_name: str, pc: int) -> None:
    assert GDB_MULTIARCH is not None
    ranges = [(0x0, 0x2000), (0x4000_0000, 0x3000), (0x1_2000_0000, 0x1000)]
    path = tmp_path / f"{arch}.core"
    _write_core(path, build_elf_core(ranges, [CpuState(0, arch, regs)], arch))
    for gpa, size in ranges:
        assert _gdb_bytes(GDB_MULTIARCH, path, gpa) == _content(gpa, size)[:8]
    got = _gdb_registers(GDB_MULTIARCH, path)
    assert got[pc_name] == pc
    assert got["r0" if arch != "aarch64" else "x0"] == 0xDEAD
    assert got["r7" if arch != "aarch64" else "x7"] == 7


def test_x86_elf32_below_4gib_outside_long_mode() -> None:
    """QEMU's rule: EM_386 and every range ending below 4 GiB -> an ELF32 core."""
    ranges = [(0, 0xA0000), (0x100000, 0x1000)]
    cpus = [dataclasses.replace(c, extra={}) for c in X86_CPUS]
    layout = build_elf_core(ranges, cpus, "x86_64")
    h = layout.header
    assert h[4] == 1 and layout.elf_class == 32  # ELFCLASS32
    e_type, e_machine, _v, _entry, e_phoff, _shoff, _flags, ehsize, phentsize, phnum = struct.unpack_from(
        "<HHIIIIIHHH", h, 16
    )
    assert (e_type, e_machine, e_phoff, ehsize, phentsize, phnum) == (4, EM_386, 52, 52, 32, 3)
    loads = [struct.unpack_from("<8I", h, 52 + 32 * i) for i in (1, 2)]
    assert [(p[0], p[2], p[3], p[4]) for p in loads] == [(1, g, g, s) for g, s in ranges]
    with io.BytesIO(h + bytes(layout.total_size - len(h))) as f:
        elf = ELFFile(f)
        assert elf.elfclass == 32 and elf["e_machine"] == "EM_386"
        assert [n for n, _t, _d in _elf_notes(f)] == [b"CORE", b"CORE", b"QEMU", b"QEMU"]
    # Long mode, or memory reaching 4 GiB: ELF64.
    assert build_elf_core(ranges, X86_CPUS, "x86_64").elf_class == 64
    assert build_elf_core([(0xFFFFF000, 0x1000)], cpus, "x86_64").elf_class == 64
