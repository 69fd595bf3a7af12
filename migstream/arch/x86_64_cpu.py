"""x86-64 vCPU registers and their ``info registers`` text.

QEMU: target/i386/machine.c (vmstate_x86_cpu, cpu_pre_save), target/i386/cpu-dump.c (x86_cpu_dump_state).

Registers decoded (all unsigned, at the register width): the 16 GPRs, ``rip``,
``rflags``, ``cr0 cr2 cr3 cr4``, ``efer``, ``dr0..dr7``, segments ``es cs ss ds
fs gs ldt tr`` (selector/base/limit/flags, the flags word unmasked) and
``gdt``/``idt`` (base/limit).  The saved ``env.eflags`` already holds the
arithmetic flags (the vCPU is out of the translated code when it is saved).

Derived from saved state: ``cpl``, ``ii`` (interrupt shadow) and ``smm`` from
the hidden-flags word, ``a20`` from ``env.a20_mask``, ``hlt`` from the
``cpu_common`` halted flag.

FPU and vector state: ``fcw``, ``fsw`` (the saved status word already carries
the stack top in bits 11-13), ``ftw`` (the saved tag byte, one bit per valid
register, as the monitor prints it), ``mxcsr``, ``fpr0..fpr7`` (80 bits: sign
and exponent over the 64-bit mantissa), ``xmm0..xmm15`` (128 bits), and when
the stream carries the upper halves ``ymm0..ymm15`` (256 bits),
``zmm0..zmm31`` (512 bits) and ``k0..k7`` (opmask), plus ``xcr0``.  In JSON
the registers wider than 64 bits are hex strings.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from migstream.arch.cpu_fields import CpuFields, to_uint
from migstream.arch.cpu_text import hex_reg, int_reg, rows
from migstream.arch.model import CpuState, RegisterValue
from migstream.errors import StreamFormatError, UnsupportedError

_X86_GPRS = (
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
)  # fmt: skip
_X86_SEGS = ("es", "cs", "ss", "ds", "fs", "gs")

#: Hex digits of the registers that JSON gives as hex strings.
HEX_DIGITS: dict[str, int] = {
    **{f"fpr{n}": 20 for n in range(8)},
    **{f"xmm{n}": 32 for n in range(16)},
    **{f"ymm{n}": 64 for n in range(16)},
    **{f"zmm{n}": 128 for n in range(32)},
}

# x86 hidden-flag bits (QEMU's hflags word, saved with the vCPU).
_HF_CPL = 0x3
_HF_INHIBIT_IRQ_SHIFT = 3
_HF_PE = 1 << 7
_HF_LMA = 1 << 14
_HF_CS64 = 1 << 15
_HF_SMM_SHIFT = 19
#: A20 line state as the a20 mask keeps it.
_A20_SHIFT = 20

#: XSAVE components: x87, SSE, AVX, then the three AVX-512 parts.
_XSTATE_SSE = 1 << 1
_XSTATE_YMM = 1 << 2
_XSTATE_AVX512 = (1 << 5) | (1 << 6) | (1 << 7)
#: Saved x87 register format: 0 = 80-bit (mantissa + sign/exponent).
_FPREGS_FORMAT_FP80 = 0
#: The stack-top field of the FPU status word.
_FSW_TOP_SHIFT = 11

_ZMM_PART = re.compile(r"_q_ZMMReg\[(\d)\]")


def _x86_segment(seg: CpuFields, with_selector: bool = True) -> dict[str, int]:
    out: dict[str, int] = {}
    if with_selector:
        out["selector"] = seg.uint("selector", 32)
    out["base"] = seg.uint("base", 64)
    out["limit"] = seg.uint("limit", 32)
    if with_selector:
        out["flags"] = seg.uint("flags", 32)
    return out


def _walk(state: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """Fields of the section and of its subsections (nested mappings named ``cpu/...``)."""
    for name, value in state.items():
        if name.startswith("cpu/") and isinstance(value, Mapping):
            yield from _walk(value)
        else:
            yield name, value


def _vector_parts(f: CpuFields) -> dict[int, dict[int, int]]:
    """Register number -> {quadword index: value} from every ``env.xmm_regs`` array.

    The section splits the vector registers over several arrays of the same
    field: quadwords 0-1 of registers 0-15 (SSE), 2-3 (AVX upper halves), 4-7
    (AVX-512 upper halves), and all eight of registers 16-31 (an array whose
    entries hold quadwords 0-7).
    """
    out: dict[int, dict[int, int]] = {}
    for name, value in _walk(f.mapping):
        if not name.startswith("env.xmm_regs") or not isinstance(value, list):
            continue
        for n, entry in enumerate(value):
            if not isinstance(entry, Mapping):
                raise StreamFormatError("expected a struct", section=f.section, field=f"{name}[{n}]")
            parts: dict[int, int] = {}
            for key, q in entry.items():
                m = _ZMM_PART.fullmatch(key)
                if m:
                    parts[int(m.group(1))] = to_uint(q, 64, f.section, f"{name}[{n}].{key}")
            first = 16 if len(parts) == 8 else 0
            out.setdefault(first + n, {}).update(parts)
    return out


def _fp80(entry: CpuFields) -> int:
    """An x87 register as 80 bits: sign/exponent word over the mantissa."""
    tmp = entry.raw("tmp")
    if isinstance(tmp, Mapping):
        sub = entry.struct("tmp")
        return (sub.uint("tmp_exp", 16) << 64) | sub.uint("tmp_mant", 64)
    if isinstance(tmp, (bytes, bytearray)) and len(tmp) == 10:
        # Mantissa then exponent, each big-endian as the stream writes integers.
        return (int.from_bytes(tmp[8:10], "big") << 64) | int.from_bytes(tmp[0:8], "big")
    raise StreamFormatError("unexpected x87 register encoding", section=entry.section, field="tmp")


def _decode_fpu(f: CpuFields, regs: dict[str, RegisterValue], extra: dict[str, int]) -> None:
    state = dict(_walk(f.mapping))
    flat = CpuFields(state, f.section)
    if flat.has("env.fpuc"):
        regs["fcw"] = flat.uint("env.fpuc", 16)
    if flat.has("env.fpus_vmstate"):
        regs["fsw"] = flat.uint("env.fpus_vmstate", 16)
    if flat.has("env.fptag_vmstate"):
        regs["ftw"] = flat.uint("env.fptag_vmstate", 16) & 0xFF
    if flat.has("env.mxcsr"):
        regs["mxcsr"] = flat.uint("env.mxcsr", 32)
    if flat.has("env.fpregs") and (
        not flat.has("env.fpregs_format_vmstate")
        or flat.uint("env.fpregs_format_vmstate", 16) == _FPREGS_FORMAT_FP80
    ):
        for n, entry in enumerate(flat.structs("env.fpregs", 8)):
            regs[f"fpr{n}"] = _fp80(entry)
    if flat.has("env.xcr0"):
        regs["xcr0"] = flat.uint("env.xcr0")
    vectors = _vector_parts(f)
    for n in range(16):
        parts = vectors.get(n, {})
        if 0 in parts and 1 in parts:
            low = (parts[1] << 64) | parts[0]
            regs[f"xmm{n}"] = low
            if 2 in parts and 3 in parts:
                regs[f"ymm{n}"] = (parts[3] << 192) | (parts[2] << 128) | low
    if all(len(vectors.get(n, {})) == 8 for n in range(32)):
        for n in range(32):
            regs[f"zmm{n}"] = sum(vectors[n][q] << (64 * q) for q in range(8))
    if flat.has("env.opmask_regs"):
        for n, value in enumerate(flat.uints("env.opmask_regs", count=8)):
            regs[f"k{n}"] = value


def decode(f: CpuFields, extra: dict[str, int]) -> dict[str, RegisterValue]:
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
    hflags = f.uint("env.hflags", 32)
    extra["hflags"] = hflags
    regs["cpl"] = hflags & _HF_CPL
    regs["ii"] = (hflags >> _HF_INHIBIT_IRQ_SHIFT) & 1
    regs["smm"] = (hflags >> _HF_SMM_SHIFT) & 1
    if f.has("env.hflags2"):
        extra["hflags2"] = f.uint("env.hflags2", 32)
    if f.has("env.a20_mask"):
        a20_mask = f.uint("env.a20_mask", 32)
        extra["a20_mask"] = a20_mask
        regs["a20"] = (a20_mask >> _A20_SHIFT) & 1
    _decode_fpu(f, regs, extra)
    return regs


# ------------------------------------------------------------ info registers text

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


def _segment_line(name: str, seg: RegisterValue | None, hflags: int, wide: bool) -> str:
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


def _quads(value: int, count: int) -> str:
    """``count`` quadwords of ``value``, most significant first, space separated."""
    return " ".join(f"{(value >> (64 * q)) & ((1 << 64) - 1):016x}" for q in reversed(range(count)))


def _fpu_lines(regs: Mapping[str, RegisterValue], cs64: bool) -> list[str]:
    if "fcw" not in regs:
        return []
    fsw = int_reg(regs, "fsw") or 0
    lines = [
        f"FCW={hex_reg(regs, 'fcw', 4)} FSW={fsw:04x} [ST={(fsw >> _FSW_TOP_SHIFT) & 7}]"
        f" FTW={hex_reg(regs, 'ftw', 2)} MXCSR={hex_reg(regs, 'mxcsr', 8)}"
    ]
    fprs = []
    for n in range(8):
        value = int_reg(regs, f"fpr{n}")
        if value is None:
            fprs.append(f"FPR{n}={'-' * 16} ----")
        else:
            fprs.append(f"FPR{n}={value & ((1 << 64) - 1):016x} {value >> 64:04x}")
    lines += rows(fprs, 2)
    xcr0 = int_reg(regs, "xcr0") or 0
    count = 16 if cs64 else 8
    avx = _XSTATE_YMM | _XSTATE_SSE
    if xcr0 & (_XSTATE_AVX512 | avx) == _XSTATE_AVX512 | avx and "zmm0" in regs:
        lines += rows([f"Opmask{n:02d}={hex_reg(regs, f'k{n}', 16)}" for n in range(8)], 4)
        for n in range(32 if cs64 else 8):
            lines.append(f"ZMM{n:02d}={_quads(int_reg(regs, f'zmm{n}') or 0, 8)}")
    elif xcr0 & avx == avx and "ymm0" in regs:
        for n in range(count):
            lines.append(f"YMM{n:02d}={_quads(int_reg(regs, f'ymm{n}') or 0, 4)}")
    elif "xmm0" in regs:
        lines += rows([f"XMM{n:02d}={_quads(int_reg(regs, f'xmm{n}') or 0, 2)}" for n in range(count)], 2)
    return lines


def format_registers(cpu: CpuState) -> list[str]:
    regs = cpu.registers
    hflags = cpu.extra.get("hflags", 0)
    cs64 = bool(hflags & _HF_CS64)
    lma = bool(hflags & _HF_LMA)
    eflags = int_reg(regs, "rflags") or 0
    letters = "".join(ch if eflags & bit else "-" for ch, bit in _EFLAGS_LETTERS)
    a20 = int_reg(regs, "a20")
    status = (
        f"[{letters}] CPL={hflags & _HF_CPL} II={(hflags >> _HF_INHIBIT_IRQ_SHIFT) & 1}"
        f" A20={1 if a20 is None else a20} SMM={(hflags >> _HF_SMM_SHIFT) & 1}"
        f" HLT={cpu.extra.get('halted', 0)}"
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
        lines.append(_segment_line(name.upper(), regs.get(name), hflags, cs64))
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
    # The monitor leaves a space after DR3.
    lines.append("".join(f"DR{n}={hex_reg(regs, f'dr{n}', 16)} " for n in range(4)))
    lines.append(f"DR6={hex_reg(regs, 'dr6', 16)} DR7={hex_reg(regs, 'dr7', 16)}")
    if "efer" in regs:
        lines.append(f"EFER={hex_reg(regs, 'efer', 16)}")
    lines += _fpu_lines(regs, cs64)
    return lines
