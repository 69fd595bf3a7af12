"""aarch64: registers, ``info registers`` text, ELF notes, ``virt`` memory layout.

QEMU: target/arm/machine.c (vmstate_arm_cpu), target/arm/cpu.c (arm_cpu_dump_state),
target/arm/arch_dump.c (arm_cpu_write_elf64_note), hw/arm/virt.c (base_memmap).

Registers decoded (all unsigned): ``x0..x30``, ``sp`` (the stack pointer in
use, kept in the 32nd xreg slot), ``pc``, ``pstate`` (the ``cpsr`` field, a
big-endian word), and ``fpcr``/``fpsr`` when the VFP state is present.  A vCPU
saved in AArch32 state gives ``r0..r15``, ``pc`` and ``cpsr`` instead.

ELF notes: ``NT_PRSTATUS`` then ``NT_PRFPREG`` per vCPU.

Memory layout of ``virt``: RAM at 0x40000000; ``virt.flash0`` at 0,
``virt.flash1`` at 0x04000000, ``virt.secure-ram`` at 0x0e000000.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence

from migstream.arch.cpu_fields import CpuFields
from migstream.arch.cpu_text import hex_reg, int_reg, rows
from migstream.arch.elf_notes import (
    MASK32,
    NOTE_NAME_CORE,
    NT_PRFPREG,
    NT_PRSTATUS,
    ElfNote,
    prstatus,
    reg,
    reg_value,
    struct_order,
)
from migstream.arch.model import Arch, CpuState, DetectionHints, MachineFamily, MachineVersion, RegisterValue
from migstream.ram.layout import Placement

NAME = "aarch64"

# ----------------------------------------------------------------------- registers

# The AArch32 FPSCR word packs the AArch64 FPSR and FPCR bits.
_FPSR_IN_FPSCR = 0xF800009F
_FPCR_IN_FPSCR = 0x07FF9F00
# PSTATE.nRW: set when the vCPU executes in AArch32 state.
_PSTATE_NRW = 0x10
_PSTATE_BTYPE_SHIFT = 10
# ID_AA64PFR1_EL1: BT (branch target identification) and SME fields.
_PFR1_BT_MASK = 0xF
_PFR1_SME_SHIFT = 24
# SVCR bits: streaming mode, ZA storage.
_SVCR_SM = 1
_SVCR_ZA = 2
# CPACR_EL1 enable fields for FP/SIMD and SVE.
_CPACR_FPEN_SHIFT = 20
_CPACR_ZEN_SHIFT = 16
# HCR_EL2 nested virtualisation bits the monitor names.
_HCR_NV_BITS = (("NV", 1 << 42), ("NV1", 1 << 43), ("NV2", 1 << 45))


def _decode(f: CpuFields, extra: dict[str, int]) -> dict[str, RegisterValue]:
    pstate = f.uint("cpsr", 32)
    regs: dict[str, RegisterValue] = {}
    if pstate & _PSTATE_NRW:
        # AArch32 state: the live registers are the 32-bit bank.
        r32 = f.uints("env.regs", 32, count=16)
        for n, value in enumerate(r32):
            regs[f"r{n}"] = value
        regs["pc"] = r32[15]
        regs["cpsr"] = pstate
        extra["aarch32"] = 1
    else:
        xregs = f.uints("env.xregs", 64, count=32)
        for n in range(31):
            regs[f"x{n}"] = xregs[n]
        regs["sp"] = xregs[31]
        regs["pc"] = f.uint("env.pc")
        regs["pstate"] = pstate
    vfp = f.sub("cpu/vfp")
    if vfp is not None and vfp.has("fpscr"):
        fpscr = vfp.uint("fpscr", 32)
        fpcr = fpscr & _FPCR_IN_FPSCR
        fpsr = fpscr & _FPSR_IN_FPSCR
        whole = vfp.sub("cpu/vfp/fpcr_fpsr") or f.sub("cpu/vfp/fpcr_fpsr")
        if whole is not None:
            fpcr = whole.uint("fpcr", 64)
            fpsr = whole.uint("fpsr", 64)
        regs["fpcr"] = fpcr
        regs["fpsr"] = fpsr
    if f.has("power_state"):
        extra["powered_off"] = f.uint("power_state", 8)
    _decode_system(f, regs, extra)
    return regs


def _sysreg_index(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    """The index of an AArch64 system register in the saved coprocessor register list."""
    return _CPREG_ARM64_SYSREG | (op0 << 14) | (op1 << 11) | (crn << 7) | (crm << 3) | op2


#: Index base of a 64-bit AArch64 system register (KVM's encoding, which the list uses).
_CPREG_ARM64_SYSREG = 0x6030_0000_0013_0000
#: System registers the monitor's dump depends on, by the key they get.
_SYSREGS = {
    "cpacr_el1": _sysreg_index(3, 0, 1, 0, 2),
    "id_aa64pfr1_el1": _sysreg_index(3, 0, 0, 4, 1),
    "svcr": _sysreg_index(3, 3, 4, 2, 2),
    "zcr_el1": _sysreg_index(3, 0, 1, 2, 0),
    "scr_el3": _sysreg_index(3, 6, 1, 1, 0),
    "hcr_el2": _sysreg_index(3, 4, 1, 1, 0),
    "cptr_el2": _sysreg_index(3, 4, 1, 1, 2),
    "cptr_el3": _sysreg_index(3, 6, 1, 1, 2),
}
#: Hex digits of the registers that JSON gives as hex strings.
_HEX_DIGITS = {f"v{n}": 32 for n in range(32)}


def _decode_system(f: CpuFields, regs: dict[str, RegisterValue], extra: dict[str, int]) -> None:
    """System registers from the saved coprocessor register list, the SIMD registers, CPU features."""
    if f.has("cpreg_vmstate_indexes") and f.has("cpreg_vmstate_values"):
        saved = dict(zip(f.uints("cpreg_vmstate_indexes"), f.uints("cpreg_vmstate_values"), strict=False))
        for name, index in _SYSREGS.items():
            if index in saved:
                regs[name] = saved[index]
    vfp = f.sub("cpu/vfp")
    if vfp is not None:
        for n in range(32):
            name = f"env.vfp.zregs[{n}].d"
            if vfp.has(name):
                d = vfp.uints(name)
                if len(d) >= 2:
                    regs[f"v{n}"] = (d[1] << 64) | d[0]
    if f.sub("cpu/sve") is not None:
        extra["sve"] = 1


# ------------------------------------------------------------ info registers text


def _format(cpu: CpuState) -> list[str]:
    regs = cpu.registers
    lines: list[str] = []
    if cpu.extra.get("aarch32"):
        lines += rows([f"R{n:02d}={hex_reg(regs, f'r{n}', 8)}" for n in range(16)], 4)
        psr = int_reg(regs, "cpsr") or 0
        lines.append(f"PSR={psr:08x} {_nzcv(psr)} A32")
        return lines
    items = [f" PC={hex_reg(regs, 'pc', 16)}"]
    items += [f"X{n:02d}={hex_reg(regs, f'x{n}', 16)}" for n in range(31)]
    items.append(f" SP={hex_reg(regs, 'sp', 16)}")
    lines += rows(items, 3)
    pstate = int_reg(regs, "pstate") or 0
    el = (pstate >> 2) & 3
    scr = int_reg(regs, "scr_el3")
    ns_status = "" if scr is None or el == 3 else ("NS " if scr & 1 else "S ")
    status = f"PSTATE={pstate:08x} {_nzcv(pstate)} {ns_status}EL{el}{'h' if pstate & 1 else 't'}"
    pfr1 = int_reg(regs, "id_aa64pfr1_el1") or 0
    svcr = int_reg(regs, "svcr") or 0
    if (pfr1 >> _PFR1_SME_SHIFT) & 0xF:
        status += f"  SVCR={svcr:08x} {'Z' if svcr & _SVCR_ZA else '-'}{'S' if svcr & _SVCR_SM else '-'}"
    if pfr1 & _PFR1_BT_MASK:
        status += f"  BTYPE={(pstate >> _PSTATE_BTYPE_SHIFT) & 3}"
    hcr = int_reg(regs, "hcr_el2") or 0
    status += "".join(f" {name}" for name, bit in _HCR_NV_BITS if hcr & bit)
    if _fp_trapped(regs, el, _CPACR_FPEN_SHIFT):
        lines.append(status + "    FPU disabled")
        return lines
    lines.append(status + f"     FPCR={hex_reg(regs, 'fpcr', 8)} FPSR={hex_reg(regs, 'fpsr', 8)}")
    if cpu.extra.get("sve") and not _fp_trapped(regs, el, _CPACR_ZEN_SHIFT) and not svcr & _SVCR_SM:
        # Scalable vectors at the vector length in use: the stream keeps only their
        # low 128 bits here, so the predicate and wide lines are not rebuilt.
        lines += rows([f"Z{n:02d}={_qreg(regs, n)}" for n in range(32)], 2)
    else:
        lines += rows([f"Q{n:02d}={_qreg(regs, n)}" for n in range(32)], 2)
    return lines


def _qreg(regs: Mapping[str, RegisterValue], n: int) -> str:
    value = int_reg(regs, f"v{n}")
    if value is None:
        return "-" * 16 + ":" + "-" * 16
    return f"{value >> 64:016x}:{value & ((1 << 64) - 1):016x}"


def _fp_trapped(regs: Mapping[str, RegisterValue], el: int, shift: int) -> bool:
    """Whether FP (or SVE) instructions trap at ``el`` by CPACR_EL1 (EL0 and EL1 only)."""
    cpacr = int_reg(regs, "cpacr_el1")
    if cpacr is None or el > 1:
        return False
    enable = (cpacr >> shift) & 3
    return enable != 3 if el == 0 else enable in (0, 2)


def _nzcv(psr: int) -> str:
    return "".join(
        ch if psr & (1 << bit) else "-" for ch, bit in (("N", 31), ("Z", 30), ("C", 29), ("V", 28))
    )


# ----------------------------------------------------------------------- ELF notes

EM_AARCH64 = 183
#: ``struct elf_prstatus`` size on aarch64 Linux.
PRSTATUS_SIZE = 392
#: Register order of ``pr_reg`` (Linux ``user_pt_regs``).
AARCH64_PR_REG = tuple(f"x{i}" for i in range(31)) + ("sp", "pc", "pstate")


def _vector(cpu: CpuState, byteorder: str, *names: str) -> bytes:
    v = reg_value(cpu, *names)
    value = int(v) if isinstance(v, int) else 0
    return (value & ((1 << 128) - 1)).to_bytes(16, "little" if byteorder == "little" else "big")


def _elf_notes(byteorder: str, cpus: Sequence[CpuState]) -> list[ElfNote]:
    e = struct_order(byteorder)
    out: list[ElfNote] = []
    for cpu in cpus:
        regs = [reg(cpu, n) for n in AARCH64_PR_REG]
        out.append(
            ElfNote(NOTE_NAME_CORE, NT_PRSTATUS, prstatus(e, PRSTATUS_SIZE, cpu.index + 1, "34Q", regs))
        )
        fp = b"".join(_vector(cpu, byteorder, f"v{i}", f"q{i}") for i in range(32))
        fp += struct.pack(e + "IIII", reg(cpu, "fpsr", mask=MASK32), reg(cpu, "fpcr", mask=MASK32), 0, 0)
        out.append(ElfNote(NOTE_NAME_CORE, NT_PRFPREG, fp))
    return out


# ------------------------------------------------------------------- memory layout

VIRT_RAM_BASE = 0x4000_0000
#: Fixed firmware/flash GPAs.
VIRT_FIXED_BLOCKS = {
    "virt.flash0": 0x0000_0000,
    "virt.flash1": 0x0400_0000,
    "virt.secure-ram": 0x0E00_0000,
}


def _place_ram(
    family: str, version: MachineVersion, block: str, size: int, notes: list[str]
) -> list[Placement]:
    return [Placement(block, 0, VIRT_RAM_BASE, size)]


def _firmware(family: str, sizes: Mapping[str, int], notes: list[str]) -> dict[str, int]:
    return {name: gpa for name, gpa in VIRT_FIXED_BLOCKS.items() if name in sizes}


# -------------------------------------------------------------------- description

ARCH = Arch(
    name=NAME,
    elf_machine=EM_AARCH64,
    byteorder="little",
    decode=_decode,
    format=_format,
    hex_digits=_HEX_DIGITS,
    elf_notes=_elf_notes,
    families=(
        MachineFamily(
            "virt", (re.compile(r"^virt(?:-(\d+)\.(\d+))?"),), "mach-virt.ram", _place_ram, _firmware
        ),
    ),
    detect=DetectionHints(
        machine=re.compile(r"^virt|^sbsa|^raspi"),
        firmware_blocks=("virt.flash0",),
        cpu_fields=("env.xregs", "env.pc"),
    ),
)
