"""aarch64: registers, ``info registers`` text, ELF notes, ``virt`` memory layout.

QEMU: target/arm/machine.c (vmstate_arm_cpu), target/arm/cpu.c (arm_cpu_dump_state),
target/arm/arch_dump.c (arm_cpu_write_elf64_note), hw/arm/virt.c (base_memmap).

Registers decoded (all unsigned): ``x0..x30``, ``sp`` (the stack pointer in
use, kept in the 32nd xreg slot), ``pc``, ``pstate`` (the ``cpsr`` field, a
big-endian word), and ``fpcr``/``fpsr`` when the VFP state is present.  A vCPU
saved in AArch32 state gives ``r0..r15``, ``pc`` and ``cpsr`` instead.

ELF notes: ``NT_PRSTATUS`` (``pr_fpvalid`` 1, as QEMU writes it) then
``NT_PRFPREG`` per vCPU.

Memory layout of ``virt``: RAM at 0x40000000; device memory where PCI BARs put
it.  ``virt.flash0`` (0), ``virt.flash1`` (0x04000000) and ``virt.secure-ram``
(0x0e000000) are not placed: QEMU's ``dump-guest-memory`` leaves them out (the
flash is a ROM device, the secure RAM is outside the normal address space).
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
from migstream.arch.memory_layout import add_if_free
from migstream.arch.model import (
    Arch,
    CpuState,
    DetectionHints,
    LayoutContext,
    MachineFamily,
    MachineVersion,
    RegisterValue,
)
from migstream.arch.pci import bar_placements
from migstream.ram.layout import Placement

NAME = "aarch64"

# ----------------------------------------------------------------------- registers

# The AArch32 FPSCR word packs the AArch64 FPSR and FPCR bits.
_FPSR_IN_FPSCR = 0xF800009F
_FPCR_IN_FPSCR = 0x07FF9F00
# PSTATE.nRW: set when the vCPU executes in AArch32 state.
_PSTATE_NRW = 0x10


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
    return regs


# ------------------------------------------------------------ info registers text


def _format(cpu: CpuState) -> list[str]:
    regs = cpu.registers
    lines: list[str] = []
    if cpu.extra.get("aarch32"):
        lines += rows([f"R{n:02d}={hex_reg(regs, f'r{n}', 8)}" for n in range(16)], 4)
        psr = int_reg(regs, "cpsr") or 0
        lines.append(f"PSR={psr:08x} {_nzcv(psr)} A32")
    else:
        items = [f" PC={hex_reg(regs, 'pc', 16)}"]
        items += [f"X{n:02d}={hex_reg(regs, f'x{n}', 16)}" for n in range(31)]
        items.append(f" SP={hex_reg(regs, 'sp', 16)}")
        lines += rows(items, 3)
        pstate = int_reg(regs, "pstate") or 0
        el = (pstate >> 2) & 3
        lines.append(f"PSTATE={pstate:08x} {_nzcv(pstate)} EL{el}{'h' if pstate & 1 else 't'}")
    if "fpcr" in regs or "fpsr" in regs:
        lines.append(f"FPCR={hex_reg(regs, 'fpcr', 8)} FPSR={hex_reg(regs, 'fpsr', 8)}")
    if cpu.extra.get("powered_off"):
        lines.append("(powered off)")
    return lines


def _nzcv(psr: int) -> str:
    return "".join(
        ch if psr & (1 << bit) else "-" for ch, bit in (("N", 31), ("Z", 30), ("C", 29), ("V", 28))
    )


# ----------------------------------------------------------------------- ELF notes

EM_AARCH64 = 183
#: ``struct elf_prstatus`` size on aarch64 Linux.
PRSTATUS_SIZE = 392
#: ``pr_fpvalid`` follows the 34 registers of ``pr_reg``.
PRSTATUS_FPVALID_OFFSET = 384
#: Register order of ``pr_reg`` (Linux ``user_pt_regs``).
AARCH64_PR_REG = tuple(f"x{i}" for i in range(31)) + ("sp", "pc", "pstate")


def _vector(cpu: CpuState, byteorder: str, *names: str) -> bytes:
    v = reg_value(cpu, *names)
    value = int(v) if isinstance(v, int) else 0
    return (value & ((1 << 128) - 1)).to_bytes(16, "little" if byteorder == "little" else "big")


def _note_state(f: CpuFields, extra: dict[str, int]) -> None:
    """The 128-bit vector registers ``v0..v31`` (low half ``d[0]``, high half ``d[1]``)."""
    vfp = f.sub("cpu/vfp")
    if vfp is None:
        return
    for i in range(32):
        name = f"env.vfp.zregs[{i}].d"
        if vfp.has(name):
            halves = vfp.uints(name)
            if len(halves) >= 2:
                extra.setdefault(f"v{i}", halves[0] | halves[1] << 64)


def _elf_notes(byteorder: str, cpus: Sequence[CpuState]) -> list[ElfNote]:
    e = struct_order(byteorder)
    out: list[ElfNote] = []
    for cpu in cpus:
        regs = [reg(cpu, n) for n in AARCH64_PR_REG]
        desc = bytearray(prstatus(e, PRSTATUS_SIZE, cpu.index + 1, "34Q", regs))
        struct.pack_into(e + "i", desc, PRSTATUS_FPVALID_OFFSET, 1)  # QEMU always writes 1
        out.append(ElfNote(NOTE_NAME_CORE, NT_PRSTATUS, bytes(desc)))
        fp = b"".join(_vector(cpu, byteorder, f"v{i}", f"q{i}") for i in range(32))
        fp += struct.pack(e + "IIII", reg(cpu, "fpsr", mask=MASK32), reg(cpu, "fpcr", mask=MASK32), 0, 0)
        out.append(ElfNote(NOTE_NAME_CORE, NT_PRFPREG, fp))
    return out


# ------------------------------------------------------------------- memory layout

VIRT_RAM_BASE = 0x4000_0000
#: Fixed GPAs of blocks that QEMU's dump-guest-memory leaves out: the flash is a
#: ROM device (not RAM), the secure RAM lives in the secure address space only.
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
    for name, gpa in VIRT_FIXED_BLOCKS.items():
        if name in sizes:
            what = "secure-world RAM" if "secure" in name else "pflash, a ROM device"
            notes.append(
                f"{name} ({what}, {gpa:#x}-{gpa + sizes[name] - 1:#x}) is not in QEMU's"
                " dump-guest-memory; not placed (--map places it)"
            )
    return {}


def _refine(ctx: LayoutContext, placed: list[Placement]) -> list[Placement]:
    """Device memory behind the BARs of PCI devices (the gpex windows map bus addresses 1:1)."""
    out = list(placed)
    for p in bar_placements(ctx.devices, ctx.sizes, ctx.overridden, ctx.notes):
        add_if_free(out, p, ctx.notes)
    return out


# -------------------------------------------------------------------- description

ARCH = Arch(
    name=NAME,
    elf_machine=EM_AARCH64,
    byteorder="little",
    decode=_decode,
    format=_format,
    elf_notes=_elf_notes,
    note_state=_note_state,
    families=(
        MachineFamily(
            "virt",
            (re.compile(r"^virt(?:-(\d+)\.(\d+))?"),),
            "mach-virt.ram",
            _place_ram,
            _firmware,
            refine=_refine,
        ),
    ),
    detect=DetectionHints(
        machine=re.compile(r"^virt|^sbsa|^raspi"),
        firmware_blocks=("virt.flash0",),
        cpu_fields=("env.xregs", "env.pc"),
    ),
)
