"""x86-64: ELF notes and the architecture description; registers and their text in x86_64_cpu,
the pc/q35/isapc memory layout in x86_64_memory.

QEMU: target/i386/arch_dump.c (x86_64_write_elf64_note, cpu_write_qemu_note), hw/i386/pc_piix.c,
hw/i386/pc_q35.c, hw/i386/pc.c (pc_memory_init).

Registers and the ``info registers`` text: :mod:`migstream.arch.x86_64_cpu`.

ELF notes: one ``NT_PRSTATUS`` per vCPU, then one "QEMU" note per vCPU (QEMU's
CPU state record: GPRs, segments, descriptor tables, CR0-CR4, KERNEL_GS_BASE).
As in QEMU, the core is ``EM_X86_64`` with the x86_64 ``elf_prstatus`` when
vCPU 0 is in long mode, else ``EM_386`` with the i386 ``elf_prstatus``; that
one is an ELF32 file unless memory reaches 4 GiB (a BIOS at the top of 4 GiB
does; pflash, which the dump leaves out, does not).

The memory layout of the pc, q35 and isapc families is in
:mod:`migstream.arch.x86_64_memory`.

The built-in layout of the ``cpu`` section, for streams without a description,
is in :mod:`migstream.arch.x86_64_cpu_layout`.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence

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
from migstream.arch.model import Arch, CpuState, DetectionHints
from migstream.arch.x86_64_cpu import HEX_DIGITS, decode, format_registers
from migstream.arch.x86_64_cpu_layout import BUILTIN_NOTE, decode_builtin
from migstream.arch.x86_64_memory import FAMILIES

NAME = "x86_64"

# ----------------------------------------------------------------------- ELF notes

EM_386 = 3
EM_X86_64 = 62
#: QEMU's hidden flag for EFER.LMA (long mode active).
HF_LMA_MASK = 1 << 14
#: ``struct elf_prstatus`` size on x86_64 Linux.
PRSTATUS_SIZE = 336
#: ``struct elf_prstatus`` on i386 Linux: size, offsets of pr_pid and pr_reg.
PRSTATUS32_SIZE = 144
PRSTATUS32_PID_OFFSET = 24
PRSTATUS32_REG_OFFSET = 72
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


def _long_mode(cpus: Sequence[CpuState]) -> bool:
    """Whether vCPU 0 runs in long mode (EFER.LMA as QEMU's hidden flags keep it)."""
    return bool(cpus) and bool(cpus[0].extra.get("hflags", 0) & HF_LMA_MASK)


def _elf_machine(cpus: Sequence[CpuState]) -> int:
    return EM_X86_64 if _long_mode(cpus) else EM_386


def _elf_class(cpus: Sequence[CpuState], ranges: Sequence[tuple[int, int]]) -> int:
    """ELFCLASS32 outside long mode when every range ends at or below 4 GiB - 1, as QEMU decides."""
    if _long_mode(cpus) or any(gpa + size > MASK32 for gpa, size in ranges):
        return 64
    return 32


def _prstatus64(e: str, cpu: CpuState) -> bytes:
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
    return prstatus(e, PRSTATUS_SIZE, cpu.index + 1, f"{len(regs)}Q", regs)


def _prstatus32(e: str, cpu: CpuState) -> bytes:
    """The i386 ``struct elf_prstatus``: 32-bit registers, 16-bit selectors each padded to 32 bits."""
    buf = bytearray(PRSTATUS32_SIZE)
    struct.pack_into(e + "I", buf, PRSTATUS32_PID_OFFSET, (cpu.index + 1) & MASK32)

    def sel(name: str) -> int:
        return segment(cpu, name).get("selector", 0) & 0xFFFF

    gprs = [_x86_gpr(cpu, n) & MASK32 for n in ("rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rax")]
    struct.pack_into(
        e + "7I8H2I2H2I2H",
        buf,
        PRSTATUS32_REG_OFFSET,
        *gprs,
        sel("ds"), 0, sel("es"), 0, sel("fs"), 0, sel("gs"), 0,
        0,  # orig_eax
        _x86_gpr(cpu, "rip") & MASK32,
        sel("cs"), 0,
        reg(cpu, "rflags", "eflags") & MASK32,
        _x86_gpr(cpu, "rsp") & MASK32,
        sel("ss"), 0,
    )  # fmt: skip
    return bytes(buf)


def _elf_notes(byteorder: str, cpus: Sequence[CpuState]) -> list[ElfNote]:
    """QEMU's order: one NT_PRSTATUS per vCPU (64-bit layout only when vCPU 0 is in long mode),
    then one QEMU CPU state note per vCPU."""
    e = struct_order(byteorder)
    wide = _long_mode(cpus)
    out: list[ElfNote] = []
    for cpu in cpus:
        desc = _prstatus64(e, cpu) if wide else _prstatus32(e, cpu)
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
    elf_machine_of=_elf_machine,
    elf_class_of=_elf_class,
    decode_builtin=decode_builtin,
    builtin_note=BUILTIN_NOTE,
    families=FAMILIES,
    detect=DetectionHints(
        machine=re.compile(r"^(pc|q35|microvm|isapc|xenfv)"),
        firmware_blocks=("pc.bios", "pc.rom"),
        sections=("apic", "kvm-tpr-opt"),
        cpu_fields=("env.eip", "env.regs"),
    ),
)
