"""ppc64: registers, ``info registers`` text, ELF notes, ``pseries`` memory layout.

QEMU: target/ppc/machine.c (vmstate_ppc_cpu), target/ppc/cpu_init.c (ppc_cpu_dump_state),
target/ppc/arch_dump.c (ppc64_cpu_write_elf64_note, cpu_get_dump_info), hw/ppc/spapr.c (spapr_phb_placement).

Registers decoded (all unsigned): ``r0..r31``, ``nip``, ``msr``, ``cr`` (the
eight 4-bit fields, field 0 most significant), and from the SPR array: ``xer``
(saved there whole, with its SO/OV/CA bits), ``lr``, ``ctr``, ``srr0``,
``srr1``, ``sprg0..7`` and a few others that the monitor shows; ``fpr0..fpr31``
and ``fpscr``; ``reserve_addr`` where the stream has it (QEMU before 8.2).  The
monitor's ``HF`` word and MMU indexes are rebuilt from MSR, LPCR and MMCR0; the
time base, decrementer and (8.2 and later) the reservation are not in the
stream and print as dashes.

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
from collections.abc import Mapping, Sequence

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
from migstream.arch.model import (
    Arch,
    CpuState,
    DetectionHints,
    LayoutContext,
    MachineFamily,
    MachineVersion,
    RegisterValue,
)
from migstream.arch.pci import add_bar_placements
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
    ("mmcra", 786),
    ("mmcr0", 795),
)

# MSR bits (bit numbers counted from the least significant bit).
_MSR_SF = 63
_MSR_HV = 60
_MSR_TM = 32
_MSR_VR = 25
_MSR_VSX = 23
_MSR_PR = 14
_MSR_FP = 13
_MSR_SE = 10
_MSR_BE = 9
_MSR_IR = 5
_MSR_DR = 4
_MSR_LE = 0
# QEMU's hidden-flag bits that do not come straight from the MSR.
_HFLAGS_64 = 2
_HFLAGS_GTSE = 3
_HFLAGS_HR = 5
_HFLAGS_TM = 8
_HFLAGS_PMCC0 = 15
_HFLAGS_PMCC1 = 16
_HFLAGS_PMCJCE = 17
_HFLAGS_IMMU_IDX = 26
_HFLAGS_DMMU_IDX = 29
#: MSR bits copied as they are on a server CPU (big-endian switch, single step,
#: branch trace, vector, VSX, problem state, data relocation, FP).
_HFLAGS_FROM_MSR = sum(
    1 << b for b in (_MSR_LE, _MSR_PR, _MSR_DR, _MSR_FP, _MSR_BE, _MSR_SE, _MSR_VR, _MSR_VSX)
)
_LPCR_GTSE = 1 << 10
_LPCR_HR = 1 << 11
_MMCR0_PMCC0 = 1 << 19
_MMCR0_PMCC1 = 1 << 18
_MMCR0_PMCJCE = 1 << 14


def hidden_flags(msr: int, lpcr: int, mmcr0: int) -> int:
    """QEMU's hidden-flags word of a 64-bit server vCPU (with a hypervisor mode) from its MSR and SPRs.

    QEMU: target/ppc/helper_regs.c (hreg_compute_hflags_value).
    """
    hflags = msr & _HFLAGS_FROM_MSR
    hflags |= ((msr >> _MSR_SF) & 1) << _HFLAGS_64
    hflags |= ((msr >> _MSR_TM) & 1) << _HFLAGS_TM
    hflags |= (1 << _HFLAGS_GTSE) if lpcr & _LPCR_GTSE else 0
    hflags |= (1 << _HFLAGS_HR) if lpcr & _LPCR_HR else 0
    hflags |= ((msr >> _MSR_HV) & 1) << 1
    dmmu = (0 if msr & (1 << _MSR_PR) else 1) | (4 if msr & (1 << _MSR_HV) else 0)
    immu = dmmu | (0 if msr & (1 << _MSR_IR) else 2)
    dmmu |= 0 if msr & (1 << _MSR_DR) else 2
    hflags |= (immu << _HFLAGS_IMMU_IDX) | (dmmu << _HFLAGS_DMMU_IDX)
    for bit, flag in (
        (_MMCR0_PMCC0, _HFLAGS_PMCC0),
        (_MMCR0_PMCC1, _HFLAGS_PMCC1),
        (_MMCR0_PMCJCE, _HFLAGS_PMCJCE),
    ):
        if mmcr0 & bit:
            hflags |= 1 << flag
    return hflags


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
    if fpu is not None and fpu.has("env.vsr"):
        for n, value in enumerate(fpu.uints("env.vsr", 64, count=32)):
            regs[f"fpr{n}"] = value
    if f.has("env.reserve_addr"):
        regs["reserve_addr"] = f.uint("env.reserve_addr")
    else:
        # QEMU 8.2 and later no longer save the reservation; the monitor then
        # prints its length too.
        extra["reserve_length_shown"] = 1
    return regs


# ------------------------------------------------------------ info registers text


def _ppc_cr_fields(cr: int) -> str:
    out = []
    for n in range(8):
        field = (cr >> (28 - 4 * n)) & 0xF
        rel = "L" if field & 8 else "G" if field & 4 else "E" if field & 2 else "-"
        out.append(rel + ("O" if field & 1 else " "))
    return "[ " + " ".join(out) + " ]"


def _hflags_text(regs: Mapping[str, RegisterValue]) -> str:
    """``HF`` with the MMU indexes, rebuilt from the MSR and SPRs (QEMU recomputes them on load)."""
    msr = int_reg(regs, "msr")
    if msr is None:
        return "HF -------- iidx - didx -"
    hf = hidden_flags(msr, int_reg(regs, "lpcr") or 0, int_reg(regs, "mmcr0") or 0)
    return f"HF {hf:08x} iidx {(hf >> _HFLAGS_IMMU_IDX) & 7} didx {(hf >> _HFLAGS_DMMU_IDX) & 7}"


def _format(cpu: CpuState) -> list[str]:
    regs = cpu.registers
    h = {name: hex_reg(regs, name, 16) for name in (*(n for n, _ in _PPC_SPRS), "nip", "msr", "fpscr")}
    lines = [
        f"NIP {h['nip']}   LR {h['lr']} CTR {h['ctr']} XER {h['xer']} CPU#{cpu.index}",
        f"MSR {h['msr']} HID0 {h['hid0']}  {_hflags_text(regs)}",
        # The time base and decrementer run with the host clock; the cpu section has neither.
        "TB -------- -------- DECR --------",
    ]
    for row in range(0, 32, 4):
        lines.append(f"GPR{row:02d} " + " ".join(hex_reg(regs, f"r{n}", 16) for n in range(row, row + 4)))
    cr = int_reg(regs, "cr")
    line = f"CR {hex_reg(regs, 'cr', 8)}  " + (_ppc_cr_fields(cr) if cr is not None else "")
    if cpu.extra.get("reserve_length_shown"):
        line += "     RES ---@----------------"
    else:
        line += f"             RES {hex_reg(regs, 'reserve_addr', 16)}"
    lines.append(line)
    if "fpr0" in regs:
        for row in range(0, 32, 4):
            values = " ".join(hex_reg(regs, f"fpr{n}", 16) for n in range(row, row + 4))
            lines.append(f"FPR{row:02d} {values}")
    if "fpscr" in regs:
        lines.append(f"FPSCR {h['fpscr']}")
    lines.append(f" SRR0 {h['srr0']}  SRR1 {h['srr1']}    PVR {h['pvr']} VRSAVE {h['vrsave']}")
    lines.append(f"SPRG0 {h['sprg0']} SPRG1 {h['sprg1']}  SPRG2 {h['sprg2']}  SPRG3 {h['sprg3']}")
    lines.append(f"SPRG4 {h['sprg4']} SPRG5 {h['sprg5']}  SPRG6 {h['sprg6']}  SPRG7 {h['sprg7']}")
    lines.append(f"HSRR0 {h['hsrr0']} HSRR1 {h['hsrr1']}")
    lines.append(f" CFAR {h['cfar']}")
    lines.append(f" LPCR {h['lpcr']}")
    lines.append(f" PTCR {h['ptcr']}   DAR {h['dar']}  DSISR {h['dsisr']}")
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
    add_bar_placements(ctx, out, _spapr_bus_to_gpa)
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
