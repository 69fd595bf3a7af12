"""x86-64: ELF notes, pc/q35/isapc memory layout; registers and their text from x86_64_cpu.

QEMU: target/i386/arch_dump.c (x86_64_write_elf64_note, cpu_write_qemu_note), hw/i386/pc_piix.c,
hw/i386/pc_q35.c, hw/i386/pc.c (pc_memory_init).

Registers and the ``info registers`` text: :mod:`migstream.arch.x86_64_cpu`.

ELF notes: one ``NT_PRSTATUS`` per vCPU, then one "QEMU" note per vCPU (QEMU's
CPU state record: GPRs, segments, descriptor tables, CR0-CR4, KERNEL_GS_BASE).
Unlike QEMU, a guest outside long mode still gets ``EM_X86_64`` and the x86_64
register layout (QEMU would switch to ``EM_386``), so that one set of tools
reads every dump.

Memory layout, per machine family:

* ``pc`` (i440fx) and ``isapc``: RAM below 4 GiB up to 0xe0000000; when RAM
  reaches 0xe0000000 and the machine aligns to gigabytes (every i440fx version
  after 1.7), the split moves down to 3 GiB.  What does not fit below the split
  is placed at 4 GiB, continuing in the block.
* ``q35``: RAM below 4 GiB up to 0xb0000000; from 0xb0000000 of RAM on, the
  split is at 2 GiB (q35 1.7 and older: at 0xb0000000), the rest at 4 GiB.
* firmware: ``pc.bios`` ends at 4 GiB; pflash ``system.flash0`` ends at 4 GiB
  with ``system.flash1`` below it.  ``pc.rom`` (0xc0000) and the ISA BIOS
  window lie over RAM: main RAM stays authoritative, they are not placed.

The built-in layout of the ``cpu`` section, for streams without a description,
is in :mod:`migstream.arch.x86_64_cpu_layout`.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence

from migstream.arch.elf_notes import (
    MASK32,
    MASK64,
    NOTE_NAME_CORE,
    NOTE_NAME_QEMU,
    NT_PRSTATUS,
    ElfNote,
    prstatus,
    reg,
    segment,
    struct_order,
)
from migstream.arch.model import Arch, CpuState, DetectionHints, MachineFamily, MachineVersion
from migstream.arch.x86_64_cpu import HEX_DIGITS, decode, format_registers
from migstream.arch.x86_64_cpu_layout import BUILTIN_NOTE, decode_builtin
from migstream.ram.layout import FOUR_GIB, KiB, Placement, human_size

NAME = "x86_64"

# ----------------------------------------------------------------------- ELF notes

EM_X86_64 = 62
#: ``struct elf_prstatus`` size on x86_64 Linux.
PRSTATUS_SIZE = 336
#: Type of QEMU's own CPU state note (name "QEMU"), its version and size (with KERNEL_GS_BASE).
NT_QEMU_CPUSTATE = 0
QEMU_CPUSTATE_VERSION = 1
QEMU_CPUSTATE_SIZE = 440

#: Register order of ``pr_reg`` (Linux ``user_regs_struct``).
# fmt: off
X86_64_PR_REG = (
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi",
    "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
)
# fmt: on
#: x86 register aliases: contract name first, then the 32-bit view.
_X86_GPR32 = {
    "rax": "eax",
    "rbx": "ebx",
    "rcx": "ecx",
    "rdx": "edx",
    "rsi": "esi",
    "rdi": "edi",
    "rbp": "ebp",
    "rsp": "esp",
    "rip": "eip",
}  # fmt: skip
_X86_SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr", "gdt", "idt")


def _x86_gpr(cpu: CpuState, name: str) -> int:
    alias = _X86_GPR32.get(name)
    return reg(cpu, name, alias) if alias else reg(cpu, name)


def _elf_notes(byteorder: str, cpus: Sequence[CpuState]) -> list[ElfNote]:
    e = struct_order(byteorder)
    out: list[ElfNote] = []
    for cpu in cpus:
        regs = []
        for name in X86_64_PR_REG:
            if name in ("cs", "ss", "ds", "es", "fs", "gs"):
                regs.append(segment(cpu, name).get("selector", 0) & MASK64)
            elif name in ("fs_base", "gs_base"):
                regs.append(segment(cpu, name[:2]).get("base", 0) & MASK64)
            elif name == "eflags":
                regs.append(reg(cpu, "rflags", "eflags"))
            else:
                regs.append(_x86_gpr(cpu, name))
        desc = prstatus(e, PRSTATUS_SIZE, cpu.index + 1, f"{len(regs)}Q", regs)
        out.append(ElfNote(NOTE_NAME_CORE, NT_PRSTATUS, desc))
    for cpu in cpus:
        gprs = [_x86_gpr(cpu, n) for n in ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp"]]
        gprs += [reg(cpu, f"r{i}") for i in range(8, 16)]
        gprs += [_x86_gpr(cpu, "rip"), reg(cpu, "rflags", "eflags")]
        desc = struct.pack(e + "II", QEMU_CPUSTATE_VERSION, QEMU_CPUSTATE_SIZE)
        desc += struct.pack(e + "18Q", *gprs)
        for name in _X86_SEGMENTS:
            s = segment(cpu, name)
            desc += struct.pack(
                e + "IIIIQ",
                s.get("selector", 0) & MASK32,
                s.get("limit", 0) & MASK32,
                s.get("flags", 0) & MASK32,
                0,
                s.get("base", 0) & MASK64,
            )
        desc += struct.pack(e + "5Q", *(reg(cpu, f"cr{i}") for i in range(5)))
        desc += struct.pack(e + "Q", reg(cpu, "kernel_gs_base", "kernelgsbase"))
        assert len(desc) == QEMU_CPUSTATE_SIZE
        out.append(ElfNote(NOTE_NAME_QEMU, NT_QEMU_CPUSTATE, desc))
    return out


# ------------------------------------------------------------------- memory layout

#: i440fx: default upper bound of RAM below 4 GiB (``max-ram-below-4g`` default).
PC_MAX_RAM_BELOW_4G = 0xE000_0000
#: i440fx with gigabyte alignment: split used once RAM reaches PC_MAX_RAM_BELOW_4G.
PC_GIGABYTE_ALIGNED_LOWMEM = 0xC000_0000
#: q35: RAM at or above this size is split.
Q35_SPLIT_THRESHOLD = 0xB000_0000
#: q35: RAM kept below 4 GiB when split (gigabyte-aligned machines).
Q35_GIGABYTE_ALIGNED_LOWMEM = 0x8000_0000
#: Last machine version (major, minor) of both x86 families without gigabyte alignment.
X86_LAST_UNALIGNED_VERSION = (1, 7)
#: Where RAM above the split starts (without the AMD 1 TiB relocation).
X86_ABOVE_4G_START = FOUR_GIB
#: AMD HyperTransport reserved range start; QEMU 7.1+ moves high RAM to 1 TiB for AMD vCPUs.
AMD_HT_START = 0xFD_0000_0000
AMD_ABOVE_4G_RELOCATED = 1 << 40
AMD_1TB_HOLE_SINCE = (7, 1)
#: Legacy window where the guest sees VGA memory and BIOS shadows instead of RAM.
X86_LEGACY_HOLE = (0xA0000, 0x100000)
#: Option ROM area (``pc.rom``) start; it overlays RAM.
PC_ROM_START = 0xC0000
#: The ISA BIOS window ends at 1 MiB and shows at most the last 128 KiB of the BIOS.
ISA_BIOS_END = 0x100000
ISA_BIOS_MAX = 128 * KiB


def _version_at_most(version: MachineVersion, limit: tuple[int, int]) -> bool:
    return version is not None and version <= limit


def _x86_split(family: str, version: MachineVersion, ram: int, notes: list[str]) -> int:
    """Bytes of RAM below 4 GiB for an x86 machine (the rest goes to 4 GiB)."""
    aligned = family != "isapc" and not _version_at_most(version, X86_LAST_UNALIGNED_VERSION)
    if family == "q35":
        lowmem = Q35_SPLIT_THRESHOLD
        if ram >= Q35_SPLIT_THRESHOLD and aligned:
            lowmem = Q35_GIGABYTE_ALIGNED_LOWMEM
        rule = f"q35 splits RAM of {Q35_SPLIT_THRESHOLD:#x} bytes or more"
    else:
        lowmem = PC_MAX_RAM_BELOW_4G
        if ram >= PC_MAX_RAM_BELOW_4G and aligned:
            lowmem = PC_GIGABYTE_ALIGNED_LOWMEM
        rule = f"i440fx splits RAM of {PC_MAX_RAM_BELOW_4G:#x} bytes or more"
    below = min(ram, lowmem)
    if ram > below:
        notes.append(
            f"{rule}: {human_size(below)} below 4 GiB, {human_size(ram - below)} at 4 GiB"
            f" (block offset {below:#x} -> GPA {X86_ABOVE_4G_START:#x}); a max-ram-below-4g"
            " machine option is not recorded in the stream and is not taken into account"
        )
    return below


def _place_ram(
    family: str, version: MachineVersion, block: str, size: int, notes: list[str]
) -> list[Placement]:
    below = _x86_split(family, version, size, notes)
    out = [Placement(block, 0, 0, below)] if below else []
    if size > below:
        out.append(Placement(block, below, X86_ABOVE_4G_START, size - below))
        end = X86_ABOVE_4G_START + size - below
        if end > AMD_HT_START and (version is None or version >= AMD_1TB_HOLE_SINCE):
            notes.append(
                f"RAM above 4 GiB ends at {end:#x}, past {AMD_HT_START:#x}: with an AMD vCPU"
                f" QEMU {AMD_1TB_HOLE_SINCE[0]}.{AMD_1TB_HOLE_SINCE[1]}+ machines put it at"
                f" {AMD_ABOVE_4G_RELOCATED:#x} instead (not applied)"
            )
    notes.append(
        f"x86: GPA {X86_LEGACY_HOLE[0]:#x}-{X86_LEGACY_HOLE[1] - 1:#x} is written from {block};"
        " the guest itself sees VGA memory and BIOS shadows there"
    )
    return out


def _firmware(family: str, sizes: Mapping[str, int], notes: list[str]) -> dict[str, int]:
    """GPA of each firmware block present in ``sizes``."""
    out: dict[str, int] = {}
    if "pc.bios" in sizes:
        bios = sizes["pc.bios"]
        out["pc.bios"] = FOUR_GIB - bios
        window = min(bios, ISA_BIOS_MAX)
        notes.append(
            f"pc.bios ({human_size(bios)}) ends at 4 GiB; its last {human_size(window)} also"
            f" show at GPA {ISA_BIOS_END - window:#x} (ISA BIOS window over RAM), not duplicated"
        )
    top = FOUR_GIB
    for name in ("system.flash0", "system.flash1"):
        if name in sizes:
            top -= sizes[name]
            out[name] = top
    if "pc.rom" in sizes:
        out["pc.rom"] = PC_ROM_START
    return out


# -------------------------------------------------------------------- description

ARCH = Arch(
    name=NAME,
    elf_machine=EM_X86_64,
    byteorder="little",
    decode=decode,
    format=format_registers,
    hex_digits=HEX_DIGITS,
    halted_register="hlt",
    elf_notes=_elf_notes,
    decode_builtin=decode_builtin,
    builtin_note=BUILTIN_NOTE,
    families=(
        MachineFamily(
            "pc",
            (re.compile(r"^pc-i440fx-(\d+)\.(\d+)"), re.compile(r"^pc-(\d+)\.(\d+)"), re.compile(r"^pc$")),
            "pc.ram",
            _place_ram,
            _firmware,
            implied_note=" (q35 would differ only from 0xb0000000 bytes of RAM)",
        ),
        MachineFamily(
            "q35",
            (re.compile(r"^pc-q35-(\d+)\.(\d+)"), re.compile(r"^q35$")),
            "pc.ram",
            _place_ram,
            _firmware,
        ),
        MachineFamily("isapc", (re.compile(r"^isapc$"),), "pc.ram", _place_ram, _firmware),
    ),
    detect=DetectionHints(
        machine=re.compile(r"^(pc|q35|microvm|isapc|xenfv)"),
        firmware_blocks=("pc.bios", "pc.rom"),
        sections=("apic", "kvm-tpr-opt"),
        cpu_fields=("env.eip", "env.regs"),
    ),
)
