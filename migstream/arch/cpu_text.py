"""What the architecture modules share to print vCPU registers like ``info registers``.

Each vCPU is an empty line, a ``CPU#<index>`` line, then the registers in the
layout the monitor uses for that architecture (each architecture module has its
own), so that the output equals ``info registers -a`` of the source VM line for
line.  A value the stream does not carry (or the decoded state lacks) prints as
dashes in its place.

QEMU: monitor/hmp-cmds-target.c (hmp_info_registers), target/*/cpu-dump.c.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from migstream.arch.model import CpuState, RegisterValue


def int_reg(regs: Mapping[str, RegisterValue], name: str) -> int | None:
    """An integer register, or None when it is missing or a record."""
    value = regs.get(name)
    return value if isinstance(value, int) else None


def hex_reg(regs: Mapping[str, RegisterValue], name: str, digits: int) -> str:
    """A register as ``digits`` hex digits (truncated to them), or dashes when missing."""
    value = int_reg(regs, name)
    if value is None:
        return "-" * digits
    return f"{value & ((1 << (4 * digits)) - 1):0{digits}x}"


def rows(items: Sequence[str], per_row: int, sep: str = " ") -> list[str]:
    """``items`` joined ``per_row`` to a line."""
    return [sep.join(items[i : i + per_row]) for i in range(0, len(items), per_row)]


def format_generic(cpu: CpuState) -> list[str]:
    """The registers of an architecture without a monitor layout, one per line."""
    lines: list[str] = [f"arch {cpu.arch}"]
    for name, value in cpu.registers.items():
        if isinstance(value, Mapping):
            parts = " ".join(f"{k}={v:#x}" for k, v in value.items())
            lines.append(f"{name}: {parts}")
        else:
            lines.append(f"{name}={value:#x}")
    return lines
