"""vCPU registers from the decoded state of the CPU device sections.

The input is the decoded device state of a stream: one ``(idstr, instance_id,
fields)`` tuple per device section, where ``fields`` maps the field names of the
stream's JSON description (``env.regs``, ``env.cr[0]``, ``cpsr``...) to Python
values, subsections nested as dicts keyed by their name (``cpu/vfp``).  The
sections with idstr ``cpu`` hold one vCPU each (instance id = vCPU index); the
``cpu_common`` section with the same instance id adds the halted flag.

What is decoded per architecture (all values unsigned, at the register width):

* x86_64: the 16 GPRs, ``rip``, ``rflags``, ``cr0 cr2 cr3 cr4``, ``efer``,
  ``dr0..dr7``, segments ``es cs ss ds fs gs ldt tr`` (selector/base/limit/flags)
  and ``gdt``/``idt`` (base/limit).  The saved ``env.eflags`` already holds the
  arithmetic flags (the vCPU is out of the translated code when it is saved).
* aarch64: ``x0..x30``, ``sp`` (the stack pointer in use, kept in the 32nd
  xreg slot), ``pc``, ``pstate`` (the ``cpsr`` field, a big-endian word), and
  ``fpcr``/``fpsr`` when the VFP state is present.  A vCPU saved in AArch32
  state gives ``r0..r15``, ``pc`` and ``cpsr`` instead.
* ppc64: ``r0..r31``, ``nip``, ``msr``, ``cr`` (the eight 4-bit fields, field 0
  most significant), and from the SPR array: ``xer`` (saved there whole, with
  its SO/OV/CA bits), ``lr``, ``ctr``, ``srr0``, ``srr1``, ``sprg0..7`` and a
  few others that the monitor shows.
* s390x: ``r0..r15``, ``psw_mask``, ``psw_addr``, ``cr0..cr15``.  Under TCG
  the condition code lives outside the PSW while the guest runs and is not
  saved; the CC field of ``psw_mask`` is the one of the last PSW load, which the
  monitor (merging the live condition code) may show differently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from migstream.arch.model import ARCHES, CpuState, RegisterValue
from migstream.errors import StreamFormatError, UnsupportedError

__all__ = ["CPU_IDSTR", "CPU_COMMON_IDSTR", "cpus_from_devices", "decode_cpu", "detect_arch"]

CPU_IDSTR = "cpu"
CPU_COMMON_IDSTR = "cpu_common"

_X86_GPRS = (
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
)  # fmt: skip
_X86_SEGS = ("es", "cs", "ss", "ds", "fs", "gs")

# Indexes into the PowerPC SPR array (architected SPR numbers).
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

# The AArch32 FPSCR word packs the AArch64 FPSR and FPCR bits.
_FPSR_IN_FPSCR = 0xF800009F
_FPCR_IN_FPSCR = 0x07FF9F00
# PSTATE.nRW: set when the vCPU executes in AArch32 state.
_PSTATE_NRW = 0x10


def _mask(bits: int) -> int:
    return (1 << bits) - 1


class _Fields:
    """Typed, located access to the fields of one decoded CPU section."""

    def __init__(self, state: Mapping[str, Any], section: str, prefix: str = "") -> None:
        self._state = state
        self._section = section
        self._prefix = prefix

    @property
    def section(self) -> str:
        return self._section

    def _path(self, name: str) -> str:
        return f"{self._prefix}.{name}" if self._prefix else name

    def has(self, name: str) -> bool:
        return name in self._state

    def raw(self, name: str) -> Any:
        try:
            return self._state[name]
        except KeyError:
            raise StreamFormatError(
                "field missing from the CPU state", section=self._section, field=self._path(name)
            ) from None

    def sub(self, name: str) -> _Fields | None:
        """A subsection (or struct) if present, else None."""
        value = self._state.get(name)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise StreamFormatError(
                "expected a subsection or struct",
                section=self._section,
                field=self._path(name),
                found=type(value).__name__,
            )
        return _Fields(value, self._section, self._path(name))

    def struct(self, name: str) -> _Fields:
        found = self.sub(name)
        if found is None:
            raise StreamFormatError(
                "struct missing from the CPU state", section=self._section, field=self._path(name)
            )
        return found

    def uint(self, name: str, bits: int = 64) -> int:
        return _to_int(self.raw(name), bits, self._section, self._path(name))

    def uints(self, name: str, bits: int = 64, count: int | None = None) -> list[int]:
        value = self.raw(name)
        path = self._path(name)
        if isinstance(value, (str, bytes, bytearray, memoryview, Mapping)) or not isinstance(value, Sequence):
            raise StreamFormatError(
                "expected an array", section=self._section, field=path, found=type(value).__name__
            )
        if count is not None and len(value) != count:
            raise StreamFormatError(
                "array has the wrong length",
                section=self._section,
                field=path,
                expected=count,
                found=len(value),
            )
        return [_to_int(item, bits, self._section, f"{path}[{i}]") for i, item in enumerate(value)]

    def structs(self, name: str, count: int) -> list[_Fields]:
        value = self.raw(name)
        path = self._path(name)
        if isinstance(value, (str, bytes, bytearray, memoryview, Mapping)) or not isinstance(value, Sequence):
            raise StreamFormatError(
                "expected an array of structs",
                section=self._section,
                field=path,
                found=type(value).__name__,
            )
        if len(value) != count:
            raise StreamFormatError(
                "array has the wrong length",
                section=self._section,
                field=path,
                expected=count,
                found=len(value),
            )
        out: list[_Fields] = []
        for i, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise StreamFormatError(
                    "expected a struct",
                    section=self._section,
                    field=f"{path}[{i}]",
                    found=type(item).__name__,
                )
            out.append(_Fields(item, self._section, f"{path}[{i}]"))
        return out


def _to_int(value: Any, bits: int, section: str, path: str) -> int:
    """An unsigned integer of ``bits`` bits from a decoded value.

    Integers (signed ones too) are taken modulo 2**bits; byte buffers, which is
    how fields with a custom encoding arrive, are read big-endian as QEMU writes
    them.
    """
    if isinstance(value, bool):
        raise StreamFormatError("expected an integer", section=section, field=path, found="bool")
    if isinstance(value, int):
        return value & _mask(bits)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if not raw or len(raw) * 8 > bits:
            raise StreamFormatError(
                "buffer has the wrong size for the register",
                section=section,
                field=path,
                expected=f"1..{bits // 8} bytes",
                found=f"{len(raw)} bytes",
            )
        return int.from_bytes(raw, "big")
    raise StreamFormatError("expected an integer", section=section, field=path, found=type(value).__name__)


def detect_arch(state: Mapping[str, Any]) -> str:
    """The architecture of a decoded ``cpu`` section, from the fields it has."""
    if "env.eip" in state and "env.regs" in state:
        return "x86_64"
    if "env.xregs" in state and "env.pc" in state:
        return "aarch64"
    if "env.gpr" in state and "env.nip" in state:
        return "ppc64"
    if "env.psw.mask" in state and "env.psw.addr" in state:
        return "s390x"
    raise UnsupportedError(
        "cannot tell the CPU architecture from the fields of the cpu section",
        section=CPU_IDSTR,
        found=", ".join(sorted(state)[:8]) or "no fields",
    )


def cpus_from_devices(
    devices: Sequence[tuple[str, int, Mapping[str, Any]]], arch: str | None = None
) -> list[CpuState]:
    """The vCPUs of a stream, in index order, from its decoded device sections.

    ``devices`` holds ``(idstr, instance_id, fields)`` for every device section
    (others than ``cpu``/``cpu_common`` are ignored; when a section appears more
    than once the last one wins).  ``arch`` forces the architecture; by default
    it is detected from the fields of each ``cpu`` section.
    """
    if arch is not None and arch not in ARCHES:
        raise UnsupportedError("unknown CPU architecture", expected=" ".join(ARCHES), found=arch)
    cpus: dict[int, Mapping[str, Any]] = {}
    commons: dict[int, Mapping[str, Any]] = {}
    for idstr, instance_id, fields in devices:
        if idstr == CPU_IDSTR:
            cpus[instance_id] = fields
        elif idstr == CPU_COMMON_IDSTR:
            commons[instance_id] = fields
    result: list[CpuState] = []
    for index in sorted(cpus):
        result.append(decode_cpu(index, cpus[index], arch, commons.get(index)))
    return result


def decode_cpu(
    index: int,
    state: Mapping[str, Any],
    arch: str | None = None,
    common: Mapping[str, Any] | None = None,
) -> CpuState:
    """One vCPU from its decoded ``cpu`` section (and ``cpu_common`` section if any)."""
    section = f"{CPU_IDSTR} (instance {index})"
    if not isinstance(state, Mapping):
        raise StreamFormatError(
            "CPU state is not a field mapping", section=section, found=type(state).__name__
        )
    if arch is None:
        try:
            arch = detect_arch(state)
        except UnsupportedError as exc:
            raise exc.located(section=section) from None
    fields = _Fields(state, section)
    registers: dict[str, RegisterValue]
    extra: dict[str, int] = {}
    if arch == "x86_64":
        registers = _decode_x86(fields, extra)
    elif arch == "aarch64":
        registers = _decode_aarch64(fields, extra)
    elif arch == "ppc64":
        registers = _decode_ppc64(fields, extra)
    elif arch == "s390x":
        registers = _decode_s390x(fields)
    else:
        raise UnsupportedError(
            "unknown CPU architecture", section=section, expected=" ".join(ARCHES), found=arch
        )
    if common is not None and "halted" in common:
        halted = common["halted"]
        if isinstance(halted, bool):
            extra["halted"] = int(halted)
        else:
            extra["halted"] = _to_int(halted, 32, f"{CPU_COMMON_IDSTR} (instance {index})", "halted")
    return CpuState(index=index, arch=arch, registers=registers, extra=extra)


# --------------------------------------------------------------------------- x86


def _x86_segment(seg: _Fields, with_selector: bool = True) -> dict[str, int]:
    out: dict[str, int] = {}
    if with_selector:
        out["selector"] = seg.uint("selector", 32)
    out["base"] = seg.uint("base", 64)
    out["limit"] = seg.uint("limit", 32)
    if with_selector:
        out["flags"] = seg.uint("flags", 32)
    return out


def _decode_x86(f: _Fields, extra: dict[str, int]) -> dict[str, RegisterValue]:
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
    extra["hflags"] = f.uint("env.hflags", 32)
    if f.has("env.hflags2"):
        extra["hflags2"] = f.uint("env.hflags2", 32)
    if f.has("env.a20_mask"):
        extra["a20_mask"] = f.uint("env.a20_mask", 32)
    return regs


# ----------------------------------------------------------------------- aarch64


def _decode_aarch64(f: _Fields, extra: dict[str, int]) -> dict[str, RegisterValue]:
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


# ------------------------------------------------------------------------- ppc64


def _decode_ppc64(f: _Fields, extra: dict[str, int]) -> dict[str, RegisterValue]:
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


# ------------------------------------------------------------------------- s390x


def _decode_s390x(f: _Fields) -> dict[str, RegisterValue]:
    regs: dict[str, RegisterValue] = {}
    for n, value in enumerate(f.uints("env.regs", 64, count=16)):
        regs[f"r{n}"] = value
    regs["psw_mask"] = f.uint("env.psw.mask")
    regs["psw_addr"] = f.uint("env.psw.addr")
    if f.has("env.cregs"):
        for n, value in enumerate(f.uints("env.cregs", 64, count=16)):
            regs[f"cr{n}"] = value
    return regs
