"""s390x: registers, ``info registers`` text, ELF notes, ``s390-ccw-virtio`` memory layout.

QEMU: target/s390x/machine.c (vmstate_s390_cpu), target/s390x/cpu-dump.c (s390_cpu_dump_state),
target/s390x/arch_dump.c (s390_cpu_write_elf64_note), hw/s390x/s390-virtio-ccw.c.

Registers decoded (all unsigned): ``r0..r15``, ``psw_mask``, ``psw_addr``,
``cr0..cr15``, ``fpc``, ``f0..f15`` and, with the vector facility, ``v0..v31``
(128 bits; hex strings in JSON).  The monitor ends each vCPU with an empty
line.  Under TCG the condition code lives outside the PSW while the guest runs
and is not saved; the CC field of ``psw_mask`` is the one of the last PSW load,
which the monitor (merging the live condition code) may show differently.

ELF notes per vCPU, in QEMU's order: ``NT_PRSTATUS`` (``pr_pid`` in the host's
byte order, little endian, as QEMU leaves it), ``NT_PRFPREG``, then ("LINUX")
``NT_S390_PREFIX``, ``NT_S390_CTRS``, ``NT_S390_TIMER``, ``NT_S390_TODCMP``,
``NT_S390_TODPREG``, ``NT_S390_VXRS_LOW``, ``NT_S390_VXRS_HIGH``,
``NT_S390_GS_CB``.  Registers the vCPU state does not hold are written as 0.

Memory layout of ``s390-ccw-virtio``: RAM at 0.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence

from migstream.arch.cpu_fields import CpuFields
from migstream.arch.cpu_text import hex_reg, int_reg, rows
from migstream.arch.elf_notes import (
    MASK32,
    MASK64,
    NOTE_NAME_CORE,
    NOTE_NAME_LINUX,
    NT_PRFPREG,
    NT_PRSTATUS,
    PRSTATUS_PID_OFFSET,
    ElfNote,
    prstatus,
    reg,
    reg_value,
    struct_order,
)
from migstream.arch.model import Arch, CpuState, DetectionHints, MachineFamily, MachineVersion, RegisterValue
from migstream.ram.layout import Placement

NAME = "s390x"

_VREG_FIELD = re.compile(r"env\.vregs\[(\d+)\]\[([01])\]")

# ----------------------------------------------------------------------- registers


def _decode(f: CpuFields, extra: dict[str, int]) -> dict[str, RegisterValue]:
    regs: dict[str, RegisterValue] = {}
    for n, value in enumerate(f.uints("env.regs", 64, count=16)):
        regs[f"r{n}"] = value
    regs["psw_mask"] = f.uint("env.psw.mask")
    regs["psw_addr"] = f.uint("env.psw.addr")
    if f.has("env.cregs"):
        for n, value in enumerate(f.uints("env.cregs", 64, count=16)):
            regs[f"cr{n}"] = value
    _decode_vector(f, regs, extra)
    return regs


#: Hex digits of the registers that JSON gives as hex strings.
_HEX_DIGITS = {f"v{n}": 32 for n in range(32)}


def _decode_vector(f: CpuFields, regs: dict[str, RegisterValue], extra: dict[str, int]) -> None:
    """``fpc``, ``f0..f15`` (the left doublewords of the first 16 vector registers) and,
    when the stream carries the vector subsection, ``v0..v31`` (128 bits, doubleword 0 first)."""
    fpu = f.sub("cpu/fpu")
    if fpu is None:
        return
    halves: dict[tuple[int, int], int] = {}
    for sub in (fpu, f.sub("cpu/vregs")):
        if sub is None:
            continue
        for name in sub.mapping:
            m = _VREG_FIELD.fullmatch(name)
            if m:
                halves[(int(m.group(1)), int(m.group(2)))] = sub.uint(name)
    if fpu.has("env.fpc"):
        regs["fpc"] = fpu.uint("env.fpc", 32)
    for n in range(16):
        if (n, 0) in halves:
            regs[f"f{n}"] = halves[(n, 0)]
    if f.sub("cpu/vregs") is not None and all((n, h) in halves for n in range(32) for h in (0, 1)):
        extra["vector"] = 1
        for n in range(32):
            regs[f"v{n}"] = (halves[(n, 0)] << 64) | halves[(n, 1)]


# ------------------------------------------------------------ info registers text


def _format(cpu: CpuState) -> list[str]:
    regs = cpu.registers
    mask = int_reg(regs, "psw_mask")
    # The condition code as saved in the PSW mask (see the module docstring).
    cc = f" cc {(mask >> 44) & 3:02x}" if mask is not None else ""
    lines = [f"PSW=mask {hex_reg(regs, 'psw_mask', 16)} addr {hex_reg(regs, 'psw_addr', 16)}{cc}"]
    lines += rows([f"R{n:02d}={hex_reg(regs, f'r{n}', 16)}" for n in range(16)], 4)
    if cpu.extra.get("vector"):
        lines += rows([f"V{n:02d}={hex_reg(regs, f'v{n}', 32)}" for n in range(32)], 2)
    elif "f0" in regs:
        lines += rows([f"F{n:02d}={hex_reg(regs, f'f{n}', 16)}" for n in range(16)], 4)
    if any(f"cr{n}" in regs for n in range(16)):
        lines += rows([f"C{n:02d}={hex_reg(regs, f'cr{n}', 16)}" for n in range(16)], 4)
    # The monitor ends each vCPU with an empty line.
    lines.append("")
    return lines


# ----------------------------------------------------------------------- ELF notes

EM_S390 = 22
#: ``struct elf_prstatus`` size on s390x Linux.
PRSTATUS_SIZE = 336
NT_S390_TIMER = 0x301
NT_S390_TODCMP = 0x302
NT_S390_TODPREG = 0x303
NT_S390_CTRS = 0x304
NT_S390_PREFIX = 0x305
NT_S390_VXRS_LOW = 0x309
NT_S390_VXRS_HIGH = 0x30A
NT_S390_GS_CB = 0x30B


def _note_state(f: CpuFields, extra: dict[str, int]) -> None:
    """What the notes need beyond the registers: FPRs (the left halves of V0-V15), the
    vector registers ``v0..v31`` (128 bits), FPC, access registers, prefix, timers, GS block."""
    fpu, vregs = f.sub("cpu/fpu"), f.sub("cpu/vregs")
    left: dict[int, int] = {}
    right: dict[int, int] = {}
    for sub in (fpu, vregs):
        if sub is None:
            continue
        for i in range(32):
            for half, into in ((0, left), (1, right)):
                name = f"env.vregs[{i}][{half}]"
                if sub.has(name):
                    into[i] = sub.uint(name)
    for i, value in left.items():
        if i < 16:
            extra.setdefault(f"f{i}", value)
    for i in set(left) | set(right):
        extra.setdefault(f"v{i}", left.get(i, 0) << 64 | right.get(i, 0))
    if fpu is not None and fpu.has("env.fpc"):
        extra.setdefault("fpc", fpu.uint("env.fpc", 32))
    if f.has("env.aregs"):
        for i, value in enumerate(f.uints("env.aregs", 32)[:16]):
            extra.setdefault(f"a{i}", value)
    for key, name, bits in (("prefix", "env.psa", 64), ("cputm", "env.cputm", 64),
                            ("ckc", "env.ckc", 64), ("todpr", "env.todpr", 32)):  # fmt: skip
        if f.has(name):
            extra.setdefault(key, f.uint(name, bits))
    gs = f.sub("cpu/gscb")
    if gs is not None and gs.has("env.gscb"):
        for i, value in enumerate(gs.uints("env.gscb")[:4]):
            extra.setdefault(f"gscb{i}", value)


def _elf_notes(byteorder: str, cpus: Sequence[CpuState]) -> list[ElfNote]:
    e = struct_order(byteorder)
    out: list[ElfNote] = []
    for cpu in cpus:
        regs = [reg(cpu, "psw_mask"), reg(cpu, "psw_addr")]
        regs += [reg(cpu, f"r{i}", f"gpr{i}") for i in range(16)]
        regs += [reg(cpu, f"a{i}", f"acr{i}", mask=MASK32) for i in range(16)]
        regs.append(reg(cpu, "orig_gpr2"))
        desc = bytearray(prstatus(e, PRSTATUS_SIZE, 0, "18Q16IQ", regs))
        # QEMU stores pr_pid in the byte order of the host it runs on (x86: little endian).
        struct.pack_into("<I", desc, PRSTATUS_PID_OFFSET, (cpu.index + 1) & MASK32)
        out.append(ElfNote(NOTE_NAME_CORE, NT_PRSTATUS, bytes(desc)))
        fp = struct.pack(e + "II", reg(cpu, "fpc", mask=MASK32), 0)
        fp += struct.pack(e + "16Q", *(reg(cpu, f"f{i}", f"fpr{i}") for i in range(16)))
        out.append(ElfNote(NOTE_NAME_CORE, NT_PRFPREG, fp))
        prefix = struct.pack(e + "I", reg(cpu, "prefix", "psa", mask=MASK32))
        out.append(ElfNote(NOTE_NAME_LINUX, NT_S390_PREFIX, prefix))
        ctrs = struct.pack(e + "16Q", *(reg(cpu, f"cr{i}") for i in range(16)))
        out.append(ElfNote(NOTE_NAME_LINUX, NT_S390_CTRS, ctrs))
        out.append(ElfNote(NOTE_NAME_LINUX, NT_S390_TIMER, struct.pack(e + "Q", reg(cpu, "cputm"))))
        out.append(ElfNote(NOTE_NAME_LINUX, NT_S390_TODCMP, struct.pack(e + "Q", reg(cpu, "ckc"))))
        todpr = struct.pack(e + "I", reg(cpu, "todpr", mask=MASK32))
        out.append(ElfNote(NOTE_NAME_LINUX, NT_S390_TODPREG, todpr))
        # Vector registers: the right halves of V0-V15 (the left ones are the FPRs), V16-V31 whole.
        low = [reg(cpu, f"v{i}", mask=MASK64) for i in range(16)]
        out.append(ElfNote(NOTE_NAME_LINUX, NT_S390_VXRS_LOW, struct.pack(e + "16Q", *low)))
        high = b"".join(_v128(cpu, i, byteorder) for i in range(16, 32))
        out.append(ElfNote(NOTE_NAME_LINUX, NT_S390_VXRS_HIGH, high))
        gscb = struct.pack(e + "4Q", *(reg(cpu, f"gscb{i}") for i in range(4)))
        out.append(ElfNote(NOTE_NAME_LINUX, NT_S390_GS_CB, gscb))
    return out


def _v128(cpu: CpuState, i: int, byteorder: str) -> bytes:
    v = reg_value(cpu, f"v{i}")
    value = int(v) & ((1 << 128) - 1) if isinstance(v, int) else 0
    return value.to_bytes(16, "little" if byteorder == "little" else "big")


# ------------------------------------------------------------------- memory layout


def _place_ram(
    family: str, version: MachineVersion, block: str, size: int, notes: list[str]
) -> list[Placement]:
    return [Placement(block, 0, 0, size)]


# -------------------------------------------------------------------- description

ARCH = Arch(
    name=NAME,
    elf_machine=EM_S390,
    byteorder="big",
    decode=_decode,
    format=_format,
    hex_digits=_HEX_DIGITS,
    elf_notes=_elf_notes,
    note_state=_note_state,
    families=(
        MachineFamily(
            "s390-ccw-virtio", (re.compile(r"^s390-ccw-virtio(?:-(\d+)\.(\d+))?"),), "s390.ram", _place_ram
        ),
    ),
    detect=DetectionHints(
        machine=re.compile(r"^s390"),
        sections=("s390-skeys",),
        cpu_fields=("env.psw.mask", "env.psw.addr"),
    ),
)
