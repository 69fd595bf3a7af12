"""x86-64: registers, ``info registers`` text, ELF notes, pc/q35/isapc memory layout.

QEMU: target/i386/machine.c (vmstate_x86_cpu), target/i386/cpu-dump.c (x86_cpu_dump_state),
target/i386/arch_dump.c (x86_64_write_elf64_note, cpu_write_qemu_note), hw/i386/pc_piix.c,
hw/i386/pc_q35.c.

Registers decoded (all unsigned, at the register width): the 16 GPRs, ``rip``,
``rflags``, ``cr0 cr2 cr3 cr4``, ``efer``, ``dr0..dr7``, segments ``es cs ss ds
fs gs ldt tr`` (selector/base/limit/flags) and ``gdt``/``idt`` (base/limit).
The saved ``env.eflags`` already holds the arithmetic flags (the vCPU is out of
the translated code when it is saved).

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
from collections.abc import Mapping, Sequence

from migstream.arch.cpu_fields import CpuFields
from migstream.arch.cpu_text import hex_reg, int_reg, rows
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
from migstream.arch.model import Arch, CpuState, DetectionHints, RegisterValue
from migstream.arch.x86_64_cpu_layout import BUILTIN_NOTE, decode_builtin
from migstream.arch.x86_64_memory import FAMILIES
from migstream.errors import StreamFormatError, UnsupportedError

NAME = "x86_64"

# ----------------------------------------------------------------------- registers

_X86_GPRS = (
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
)  # fmt: skip
_X86_SEGS = ("es", "cs", "ss", "ds", "fs", "gs")


def _x86_segment(seg: CpuFields, with_selector: bool = True) -> dict[str, int]:
    out: dict[str, int] = {}
    if with_selector:
        out["selector"] = seg.uint("selector", 32)
    out["base"] = seg.uint("base", 64)
    out["limit"] = seg.uint("limit", 32)
    if with_selector:
        out["flags"] = seg.uint("flags", 32)
    return out


def _decode(f: CpuFields, extra: dict[str, int]) -> dict[str, RegisterValue]:
    gprs = f.uints("env.regs")
    if len(gprs) != 16:
        if len(gprs) == 8:
            raise UnsupportedError(
                "32-bit x86 target (8 general registers): only x86_64 streams are decoded",
                section=f.section,
                field="env.regs",
            )
        raise StreamFormatError(
            "array has the wrong length", section=f.section, field="env.regs", expected=16, found=len(gprs)
        )
    regs: dict[str, RegisterValue] = dict(zip(_X86_GPRS, gprs, strict=True))
    regs["rip"] = f.uint("env.eip")
    regs["rflags"] = f.uint("env.eflags")
    for n in (0, 2, 3, 4):
        regs[f"cr{n}"] = f.uint(f"env.cr[{n}]")
    if f.has("env.efer"):
        regs["efer"] = f.uint("env.efer")
    for n, value in enumerate(f.uints("env.dr", count=8)):
        regs[f"dr{n}"] = value
    for name, seg in zip(_X86_SEGS, f.structs("env.segs", 6), strict=True):
        regs[name] = _x86_segment(seg)
    regs["ldt"] = _x86_segment(f.struct("env.ldt"))
    regs["tr"] = _x86_segment(f.struct("env.tr"))
    regs["gdt"] = _x86_segment(f.struct("env.gdt"), with_selector=False)
    regs["idt"] = _x86_segment(f.struct("env.idt"), with_selector=False)
    extra["hflags"] = f.uint("env.hflags", 32)
    if f.has("env.hflags2"):
        extra["hflags2"] = f.uint("env.hflags2", 32)
    if f.has("env.a20_mask"):
        extra["a20_mask"] = f.uint("env.a20_mask", 32)
    return regs


# ------------------------------------------------------------ info registers text

# x86 hidden-flag bits (QEMU's hflags word, saved with the vCPU).
_HF_CPL = 0x3
_HF_INHIBIT_IRQ_SHIFT = 3
_HF_PE = 1 << 7
_HF_LMA = 1 << 14
_HF_CS64 = 1 << 15
_HF_SMM_SHIFT = 19

# x86 segment descriptor flag bits, as kept in the segment cache.
_DESC_TYPE_SHIFT = 8
_DESC_S = 1 << 12
_DESC_DPL_SHIFT = 13
_DESC_P = 1 << 15
_DESC_L = 1 << 21
_DESC_B = 1 << 22
_SEG_FLAGS_SHOWN = 0x00FFFF00

_SYSTEM_TYPES_LEGACY = (
    "Reserved", "TSS16-avl", "LDT", "TSS16-busy", "CallGate16", "TaskGate", "IntGate16", "TrapGate16",
    "Reserved", "TSS32-avl", "Reserved", "TSS32-busy", "CallGate32", "Reserved", "IntGate32", "TrapGate32",
)  # fmt: skip
_SYSTEM_TYPES_LONG = (
    "<hiword>", "Reserved", "LDT", "Reserved", "Reserved", "Reserved", "Reserved", "Reserved",
    "Reserved", "TSS64-avl", "Reserved", "TSS64-busy", "CallGate64", "Reserved", "IntGate64", "TrapGate64",
)  # fmt: skip

_EFLAGS_LETTERS = (("D", 0x400), ("O", 0x800), ("S", 0x80), ("Z", 0x40), ("A", 0x10), ("P", 0x4), ("C", 0x1))


def _x86_segment_line(name: str, seg: RegisterValue | None, hflags: int, wide: bool) -> str:
    if not isinstance(seg, Mapping):
        return f"{name:<3}=----"
    selector = seg.get("selector", 0)
    base = seg.get("base", 0)
    limit = seg.get("limit", 0)
    flags = seg.get("flags", 0)
    base_text = f"{base:016x}" if wide else f"{base & 0xFFFFFFFF:08x}"
    line = f"{name:<3}={selector:04x} {base_text} {limit:08x} {flags & _SEG_FLAGS_SHOWN:08x}"
    if not (hflags & _HF_PE) or not (flags & _DESC_P):
        return line
    line += f" DPL={(flags >> _DESC_DPL_SHIFT) & 3} "
    kind = (flags >> _DESC_TYPE_SHIFT) & 0xF
    if flags & _DESC_S:
        if kind & 0x8:  # code
            line += "CS64" if flags & _DESC_L else ("CS32" if flags & _DESC_B else "CS16")
            line += f" [{'C' if kind & 4 else '-'}{'R' if kind & 2 else '-'}"
        else:
            line += "DS  " if (flags & _DESC_B) or (hflags & _HF_LMA) else "DS16"
            line += f" [{'E' if kind & 4 else '-'}{'W' if kind & 2 else '-'}"
        line += f"{'A' if kind & 1 else '-'}]"
    else:
        names = _SYSTEM_TYPES_LONG if hflags & _HF_LMA else _SYSTEM_TYPES_LEGACY
        line += names[kind]
    return line


def _format(cpu: CpuState) -> list[str]:
    regs = cpu.registers
    hflags = cpu.extra.get("hflags", 0)
    cs64 = bool(hflags & _HF_CS64)
    lma = bool(hflags & _HF_LMA)
    eflags = int_reg(regs, "rflags") or 0
    letters = "".join(ch if eflags & bit else "-" for ch, bit in _EFLAGS_LETTERS)
    a20 = (cpu.extra.get("a20_mask", 0xFFFFFFFF) >> 20) & 1
    status = (
        f"[{letters}] CPL={hflags & _HF_CPL} II={(hflags >> _HF_INHIBIT_IRQ_SHIFT) & 1} A20={a20}"
        f" SMM={(hflags >> _HF_SMM_SHIFT) & 1} HLT={cpu.extra.get('halted', 0)}"
    )
    lines: list[str] = []
    if cs64:
        gprs = [
            ("RAX", "rax"), ("RBX", "rbx"), ("RCX", "rcx"), ("RDX", "rdx"),
            ("RSI", "rsi"), ("RDI", "rdi"), ("RBP", "rbp"), ("RSP", "rsp"),
            ("R8 ", "r8"), ("R9 ", "r9"), ("R10", "r10"), ("R11", "r11"),
            ("R12", "r12"), ("R13", "r13"), ("R14", "r14"), ("R15", "r15"),
        ]  # fmt: skip
        lines += rows([f"{label}={hex_reg(regs, name, 16)}" for label, name in gprs], 4)
        lines.append(f"RIP={hex_reg(regs, 'rip', 16)} RFL={eflags & 0xFFFFFFFF:08x} {status}")
    else:
        gprs = [
            ("EAX", "rax"), ("EBX", "rbx"), ("ECX", "rcx"), ("EDX", "rdx"),
            ("ESI", "rsi"), ("EDI", "rdi"), ("EBP", "rbp"), ("ESP", "rsp"),
        ]  # fmt: skip
        lines += rows([f"{label}={hex_reg(regs, name, 8)}" for label, name in gprs], 4)
        lines.append(f"EIP={hex_reg(regs, 'rip', 8)} EFL={eflags & 0xFFFFFFFF:08x} {status}")
    for name in ("es", "cs", "ss", "ds", "fs", "gs", "ldt", "tr"):
        lines.append(_x86_segment_line(name.upper(), regs.get(name), hflags, cs64))
    for name in ("gdt", "idt"):
        table = regs.get(name)
        if isinstance(table, Mapping):
            base = table.get("base", 0)
            base_text = f"{base:016x}" if lma else f"{base & 0xFFFFFFFF:08x}"
            lines.append(f"{name.upper()}=     {base_text} {table.get('limit', 0):08x}")
    wide_cr = 16 if lma else 8
    lines.append(
        f"CR0={hex_reg(regs, 'cr0', 8)} CR2={hex_reg(regs, 'cr2', wide_cr)} "
        f"CR3={hex_reg(regs, 'cr3', wide_cr)} CR4={hex_reg(regs, 'cr4', 8)}"
    )
    lines.append(" ".join(f"DR{n}={hex_reg(regs, f'dr{n}', 16)}" for n in range(4)))
    lines.append(f"DR6={hex_reg(regs, 'dr6', 16)} DR7={hex_reg(regs, 'dr7', 16)}")
    if "efer" in regs:
        lines.append(f"EFER={hex_reg(regs, 'efer', 16)}")
    return lines


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
    decode=_decode,
    format=_format,
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
