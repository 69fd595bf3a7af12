"""ppc64: registers, ``info registers`` text, ELF notes, ``pseries`` memory layout.

QEMU: target/ppc/machine.c (vmstate_ppc_cpu), target/ppc/cpu_init.c (ppc_cpu_dump_state),
target/ppc/arch_dump.c (ppc64_cpu_write_elf64_note, cpu_get_dump_info), hw/ppc/spapr.c (spapr_phb_placement).

Registers decoded (all unsigned): ``r0..r31``, ``nip``, ``msr``, ``cr`` (the
eight 4-bit fields, field 0 most significant), and from the SPR array: ``xer``
(saved there whole, with its SO/OV/CA bits), ``lr``, ``ctr``, ``srr0``,
``srr1``, ``sprg0..7`` and a few others that the monitor shows.

ELF notes per vCPU, in QEMU's order: ``NT_PRSTATUS`` (``pr_pid`` = the vCPU's
device-tree id), ``NT_PRFPREG``, ``NT_PPC_VMX``, ``NT_PPC_VSX``, ``NT_PPC_SPE``.
Registers the vCPU state does not hold are written as 0.  The byte order of the
core follows the interrupt endianness of the first vCPU.

Memory layout of ``pseries``: RAM at 0; device memory where PCI BARs put it,
through the host bridge's windows (bus addresses from 2 GiB show at
0x200000000000 + (bridge + 1) * 2 GiB; 64-bit BARs at their bus address).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence

from migstream.arch.cpu_fields import CpuFields
from migstream.arch.cpu_text import hex_reg, int_reg
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
from migstream.errors import StreamFormatError
from migstream.ram.layout import FOUR_GIB, Placement

NAME = "ppc64"

# ----------------------------------------------------------------------- registers

# Indexes into the SPR array (architected SPR numbers).
_PPC_SPRS: tuple[tuple[str, int], ...] = (
    ("xer", 1),
    ("lr", 8),
    ("ctr", 9),
    ("dsisr", 18),
    ("dar", 19),
    ("srr0", 26),
    ("srr1", 27),
    ("cfar", 28),
    ("vrsave", 256),
    ("sprg0", 272),
    ("sprg1", 273),
    ("sprg2", 274),
    ("sprg3", 275),
    ("sprg4", 276),
    ("sprg5", 277),
    ("sprg6", 278),
    ("sprg7", 279),
    ("pvr", 287),
    ("hsrr0", 314),
    ("hsrr1", 315),
    ("lpcr", 318),
    ("ptcr", 464),
    ("hid0", 1008),
)


def _decode(f: CpuFields, extra: dict[str, int]) -> dict[str, RegisterValue]:
    regs: dict[str, RegisterValue] = {}
    for n, value in enumerate(f.uints("env.gpr", 64, count=32)):
        regs[f"r{n}"] = value
    regs["nip"] = f.uint("env.nip")
    regs["msr"] = f.uint("env.msr")
    crf = f.uints("env.crf", 32, count=8)
    cr = 0
    for field in crf:
        cr = (cr << 4) | (field & 0xF)
    regs["cr"] = cr
    sprs = f.uints("env.spr", 64)
    for name, number in _PPC_SPRS:
        if number < len(sprs):
            regs[name] = sprs[number]
    for required in ("xer", "lr", "ctr"):
        if required not in regs:
            raise StreamFormatError(
                "SPR array too short",
                section=f.section,
                field="env.spr",
                expected=">= 10 entries",
                found=len(sprs),
            )
    fpu = f.sub("cpu/fpu")
    if fpu is not None and fpu.has("env.fpscr"):
        regs["fpscr"] = fpu.uint("env.fpscr")
    return regs


# ------------------------------------------------------------ info registers text


def _ppc_cr_fields(cr: int) -> str:
    out = []
    for n in range(8):
        field = (cr >> (28 - 4 * n)) & 0xF
        rel = "L" if field & 8 else "G" if field & 4 else "E" if field & 2 else "-"
        out.append(rel + ("O" if field & 1 else " "))
    return "[ " + " ".join(out) + " ]"


def _format(cpu: CpuState) -> list[str]:
    regs = cpu.registers
    lines = [
        f"NIP {hex_reg(regs, 'nip', 16)}   LR {hex_reg(regs, 'lr', 16)} CTR {hex_reg(regs, 'ctr', 16)} "
        f"XER {hex_reg(regs, 'xer', 16)} CPU#{cpu.index}"
    ]
    msr_line = f"MSR {hex_reg(regs, 'msr', 16)}"
    if "hid0" in regs:
        msr_line += f" HID0 {hex_reg(regs, 'hid0', 16)}"
    lines.append(msr_line)
    for row in range(0, 32, 4):
        lines.append(f"GPR{row:02d} " + " ".join(hex_reg(regs, f"r{n}", 16) for n in range(row, row + 4)))
    cr = int_reg(regs, "cr")
    lines.append(f"CR {hex_reg(regs, 'cr', 8)}  " + (_ppc_cr_fields(cr) if cr is not None else ""))
    if "fpscr" in regs:
        lines.append(f"FPSCR {hex_reg(regs, 'fpscr', 16)}")

    def spr_line(names: Sequence[str]) -> None:
        present = [n for n in names if n in regs]
        if present:
            lines.append(" ".join(f"{n.upper():>5} {hex_reg(regs, n, 16)}" for n in present))

    spr_line(("srr0", "srr1", "pvr", "vrsave"))
    spr_line(("sprg0", "sprg1", "sprg2", "sprg3"))
    spr_line(("sprg4", "sprg5", "sprg6", "sprg7"))
    spr_line(("hsrr0", "hsrr1"))
    spr_line(("cfar",))
    spr_line(("lpcr",))
    spr_line(("ptcr", "dar", "dsisr"))
    return lines


# ----------------------------------------------------------------------- ELF notes

EM_PPC64 = 21
#: ``struct elf_prstatus`` size on ppc64 Linux.
PRSTATUS_SIZE = 504
#: Register order of ``pr_reg`` (Linux ``pt_regs``), padded with zeros to PPC64_NGREG.
# fmt: off
PPC64_PR_REG = tuple(f"gpr{i}" for i in range(32)) + (
    "nip", "msr", "orig_gpr3", "ctr", "link", "xer", "ccr", "softe", "trap", "dar", "dsisr", "result"
)
# fmt: on
PPC64_NGREG = 48
#: Note types of the vector, VSX and SPE register sets (names as in <elf.h>).
NT_PPC_VMX = 0x100
NT_PPC_SPE = 0x101
NT_PPC_VSX = 0x102
#: ``NT_PPC_VMX``: 32 vector registers, VSCR (in the last word of its slot), VRSAVE (padded).
VMX_SIZE = 34 * 16
VMX_VSCR_OFFSET = 32 * 16 + 12
VMX_VRSAVE_OFFSET = 33 * 16
#: LPCR interrupt-little-endian bit, MSR little-endian bit.
PPC_LPCR_ILE = 1 << 25
PPC_MSR_LE = 1


def _elf_notes(byteorder: str, cpus: Sequence[CpuState]) -> list[ElfNote]:
    e = struct_order(byteorder)
    aliases = {"link": ("lr", "link"), "ccr": ("cr", "ccr")}
    out: list[ElfNote] = []
    for cpu in cpus:
        regs = []
        for name in PPC64_PR_REG:
            if name.startswith("gpr"):
                regs.append(reg(cpu, "r" + name[3:], name))
            else:
                regs.append(reg(cpu, *aliases.get(name, (name,))))
        regs += [0] * (PPC64_NGREG - len(regs))
        # pr_pid: the vCPU's device-tree id, which is its index on pseries (one thread a core).
        desc = prstatus(e, PRSTATUS_SIZE, cpu.index, f"{PPC64_NGREG}Q", regs)
        out.append(ElfNote(NOTE_NAME_CORE, NT_PRSTATUS, desc))
        fp = [reg(cpu, f"f{i}", f"fpr{i}") for i in range(32)] + [reg(cpu, "fpscr")]
        out.append(ElfNote(NOTE_NAME_CORE, NT_PRFPREG, struct.pack(e + "33Q", *fp)))
        out.append(ElfNote(NOTE_NAME_CORE, NT_PPC_VMX, _vmx(e, byteorder, cpu)))
        vsx = [reg(cpu, f"vsr{i}_low", f"vs{i}_low") for i in range(32)]
        out.append(ElfNote(NOTE_NAME_CORE, NT_PPC_VSX, struct.pack(e + "32Q", *vsx)))
        spe = [reg(cpu, f"evr{i}", f"gprh{i}", mask=MASK32) for i in range(32)]
        spe_desc = struct.pack(e + "32IQI", *spe, reg(cpu, "spe_acc"), reg(cpu, "spe_fscr", mask=MASK32))
        out.append(ElfNote(NOTE_NAME_CORE, NT_PPC_SPE, spe_desc))
    return out


def _note_state(f: CpuFields, extra: dict[str, int]) -> None:
    """What the notes need beyond the registers: FPRs and FPSCR, VSCR (the VMX and VSX
    register halves are not read yet: their wire layout follows the host of the source)."""
    fpu = f.sub("cpu/fpu")
    if fpu is not None:
        if fpu.has("env.vsr"):
            for i, raw in enumerate(fpu.raw("env.vsr")[:32]):
                if isinstance(raw, bytes) and len(raw) == 8:
                    extra.setdefault(f"f{i}", int.from_bytes(raw, "big"))
        if fpu.has("env.fpscr"):
            extra.setdefault("fpscr", fpu.uint("env.fpscr"))
    altivec = f.sub("cpu/altivec")
    if altivec is not None and altivec.has("vscr"):
        raw = altivec.raw("vscr")
        if isinstance(raw, bytes) and len(raw) == 4:
            extra.setdefault("vscr", int.from_bytes(raw, "big"))
        elif isinstance(raw, int):
            extra.setdefault("vscr", raw & MASK32)


def _vmx(e: str, byteorder: str, cpu: CpuState) -> bytes:
    """``NT_PPC_VMX``: the 32 vector registers, VSCR in the last word of a 16-byte slot, VRSAVE."""
    buf = bytearray(VMX_SIZE)
    for i in range(32):
        v = reg_value(cpu, f"v{i}", f"vr{i}", f"avr{i}")
        value = int(v) & ((1 << 128) - 1) if isinstance(v, int) else 0
        buf[16 * i : 16 * i + 16] = value.to_bytes(16, "little" if byteorder == "little" else "big")
    struct.pack_into(e + "I", buf, VMX_VSCR_OFFSET, reg(cpu, "vscr", mask=MASK32))
    struct.pack_into(e + "I", buf, VMX_VRSAVE_OFFSET, reg(cpu, "vrsave", mask=MASK32))
    return bytes(buf)


def _elf_byteorder(cpus: Sequence[CpuState]) -> str:
    """Little endian when the first vCPU takes interrupts little endian, else big.

    LPCR ILE decides when the vCPU state has ``lpcr``, else MSR LE; big endian
    otherwise (firmware such as SLOF runs big endian).
    """
    if not cpus:
        return "big"
    first = min(cpus, key=lambda c: c.index)
    lpcr = reg_value(first, "lpcr")
    if isinstance(lpcr, int):
        return "little" if lpcr & PPC_LPCR_ILE else "big"
    msr = reg_value(first, "msr")
    if isinstance(msr, int):
        return "little" if msr & PPC_MSR_LE else "big"
    return "big"


# ------------------------------------------------------------------- memory layout


def _place_ram(
    family: str, version: MachineVersion, block: str, size: int, notes: list[str]
) -> list[Placement]:
    return [Placement(block, 0, 0, size, "ram", "machine rule")]


#: sPAPR host bridges: the first BUID, where the windows start, the 32-bit window (bus
#: addresses from 2 GiB, 2 GiB long, one per bridge above the base) and the 64-bit one
#: (bus address = guest-physical address).
SPAPR_BASE_BUID = 0x800000020000000
SPAPR_PCI_BASE = 1 << 45
SPAPR_PCI_MEM_WIN_BUS_OFFSET = 0x8000_0000
SPAPR_PCI_MEM32_WIN_SIZE = 0x8000_0000
_SPAPR_PHB = re.compile(r"^pci@([0-9a-f]+):", re.IGNORECASE)


def _spapr_bus_to_gpa(address: str, bus: int, size: int) -> int | None:
    m = _SPAPR_PHB.match(address)
    if m is None:
        return None
    index = int(m.group(1), 16) - SPAPR_BASE_BUID
    if index < 0:
        return None
    start = SPAPR_PCI_MEM_WIN_BUS_OFFSET
    if start <= bus and bus + size <= start + SPAPR_PCI_MEM32_WIN_SIZE:
        return SPAPR_PCI_BASE + (index + 1) * SPAPR_PCI_MEM32_WIN_SIZE + bus - start
    if bus >= FOUR_GIB:
        return bus
    return None


def _refine(ctx: LayoutContext, placed: list[Placement]) -> list[Placement]:
    """Device memory behind the BARs of PCI devices, through the sPAPR host bridge windows."""
    out = list(placed)
    for p in bar_placements(ctx.devices, ctx.sizes, ctx.overridden, ctx.notes, _spapr_bus_to_gpa):
        add_if_free(out, p, ctx.notes)
    return out


# -------------------------------------------------------------------- description

ARCH = Arch(
    name=NAME,
    elf_machine=EM_PPC64,
    byteorder="big",
    decode=_decode,
    format=_format,
    elf_notes=_elf_notes,
    note_state=_note_state,
    elf_byteorder_of=_elf_byteorder,
    families=(
        MachineFamily(
            "pseries",
            (re.compile(r"^pseries(?:-(\d+)\.(\d+))?"),),
            "ppc_spapr.ram",
            _place_ram,
            refine=_refine,
        ),
    ),
    detect=DetectionHints(
        machine=re.compile(r"^pseries|^powernv"),
        sections=("spapr", "spapr/htab"),
        cpu_fields=("env.gpr", "env.nip"),
    ),
)
