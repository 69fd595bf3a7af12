"""vCPU registers as text, laid out like the QEMU monitor's ``info registers``.

Each vCPU starts with a ``CPU#<index>`` line, then the registers in the layout
the monitor uses for that architecture, so that the output can be read (and
diffed) against ``info registers -a`` of the source VM.  Registers the stream
does not carry (floating point, vector, timers) are left out; a register the
decoded state lacks prints as dashes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from migstream.arch.model import CpuState, RegisterValue

__all__ = ["format_cpus", "format_cpu"]

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


def format_cpus(cpus: Sequence[CpuState]) -> str:
    """All vCPUs, one ``CPU#n`` block each, separated by a blank line."""
    return "\n".join(format_cpu(cpu) for cpu in cpus)


def format_cpu(cpu: CpuState) -> str:
    """One vCPU as a ``CPU#n`` block ending with a newline."""
    formatter = _FORMATTERS.get(cpu.arch, _format_generic)
    lines = [f"CPU#{cpu.index}", *formatter(cpu)]
    return "\n".join(lines) + "\n"


def _reg(regs: Mapping[str, RegisterValue], name: str) -> int | None:
    value = regs.get(name)
    return value if isinstance(value, int) else None


def _hex(regs: Mapping[str, RegisterValue], name: str, digits: int) -> str:
    value = _reg(regs, name)
    if value is None:
        return "-" * digits
    return f"{value & ((1 << (4 * digits)) - 1):0{digits}x}"


def _rows(items: Sequence[str], per_row: int, sep: str = " ") -> list[str]:
    return [sep.join(items[i : i + per_row]) for i in range(0, len(items), per_row)]


# --------------------------------------------------------------------------- x86


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


def _format_x86(cpu: CpuState) -> list[str]:
    regs = cpu.registers
    hflags = cpu.extra.get("hflags", 0)
    cs64 = bool(hflags & _HF_CS64)
    lma = bool(hflags & _HF_LMA)
    eflags = _reg(regs, "rflags") or 0
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
        lines += _rows([f"{label}={_hex(regs, name, 16)}" for label, name in gprs], 4)
        lines.append(f"RIP={_hex(regs, 'rip', 16)} RFL={eflags & 0xFFFFFFFF:08x} {status}")
    else:
        gprs = [
            ("EAX", "rax"), ("EBX", "rbx"), ("ECX", "rcx"), ("EDX", "rdx"),
            ("ESI", "rsi"), ("EDI", "rdi"), ("EBP", "rbp"), ("ESP", "rsp"),
        ]  # fmt: skip
        lines += _rows([f"{label}={_hex(regs, name, 8)}" for label, name in gprs], 4)
        lines.append(f"EIP={_hex(regs, 'rip', 8)} EFL={eflags & 0xFFFFFFFF:08x} {status}")
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
        f"CR0={_hex(regs, 'cr0', 8)} CR2={_hex(regs, 'cr2', wide_cr)} "
        f"CR3={_hex(regs, 'cr3', wide_cr)} CR4={_hex(regs, 'cr4', 8)}"
    )
    lines.append(" ".join(f"DR{n}={_hex(regs, f'dr{n}', 16)}" for n in range(4)))
    lines.append(f"DR6={_hex(regs, 'dr6', 16)} DR7={_hex(regs, 'dr7', 16)}")
    if "efer" in regs:
        lines.append(f"EFER={_hex(regs, 'efer', 16)}")
    return lines


# ----------------------------------------------------------------------- aarch64


def _format_aarch64(cpu: CpuState) -> list[str]:
    regs = cpu.registers
    lines: list[str] = []
    if cpu.extra.get("aarch32"):
        lines += _rows([f"R{n:02d}={_hex(regs, f'r{n}', 8)}" for n in range(16)], 4)
        psr = _reg(regs, "cpsr") or 0
        lines.append(f"PSR={psr:08x} {_nzcv(psr)} A32")
    else:
        items = [f" PC={_hex(regs, 'pc', 16)}"]
        items += [f"X{n:02d}={_hex(regs, f'x{n}', 16)}" for n in range(31)]
        items.append(f" SP={_hex(regs, 'sp', 16)}")
        lines += _rows(items, 3)
        pstate = _reg(regs, "pstate") or 0
        el = (pstate >> 2) & 3
        lines.append(f"PSTATE={pstate:08x} {_nzcv(pstate)} EL{el}{'h' if pstate & 1 else 't'}")
    if "fpcr" in regs or "fpsr" in regs:
        lines.append(f"FPCR={_hex(regs, 'fpcr', 8)} FPSR={_hex(regs, 'fpsr', 8)}")
    if cpu.extra.get("powered_off"):
        lines.append("(powered off)")
    return lines


def _nzcv(psr: int) -> str:
    return "".join(
        ch if psr & (1 << bit) else "-" for ch, bit in (("N", 31), ("Z", 30), ("C", 29), ("V", 28))
    )


# ------------------------------------------------------------------------- ppc64


def _ppc_cr_fields(cr: int) -> str:
    out = []
    for n in range(8):
        field = (cr >> (28 - 4 * n)) & 0xF
        rel = "L" if field & 8 else "G" if field & 4 else "E" if field & 2 else "-"
        out.append(rel + ("O" if field & 1 else " "))
    return "[ " + " ".join(out) + " ]"


def _format_ppc64(cpu: CpuState) -> list[str]:
    regs = cpu.registers
    lines = [
        f"NIP {_hex(regs, 'nip', 16)}   LR {_hex(regs, 'lr', 16)} CTR {_hex(regs, 'ctr', 16)} "
        f"XER {_hex(regs, 'xer', 16)} CPU#{cpu.index}"
    ]
    msr_line = f"MSR {_hex(regs, 'msr', 16)}"
    if "hid0" in regs:
        msr_line += f" HID0 {_hex(regs, 'hid0', 16)}"
    lines.append(msr_line)
    for row in range(0, 32, 4):
        lines.append(f"GPR{row:02d} " + " ".join(_hex(regs, f"r{n}", 16) for n in range(row, row + 4)))
    cr = _reg(regs, "cr")
    lines.append(f"CR {_hex(regs, 'cr', 8)}  " + (_ppc_cr_fields(cr) if cr is not None else ""))
    if "fpscr" in regs:
        lines.append(f"FPSCR {_hex(regs, 'fpscr', 16)}")

    def spr_line(names: Sequence[str]) -> None:
        present = [n for n in names if n in regs]
        if present:
            lines.append(" ".join(f"{n.upper():>5} {_hex(regs, n, 16)}" for n in present))

    spr_line(("srr0", "srr1", "pvr", "vrsave"))
    spr_line(("sprg0", "sprg1", "sprg2", "sprg3"))
    spr_line(("sprg4", "sprg5", "sprg6", "sprg7"))
    spr_line(("hsrr0", "hsrr1"))
    spr_line(("cfar",))
    spr_line(("lpcr",))
    spr_line(("ptcr", "dar", "dsisr"))
    return lines


# ------------------------------------------------------------------------- s390x


def _format_s390x(cpu: CpuState) -> list[str]:
    regs = cpu.registers
    mask = _reg(regs, "psw_mask")
    # The condition code as saved in the PSW mask (see migstream.decoders.cpus).
    cc = f" cc {(mask >> 44) & 3:02x}" if mask is not None else ""
    lines = [f"PSW=mask {_hex(regs, 'psw_mask', 16)} addr {_hex(regs, 'psw_addr', 16)}{cc}"]
    lines += _rows([f"R{n:02d}={_hex(regs, f'r{n}', 16)}" for n in range(16)], 4)
    if any(f"cr{n}" in regs for n in range(16)):
        lines += _rows([f"C{n:02d}={_hex(regs, f'cr{n}', 16)}" for n in range(16)], 4)
    return lines


def _format_generic(cpu: CpuState) -> list[str]:
    lines: list[str] = [f"arch {cpu.arch}"]
    for name, value in cpu.registers.items():
        if isinstance(value, Mapping):
            parts = " ".join(f"{k}={v:#x}" for k, v in value.items())
            lines.append(f"{name}: {parts}")
        else:
            lines.append(f"{name}={value:#x}")
    return lines


_FORMATTERS: dict[str, Callable[[CpuState], list[str]]] = {
    "x86_64": _format_x86,
    "aarch64": _format_aarch64,
    "ppc64": _format_ppc64,
    "s390x": _format_s390x,
}
