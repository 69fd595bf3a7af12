"""What the architecture modules share to build the ELF notes of a core file.

A note is ``(name, type, desc)``; the ELF writer lays out the note headers.
Every architecture writes one ``NT_PRSTATUS`` ("CORE") note per vCPU, a Linux
``struct elf_prstatus`` with ``pr_pid`` = vCPU index + 1 and ``pr_reg`` in the
order of the architecture's ``elf_gregset_t``; the other notes are its own.
A register missing from the vCPU state is written as 0.

QEMU: dump/dump.c (write_elf64_notes), target/*/arch_dump.c.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from migstream.arch.model import CpuState

# Note types, names as in <elf.h>.
NT_PRSTATUS = 1
NT_PRFPREG = 2

NOTE_NAME_CORE = b"CORE"
NOTE_NAME_LINUX = b"LINUX"
NOTE_NAME_QEMU = b"QEMU"

#: ``struct elf_prstatus`` on LP64 Linux: offsets of pr_pid and pr_reg (the size is per arch).
PRSTATUS_PID_OFFSET = 32
PRSTATUS_REG_OFFSET = 112

MASK64 = (1 << 64) - 1
MASK32 = (1 << 32) - 1


class ElfNote(NamedTuple):
    """One ELF note: ``name`` without its NUL, ``type``, ``desc`` in the file's byte order."""

    name: bytes
    type: int
    desc: bytes


def struct_order(byteorder: str) -> str:
    """The :mod:`struct` prefix of a byte order ("little" or "big")."""
    return "<" if byteorder == "little" else ">"


def reg_value(cpu: CpuState, *names: str) -> int | Mapping[str, int] | None:
    """The first of ``names`` in the registers (or the extra state) of ``cpu``, else None."""
    for name in names:
        v = cpu.registers.get(name)
        if v is None:
            v = cpu.extra.get(name)
        if v is not None:
            return v
    return None


def reg(cpu: CpuState, *names: str, mask: int = MASK64) -> int:
    """First of ``names`` present as an integer register (or extra), else 0."""
    v = reg_value(cpu, *names)
    if isinstance(v, Mapping):
        v = v.get("selector", 0)
    return (int(v) & mask) if v is not None else 0


def segment(cpu: CpuState, name: str) -> Mapping[str, int]:
    """A segment register as a record (selector only when the state holds an integer)."""
    v = cpu.registers.get(name)
    if isinstance(v, Mapping):
        return v
    if isinstance(v, int):
        return {"selector": v}
    return {}


def prstatus(e: str, size: int, pid: int, reg_format: str, regs: Sequence[int]) -> bytes:
    """A ``struct elf_prstatus`` of ``size`` bytes: ``pr_pid`` and ``pr_reg``, zeros elsewhere."""
    buf = bytearray(size)
    struct.pack_into(e + "I", buf, PRSTATUS_PID_OFFSET, pid & MASK32)
    struct.pack_into(e + reg_format, buf, PRSTATUS_REG_OFFSET, *regs)
    return bytes(buf)
