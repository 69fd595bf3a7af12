"""x86-64: the built-in layout of the leading fields of the ``cpu`` section.

QEMU: target/i386/machine.c (vmstate_x86_cpu, version 12), hw/core/cpu-common.c (vmstate_cpu_common).

Streams without a JSON description (suppress-vmdesc machines, postcopy) still
carry CPU state.  The leading fields of the x86-64 ``cpu`` section (version 12,
QEMU 2.x to 10.x) have a fixed layout: general registers, instruction pointer,
flags, FPU control, segments, descriptor tables, control and debug registers,
SSE registers, EFER.  Decoding only that prefix gives the registers an analyst
needs; the rest of the section stays opaque.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from migstream.errors import MigstreamError
from migstream.vmstate.decoder import VmstateDecoder
from migstream.vmstate.values import Struct
from migstream.wire.reader import Reader


def _f(
    name: str, type_: str, size: int, count: int = 1, struct: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "type": type_, "size": size}
    if count > 1:
        out["array_len"] = count
    if struct is not None:
        out["struct"] = struct
    return out


_SEGMENT = {
    "vmsd_name": "segment",
    "version": 1,
    "fields": [
        _f("selector", "uint32", 4),
        _f("base", "uint64", 8),
        _f("limit", "uint32", 4),
        _f("flags", "uint32", 4),
    ],
}
_FPREG = {"vmsd_name": "fpreg", "version": 1, "fields": [_f("tmp", "buffer", 10)]}
_XMM = {
    "vmsd_name": "xmm_reg",
    "version": 1,
    "fields": [_f("_q_ZMMReg[0]", "uint64", 8), _f("_q_ZMMReg[1]", "uint64", 8)],
}

#: Leading fields of the x86-64 ``cpu`` section at version 12.
X86_64_CPU_V12_PREFIX: dict[str, Any] = {
    "vmsd_name": "cpu",
    "version": 12,
    "fields": [
        _f("env.regs", "uint64", 8, 16),
        _f("env.eip", "uint64", 8),
        _f("env.eflags", "uint64", 8),
        _f("env.hflags", "uint32", 4),
        _f("env.fpuc", "uint16", 2),
        _f("env.fpus_vmstate", "uint16", 2),
        _f("env.fptag_vmstate", "uint16", 2),
        _f("env.fpregs_format_vmstate", "uint16", 2),
        _f("env.fpregs", "struct", 10, 8, _FPREG),
        _f("env.segs", "struct", 20, 6, _SEGMENT),
        _f("env.ldt", "struct", 20, 1, _SEGMENT),
        _f("env.tr", "struct", 20, 1, _SEGMENT),
        _f("env.gdt", "struct", 20, 1, _SEGMENT),
        _f("env.idt", "struct", 20, 1, _SEGMENT),
        _f("env.sysenter_cs", "uint32", 4),
        _f("env.sysenter_esp", "uint64", 8),
        _f("env.sysenter_eip", "uint64", 8),
        _f("env.cr[0]", "uint64", 8),
        _f("env.cr[2]", "uint64", 8),
        _f("env.cr[3]", "uint64", 8),
        _f("env.cr[4]", "uint64", 8),
        _f("env.dr", "uint64", 8, 8),
        _f("env.a20_mask", "int32", 4),
        _f("env.mxcsr", "uint32", 4),
        _f("env.xmm_regs[0]", "struct", 16, 16, _XMM),
        _f("env.efer", "uint64", 8),
    ],
}


#: Leading fields of the ``cpu_common`` section (version 1, the same on every target):
#: the halted flag the monitor prints as HLT, and the pending interrupt mask.
CPU_COMMON_V1_PREFIX: dict[str, Any] = {
    "vmsd_name": "cpu_common",
    "version": 1,
    "fields": [_f("halted", "uint32", 4), _f("interrupt_request", "uint32", 4)],
}


def _plausible_x86(state: Struct) -> bool:
    """Segment flags keep only descriptor bits 8..23; anything else means the layout does not fit."""
    segs = state.get("env.segs")
    if not isinstance(segs, list) or len(segs) != 6:
        return False
    for seg in [*segs, state.get("env.ldt"), state.get("env.tr")]:
        if not isinstance(seg, Struct):
            return False
        flags = seg.get("flags")
        if flags is None or not isinstance(flags.value, int) or flags.value & 0xFF0000FF:
            return False
    return True


#: What the diagnostics say of a section decoded with the built-in layout.
BUILTIN_NOTE = "no description; its leading fields were decoded with the built-in x86-64 layout"


def decode_builtin(
    buf: memoryview, name: str, version_id: int, start: int, end: int, section: str
) -> Struct | None:
    """The leading fields of a known section, or None when no built-in layout fits."""
    if name == "cpu_common" and version_id == 1:
        try:
            common = VmstateDecoder(section).decode_vmsd(Reader(buf, start, end), CPU_COMMON_V1_PREFIX)
        except MigstreamError:
            return None
        halted = common.get("halted")
        return common if halted is not None and halted.value in (0, 1) else None
    if name != "cpu" or version_id != 12:
        return None
    r = Reader(buf, start, end)
    try:
        state = VmstateDecoder(section).decode_vmsd(r, X86_64_CPU_V12_PREFIX)
    except MigstreamError:
        return None
    return state if _plausible_x86(state) else None
