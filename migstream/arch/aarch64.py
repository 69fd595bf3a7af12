"""aarch64: registers, ``info registers`` text, ELF notes, ``virt`` memory layout.

QEMU: target/arm/machine.c (vmstate_arm_cpu), target/arm/cpu.c (arm_cpu_dump_state),
target/arm/arch_dump.c (arm_cpu_write_elf64_note), hw/arm/virt.c (base_memmap).

Registers decoded (all unsigned): ``x0..x30``, ``sp`` (the stack pointer in
use, kept in the 32nd xreg slot), ``pc``, ``pstate`` (the ``cpsr`` field, a
big-endian word), and ``fpcr``/``fpsr``/``v0..v31`` when the VFP state is
present; with SVE ``z0..z31``, ``p0..p15``, ``ffr`` at the vector length in use;
from the saved system-register list the ones the monitor's text depends on
(CPACR_EL1 for "FPU disabled", ID_AA64PFR1_EL1 for SVCR and BTYPE, ZCR_EL1 for
the vector length...).  A vCPU saved in AArch32 state gives ``r0..r15``, ``pc``
and ``cpsr`` instead.

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
_CPACR_SMEN_SHIFT = 24
_MASK64 = (1 << 64) - 1
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
    "smcr_el1": _sysreg_index(3, 0, 1, 2, 6),
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
    sve = f.sub("cpu/sve")
    if sve is not None:
        extra["sve"] = 1
        _decode_sve(sve, regs, extra)


def _decode_sve(sve: CpuFields, regs: dict[str, RegisterValue], extra: dict[str, int]) -> None:
    """``z0..z31``, ``p0..p15`` and ``ffr`` at the vector length in use (from ZCR_EL1, or SMCR_EL1 in
    streaming mode).  The SVE subsection holds the Z registers above their low 128 bits (those are
    the V registers of the VFP subsection), sized for the largest length."""
    high = [z.uints("d") for z in sve.structs("env.vfp.zregs", 32)]
    zregs = []
    for n, d in enumerate(high):
        v = regs.get(f"v{n}", 0)
        low = v if isinstance(v, int) else 0
        zregs.append([low & ((1 << 64) - 1), low >> 64, *d])
    pregs = [p.uints("p") for p in sve.structs("env.vfp.pregs", 17)]
    max_vqm1 = min(len(zregs[0]) // 2, len(pregs[0]) * 4) - 1
    if max_vqm1 < 0:
        return
    svcr = regs.get("svcr", 0)
    control = regs.get("smcr_el1" if isinstance(svcr, int) and svcr & _SVCR_SM else "zcr_el1", 0)
    vqm1 = min((control if isinstance(control, int) else 0) & 0xF, max_vqm1)
    extra["sve_vqm1"] = vqm1
    for n, d in enumerate(zregs):
        regs[f"z{n}"] = sum(d[k] << (64 * k) for k in range(2 * (vqm1 + 1)))
    for n, p in enumerate(pregs):
        value = sum(p[k] << (64 * k) for k in range(len(p)))
        regs["ffr" if n == 16 else f"p{n}"] = value & ((1 << (16 * (vqm1 + 1))) - 1)


def _vector_digits(regs: Mapping[str, RegisterValue], extra: Mapping[str, int]) -> dict[str, int]:
    """Hex digits of the scalable registers in JSON: as wide as the vector length in use."""
    if "sve_vqm1" not in extra:
        return {}
    vq = extra["sve_vqm1"] + 1
    out = {f"z{n}": 32 * vq for n in range(32)}
    out.update({name: 4 * vq for name in (*(f"p{n}" for n in range(16)), "ffr")})
    return out


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
    if svcr & _SVCR_SM:
        scalable = not _fp_trapped(regs, el, _CPACR_SMEN_SHIFT)
    else:
        scalable = bool(cpu.extra.get("sve")) and not _fp_trapped(regs, el, _CPACR_ZEN_SHIFT)
    if scalable and "sve_vqm1" in cpu.extra:
        lines += _sve_lines(regs, cpu.extra["sve_vqm1"])
    else:
        lines += rows([f"Q{n:02d}={_qreg(regs, n)}" for n in range(32)], 2)
    return lines


def _sve_lines(regs: Mapping[str, RegisterValue], vqm1: int) -> list[str]:
    """Predicates (then FFR) and Z registers in the monitor's layout for vector length ``vqm1 + 1``."""
    out: list[str] = []
    for n in range(17):
        if n == 16:
            out.append("FFR=")
            eol = True
        else:
            out.append(f"P{n:02d}=")
            per_line = {0: 8, 1: 6, 2: 3, 3: 3}.get(vqm1)
            eol = per_line is None or n % per_line == per_line - 1
        value = int_reg(regs, "ffr" if n == 16 else f"p{n}") or 0
        for j in range(vqm1 // 4, -1, -1):
            digits = 16 if j * 4 + 4 <= vqm1 + 1 else (vqm1 % 4 + 1) * 4
            out.append(f"{(value >> (64 * j)) & _MASK64:0{digits}x}")
            out.append(":" if j else ("\n" if eol else " "))
    for n in range(32):
        z = int_reg(regs, f"z{n}") or 0
        d = [(z >> (64 * k)) & _MASK64 for k in range(2 * (vqm1 + 1))]
        if vqm1 == 0:
            out.append(f"Z{n:02d}={d[1]:016x}:{d[0]:016x}" + ("\n" if n & 1 else " "))
        elif vqm1 == 1:
            out.append(f"Z{n:02d}={d[3]:016x}:{d[2]:016x}:{d[1]:016x}:{d[0]:016x}\n")
        else:
            for j in range(vqm1, -1, -1):
                odd = (vqm1 - j) % 2 != 0
                if j == vqm1:
                    out.append(f"Z{n:02d}[{j:x}-{j - 1:x}]=")
                elif not odd:
                    out.append(f"   [{j:x}-{j - 1:x}]=" if j > 0 else f"     [{j:x}]=")
                out.append(f"{d[2 * j + 1]:016x}:{d[2 * j]:016x}" + ("\n" if odd or j == 0 else ":"))
    return "".join(out).rstrip("\n").split("\n")


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
    add_bar_placements(ctx, out)
    return out


# -------------------------------------------------------------------- description

ARCH = Arch(
    name=NAME,
    elf_machine=EM_AARCH64,
    byteorder="little",
    decode=_decode,
    format=_format,
    hex_digits=_HEX_DIGITS,
    vector_digits=_vector_digits,
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
