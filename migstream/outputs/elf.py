"""ELF64 core files laid out like QEMU's ``dump-guest-memory`` output.

The layout is computed apart from the data, so that guest pages can be copied
straight from the stream into the file (``os.copy_file_range``)::

    layout = build_elf_core(ranges, cpus, "x86_64")
    layout.write_header(fd)          # ELF header, program headers, notes; sets the file size
    for seg in layout.segments:      # then each range's bytes at seg.file_offset
        ...

File layout: ELF header, program headers (one ``PT_NOTE``, then one ``PT_LOAD``
per guest-physical range), the extended-numbering section header when there are
``PN_XNUM`` or more program headers, the notes, then each range at a file offset
congruent to its GPA modulo the page size (page aligned for page-aligned GPAs).

``PT_LOAD``: ``p_paddr`` = ``p_vaddr`` = GPA (QEMU writes the GPA as virtual
address too when it does not walk page tables, so that debuggers can read by
address), ``p_filesz`` = ``p_memsz`` = size.

Notes, in the byte order of the file:

* every architecture: one ``NT_PRSTATUS`` ("CORE") per vCPU, ``pr_pid`` = vCPU
  index + 1, ``pr_reg`` in the order of the Linux ``elf_gregset_t`` of the
  architecture, then
* x86_64: one "QEMU" note per vCPU (QEMU's CPU state record: GPRs, segments,
  descriptor tables, CR0-CR4, KERNEL_GS_BASE) after all PRSTATUS notes;
* aarch64, ppc64: ``NT_PRFPREG`` after each PRSTATUS;
* s390x: ``NT_PRFPREG``, then ("LINUX") ``NT_S390_PREFIX``, ``NT_S390_CTRS``,
  ``NT_S390_TIMER``, ``NT_S390_TODCMP``, ``NT_S390_TODPREG`` per vCPU.

A register missing from :class:`~migstream.model.cpu.CpuState` is written as 0.
Unlike QEMU, an x86 guest outside long mode still gets ``EM_X86_64`` and the
x86_64 register layout (QEMU would switch to ``EM_386``), so that one set of
tools reads every dump.
"""

from __future__ import annotations

import importlib
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from migstream.arch.model import ARCHES, CpuState
from migstream.errors import UnsupportedError, UsageError

# --- ELF constants (names as in <elf.h>) --------------------------------------
ELFMAG = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
ELFDATA2MSB = 2
EV_CURRENT = 1
ELFOSABI_NONE = 0
ET_CORE = 4

EM_PPC64 = 21
EM_S390 = 22
EM_X86_64 = 62
EM_AARCH64 = 183

PT_LOAD = 1
PT_NOTE = 4
PF_X = 1
PF_W = 2
PF_R = 4
PN_XNUM = 0xFFFF
SHN_UNDEF = 0
SHT_NULL = 0

NT_PRSTATUS = 1
NT_PRFPREG = 2
NT_S390_TIMER = 0x301
NT_S390_TODCMP = 0x302
NT_S390_TODPREG = 0x303
NT_S390_CTRS = 0x304
NT_S390_PREFIX = 0x305
#: Type of QEMU's own CPU state note (name "QEMU").
NT_QEMU_CPUSTATE = 0

ELF64_EHDR_SIZE = 64
ELF64_PHDR_SIZE = 56
ELF64_SHDR_SIZE = 64
ELF64_NHDR_SIZE = 12

NOTE_NAME_CORE = b"CORE"
NOTE_NAME_LINUX = b"LINUX"
NOTE_NAME_QEMU = b"QEMU"

#: ``struct elf_prstatus`` on LP64 Linux: pr_pid offset, pr_reg offset, total size per arch.
PRSTATUS_PID_OFFSET = 32
PRSTATUS_REG_OFFSET = 112
PRSTATUS_SIZE = {"x86_64": 336, "aarch64": 392, "ppc64": 504, "s390x": 336}

#: QEMU CPU state note: version and size of the record (with KERNEL_GS_BASE).
QEMU_CPUSTATE_VERSION = 1
QEMU_CPUSTATE_SIZE = 440

#: ppc64: LPCR interrupt-little-endian bit, MSR little-endian bit.
PPC_LPCR_ILE = 1 << 25
PPC_MSR_LE = 1

DEFAULT_PAGE_SIZE = 4096
MASK64 = (1 << 64) - 1
MASK32 = (1 << 32) - 1

ELF_MACHINE = {"x86_64": EM_X86_64, "aarch64": EM_AARCH64, "ppc64": EM_PPC64, "s390x": EM_S390}
DEFAULT_BYTEORDER = {"x86_64": "little", "aarch64": "little", "ppc64": "big", "s390x": "big"}

#: Register order of each architecture's ``pr_reg`` (Linux user_regs_struct / pt_regs).
# fmt: off
X86_64_PR_REG = (
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi",
    "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
)
# fmt: on
AARCH64_PR_REG = tuple(f"x{i}" for i in range(31)) + ("sp", "pc", "pstate")
# fmt: off
PPC64_PR_REG = tuple(f"gpr{i}" for i in range(32)) + (
    "nip", "msr", "orig_gpr3", "ctr", "link", "xer", "ccr", "softe", "trap", "dar", "dsisr", "result"
)
# fmt: on
PPC64_NGREG = 48

#: x86 register aliases: contract name first, then the 32-bit view.
_X86_GPR32 = {
    "rax": "eax", "rbx": "ebx", "rcx": "ecx", "rdx": "edx",
    "rsi": "esi", "rdi": "edi", "rbp": "ebp", "rsp": "esp", "rip": "eip",
}  # fmt: skip
_X86_SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr", "gdt", "idt")


class ElfSegment(NamedTuple):
    """Where the bytes of one guest-physical range go in the file."""

    gpa: int
    size: int
    file_offset: int


@dataclass(frozen=True)
class ElfCoreLayout:
    """An ELF core file, without the guest memory bytes."""

    header: bytes  # ELF header + program headers (+ section header 0) + notes, at offset 0
    segments: tuple[ElfSegment, ...]
    total_size: int
    byteorder: str  # "little" or "big"
    e_machine: int

    def write_header(self, fd: int) -> None:
        """Write :attr:`header` at offset 0 and size the file to :attr:`total_size` (holes elsewhere)."""
        os.ftruncate(fd, self.total_size)
        done = 0
        while done < len(self.header):
            done += os.pwrite(fd, self.header[done:], done)


def _align_congruent(cursor: int, gpa: int, page: int) -> int:
    """Smallest offset >= cursor with offset % page == gpa % page."""
    want = gpa % page
    base = cursor - cursor % page + want
    return base if base >= cursor else base + page


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _note(e: str, name: bytes, ntype: int, desc: bytes) -> bytes:
    name_z = name + b"\0"
    return struct.pack(e + "III", len(name_z), len(desc), ntype) + _pad4(name_z) + _pad4(desc)


def _value(cpu: CpuState, *names: str) -> int | Mapping[str, int] | None:
    for name in names:
        v = cpu.registers.get(name)
        if v is None:
            v = cpu.extra.get(name)
        if v is not None:
            return v
    return None


def _reg(cpu: CpuState, *names: str, mask: int = MASK64) -> int:
    """First of ``names`` present as an integer register (or extra), else 0."""
    v = _value(cpu, *names)
    if isinstance(v, Mapping):
        v = v.get("selector", 0)
    return (int(v) & mask) if v is not None else 0


def _seg(cpu: CpuState, name: str) -> Mapping[str, int]:
    v = cpu.registers.get(name)
    if isinstance(v, Mapping):
        return v
    if isinstance(v, int):
        return {"selector": v}
    return {}


def _prstatus(e: str, arch: str, pid: int, reg_format: str, regs: Sequence[int]) -> bytes:
    buf = bytearray(PRSTATUS_SIZE[arch])
    struct.pack_into(e + "I", buf, PRSTATUS_PID_OFFSET, pid & MASK32)
    struct.pack_into(e + reg_format, buf, PRSTATUS_REG_OFFSET, *regs)
    return bytes(buf)


def _x86_gpr(cpu: CpuState, name: str) -> int:
    alias = _X86_GPR32.get(name)
    return _reg(cpu, name, alias) if alias else _reg(cpu, name)


def _x86_notes(e: str, cpus: Sequence[CpuState]) -> bytes:
    out = []
    for cpu in cpus:
        regs = []
        for name in X86_64_PR_REG:
            if name in ("cs", "ss", "ds", "es", "fs", "gs"):
                regs.append(_seg(cpu, name).get("selector", 0) & MASK64)
            elif name in ("fs_base", "gs_base"):
                regs.append(_seg(cpu, name[:2]).get("base", 0) & MASK64)
            elif name == "eflags":
                regs.append(_reg(cpu, "rflags", "eflags"))
            else:
                regs.append(_x86_gpr(cpu, name))
        desc = _prstatus(e, "x86_64", cpu.index + 1, f"{len(regs)}Q", regs)
        out.append(_note(e, NOTE_NAME_CORE, NT_PRSTATUS, desc))
    for cpu in cpus:
        gprs = [_x86_gpr(cpu, n) for n in ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp"]]
        gprs += [_reg(cpu, f"r{i}") for i in range(8, 16)]
        gprs += [_x86_gpr(cpu, "rip"), _reg(cpu, "rflags", "eflags")]
        desc = struct.pack(e + "II", QEMU_CPUSTATE_VERSION, QEMU_CPUSTATE_SIZE)
        desc += struct.pack(e + "18Q", *gprs)
        for name in _X86_SEGMENTS:
            s = _seg(cpu, name)
            desc += struct.pack(
                e + "IIIIQ",
                s.get("selector", 0) & MASK32,
                s.get("limit", 0) & MASK32,
                s.get("flags", 0) & MASK32,
                0,
                s.get("base", 0) & MASK64,
            )
        desc += struct.pack(e + "5Q", *(_reg(cpu, f"cr{i}") for i in range(5)))
        desc += struct.pack(e + "Q", _reg(cpu, "kernel_gs_base", "kernelgsbase"))
        assert len(desc) == QEMU_CPUSTATE_SIZE
        out.append(_note(e, NOTE_NAME_QEMU, NT_QEMU_CPUSTATE, desc))
    return b"".join(out)


def _vector(cpu: CpuState, byteorder: str, *names: str) -> bytes:
    v = _value(cpu, *names)
    value = int(v) if isinstance(v, int) else 0
    return (value & ((1 << 128) - 1)).to_bytes(16, "little" if byteorder == "little" else "big")


def _aarch64_notes(e: str, byteorder: str, cpus: Sequence[CpuState]) -> bytes:
    out = []
    for cpu in cpus:
        regs = [_reg(cpu, n) for n in AARCH64_PR_REG]
        out.append(_note(e, NOTE_NAME_CORE, NT_PRSTATUS, _prstatus(e, "aarch64", cpu.index + 1, "34Q", regs)))
        fp = b"".join(_vector(cpu, byteorder, f"v{i}", f"q{i}") for i in range(32))
        fp += struct.pack(e + "IIII", _reg(cpu, "fpsr", mask=MASK32), _reg(cpu, "fpcr", mask=MASK32), 0, 0)
        out.append(_note(e, NOTE_NAME_CORE, NT_PRFPREG, fp))
    return b"".join(out)


def _ppc64_notes(e: str, cpus: Sequence[CpuState]) -> bytes:
    aliases = {"link": ("lr", "link"), "ccr": ("cr", "ccr")}
    out = []
    for cpu in cpus:
        regs = []
        for name in PPC64_PR_REG:
            if name.startswith("gpr"):
                regs.append(_reg(cpu, "r" + name[3:], name))
            else:
                regs.append(_reg(cpu, *aliases.get(name, (name,))))
        regs += [0] * (PPC64_NGREG - len(regs))
        desc = _prstatus(e, "ppc64", cpu.index + 1, f"{PPC64_NGREG}Q", regs)
        out.append(_note(e, NOTE_NAME_CORE, NT_PRSTATUS, desc))
        fp = [_reg(cpu, f"f{i}", f"fpr{i}") for i in range(32)] + [_reg(cpu, "fpscr")]
        out.append(_note(e, NOTE_NAME_CORE, NT_PRFPREG, struct.pack(e + "33Q", *fp)))
    return b"".join(out)


def _s390x_notes(e: str, cpus: Sequence[CpuState]) -> bytes:
    out = []
    for cpu in cpus:
        regs = [_reg(cpu, "psw_mask"), _reg(cpu, "psw_addr")]
        regs += [_reg(cpu, f"r{i}", f"gpr{i}") for i in range(16)]
        regs += [_reg(cpu, f"a{i}", f"acr{i}", mask=MASK32) for i in range(16)]
        regs.append(_reg(cpu, "orig_gpr2"))
        desc = _prstatus(e, "s390x", cpu.index + 1, "18Q16IQ", regs)
        out.append(_note(e, NOTE_NAME_CORE, NT_PRSTATUS, desc))
        fp = struct.pack(e + "II", _reg(cpu, "fpc", mask=MASK32), 0)
        fp += struct.pack(e + "16Q", *(_reg(cpu, f"f{i}", f"fpr{i}") for i in range(16)))
        out.append(_note(e, NOTE_NAME_CORE, NT_PRFPREG, fp))
        prefix = struct.pack(e + "I", _reg(cpu, "prefix", "psa", mask=MASK32))
        out.append(_note(e, NOTE_NAME_LINUX, NT_S390_PREFIX, prefix))
        ctrs = struct.pack(e + "16Q", *(_reg(cpu, f"cr{i}") for i in range(16)))
        out.append(_note(e, NOTE_NAME_LINUX, NT_S390_CTRS, ctrs))
        out.append(_note(e, NOTE_NAME_LINUX, NT_S390_TIMER, struct.pack(e + "Q", _reg(cpu, "cputm"))))
        out.append(_note(e, NOTE_NAME_LINUX, NT_S390_TODCMP, struct.pack(e + "Q", _reg(cpu, "ckc"))))
        todpr = struct.pack(e + "I", _reg(cpu, "todpr", mask=MASK32))
        out.append(_note(e, NOTE_NAME_LINUX, NT_S390_TODPREG, todpr))
    return b"".join(out)


def guest_byteorder(arch: str, cpus: Sequence[CpuState]) -> str:
    """Byte order QEMU would give the dump: fixed per arch, except ppc64 (interrupt endianness).

    ppc64: little endian when the first vCPU takes interrupts little endian
    (LPCR ILE, when the vCPU state has ``lpcr``), else when its MSR has LE set;
    big endian otherwise (firmware such as SLOF runs big endian).
    """
    if arch != "ppc64":
        return DEFAULT_BYTEORDER[arch]
    if not cpus:
        return DEFAULT_BYTEORDER[arch]
    first = min(cpus, key=lambda c: c.index)
    lpcr = _value(first, "lpcr")
    if isinstance(lpcr, int):
        return "little" if lpcr & PPC_LPCR_ILE else "big"
    msr = _value(first, "msr")
    if isinstance(msr, int):
        return "little" if msr & PPC_MSR_LE else "big"
    return "big"


def build_elf_core(
    ranges: Sequence[tuple[int, int]],
    cpus: Sequence[CpuState],
    arch: str,
    *,
    byteorder: str | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> ElfCoreLayout:
    """Lay out an ELF64 ``ET_CORE`` file holding ``ranges`` of guest-physical memory.

    ``ranges``: ``(gpa, size)`` sorted by GPA, not overlapping, sizes > 0.
    ``cpus``: the vCPUs, any order (notes follow ``index`` order).
    ``arch``: one of ``x86_64 aarch64 ppc64 s390x``.  ``byteorder``: "little" or
    "big" to force it (default: :func:`guest_byteorder`).
    """
    if arch not in ARCHES:
        raise UsageError("ELF core: unknown architecture", expected="/".join(ARCHES), found=arch)
    if page_size <= 0 or page_size & (page_size - 1):
        raise UsageError("ELF core: page size must be a power of two", found=page_size)
    for cpu in cpus:
        if cpu.arch != arch:
            raise UsageError(f"ELF core: vCPU {cpu.index} is {cpu.arch}, not {arch}")
    prev_end = 0
    for gpa, size in ranges:
        if size <= 0 or gpa < 0 or gpa + size > 1 << 64:
            raise UsageError(f"ELF core: bad range ({gpa:#x}, {size:#x})")
        if gpa < prev_end:
            raise UsageError(f"ELF core: range at {gpa:#x} is out of order or overlaps the previous one")
        prev_end = gpa + size
    order = byteorder or guest_byteorder(arch, cpus)
    if order not in ("little", "big"):
        raise UsageError("ELF core: byte order must be 'little' or 'big'", found=order)
    e = "<" if order == "little" else ">"

    ordered = sorted(cpus, key=lambda c: c.index)
    if arch == "x86_64":
        notes = _x86_notes(e, ordered)
    elif arch == "aarch64":
        notes = _aarch64_notes(e, order, ordered)
    elif arch == "ppc64":
        notes = _ppc64_notes(e, ordered)
    else:
        notes = _s390x_notes(e, ordered)

    phnum = 1 + len(ranges)
    extended = phnum >= PN_XNUM
    phoff = ELF64_EHDR_SIZE
    shoff = phoff + phnum * ELF64_PHDR_SIZE if extended else 0
    note_offset = phoff + phnum * ELF64_PHDR_SIZE + (ELF64_SHDR_SIZE if extended else 0)
    header_end = note_offset + len(notes)

    segments: list[ElfSegment] = []
    cursor = header_end
    for gpa, size in ranges:
        offset = _align_congruent(cursor, gpa, page_size)
        segments.append(ElfSegment(gpa, size, offset))
        cursor = offset + size
    total = cursor

    ident = ELFMAG + bytes(
        [ELFCLASS64, ELFDATA2LSB if order == "little" else ELFDATA2MSB, EV_CURRENT, ELFOSABI_NONE]
    )
    ehdr = struct.pack(
        e + "16sHHIQQQIHHHHHH",
        ident,
        ET_CORE,
        ELF_MACHINE[arch],
        EV_CURRENT,
        0,  # e_entry
        phoff,
        shoff,
        0,  # e_flags
        ELF64_EHDR_SIZE,
        ELF64_PHDR_SIZE,
        PN_XNUM if extended else phnum,
        ELF64_SHDR_SIZE if extended else 0,
        1 if extended else 0,
        SHN_UNDEF,
    )
    phdrs = [struct.pack(e + "IIQQQQQQ", PT_NOTE, 0, note_offset, 0, 0, len(notes), len(notes), 4)]
    flags = PF_R | PF_W | PF_X
    for seg in segments:
        phdrs.append(
            struct.pack(
                e + "IIQQQQQQ",
                PT_LOAD,
                flags,
                seg.file_offset,
                seg.gpa,
                seg.gpa,
                seg.size,
                seg.size,
                page_size,
            )
        )
    shdr = b""
    if extended:
        # Section header 0 carries the real program header count in sh_info.
        shdr = struct.pack(e + "IIQQQQIIQQ", 0, SHT_NULL, 0, 0, 0, 0, 0, phnum, 0, 0)
    header = ehdr + b"".join(phdrs) + shdr + notes
    assert len(header) == header_end
    return ElfCoreLayout(
        header=header,
        segments=tuple(segments),
        total_size=total,
        byteorder=order,
        e_machine=ELF_MACHINE[arch],
    )


# --- reading back ----------------------------------------------------------------


class ElfLoad(NamedTuple):
    paddr: int
    vaddr: int
    offset: int
    filesz: int
    memsz: int


@dataclass(frozen=True)
class ElfCoreInfo:
    """What :func:`read_elf_core` finds in an ELF64 core file."""

    byteorder: str
    e_machine: int
    loads: tuple[ElfLoad, ...]
    notes: tuple[tuple[bytes, int, bytes], ...]  # (name without NUL, type, desc)

    def read_physical(self, path: str | os.PathLike[str], gpa: int, length: int) -> bytes:
        """Bytes at guest-physical ``gpa`` (zeros past ``p_filesz`` and outside every PT_LOAD)."""
        out = bytearray(length)
        with open(path, "rb") as f:
            for load in self.loads:
                lo, hi = max(gpa, load.paddr), min(gpa + length, load.paddr + load.filesz)
                if lo < hi:
                    f.seek(load.offset + lo - load.paddr)
                    out[lo - gpa : hi - gpa] = f.read(hi - lo)
        return bytes(out)


def read_elf_core(path: str | os.PathLike[str]) -> ElfCoreInfo:
    """Parse the header, program headers (``PN_XNUM`` aware) and notes of an ELF64 core."""
    with open(path, "rb") as f:
        ehdr = f.read(ELF64_EHDR_SIZE)
        if len(ehdr) < ELF64_EHDR_SIZE or ehdr[:4] != ELFMAG or ehdr[4] != ELFCLASS64:
            raise UnsupportedError("not an ELF64 file", found=ehdr[:5])
        if ehdr[5] not in (ELFDATA2LSB, ELFDATA2MSB):
            raise UnsupportedError("unknown ELF byte order", found=ehdr[5])
        order = "little" if ehdr[5] == ELFDATA2LSB else "big"
        e = "<" if order == "little" else ">"
        fields = struct.unpack(e + "16sHHIQQQIHHHHHH", ehdr)
        e_machine, phoff, shoff, phentsize, phnum = fields[2], fields[5], fields[6], fields[9], fields[10]
        if phnum == PN_XNUM:
            f.seek(shoff)
            phnum = struct.unpack(e + "IIQQQQIIQQ", f.read(ELF64_SHDR_SIZE))[7]
        f.seek(phoff)
        table = f.read(phnum * phentsize)
        loads: list[ElfLoad] = []
        notes: list[tuple[bytes, int, bytes]] = []
        for i in range(phnum):
            p_type, _, off, vaddr, paddr, filesz, memsz, _ = struct.unpack_from(
                e + "IIQQQQQQ", table, i * phentsize
            )
            if p_type == PT_LOAD:
                loads.append(ElfLoad(paddr, vaddr, off, filesz, memsz))
            elif p_type == PT_NOTE:
                f.seek(off)
                notes.extend(_parse_notes(e, f.read(filesz)))
        return ElfCoreInfo(order, e_machine, tuple(loads), tuple(notes))


def _parse_notes(e: str, data: bytes) -> list[tuple[bytes, int, bytes]]:
    out = []
    pos = 0
    while pos + ELF64_NHDR_SIZE <= len(data):
        namesz, descsz, ntype = struct.unpack_from(e + "III", data, pos)
        pos += ELF64_NHDR_SIZE
        name = data[pos : pos + namesz].rstrip(b"\0")
        pos += namesz + (-namesz % 4)
        desc = data[pos : pos + descsz]
        pos += descsz + (-descsz % 4)
        out.append((name, ntype, desc))
    return out


# --- cross-check with volatility3 -----------------------------------------------


def volatility_read_physical(path: str | os.PathLike[str], gpa: int, length: int) -> bytes:
    """Read guest-physical bytes of an ELF core through volatility3's ELF layer.

    Opens the file the way volatility does (file layer, then the ELF64 stacker)
    and reads ``length`` bytes at ``gpa`` from the resulting physical layer,
    with zeros for unmapped bytes.  Raises :class:`UnsupportedError` when
    volatility3 is not installed or does not recognise the file.  Note that
    volatility3 reads ELF headers as little endian and ignores ``PN_XNUM``.
    """
    try:
        contexts: Any = importlib.import_module("volatility3.framework.contexts")
        physical: Any = importlib.import_module("volatility3.framework.layers.physical")
        elf: Any = importlib.import_module("volatility3.framework.layers.elf")
    except ImportError as exc:
        raise UnsupportedError("volatility3 is not installed (pip install migstream[forensics])") from exc
    ctx = contexts.Context()
    ctx.config["migstream_base.location"] = Path(path).resolve().as_uri()
    base = physical.FileLayer(ctx, "migstream_base", "migstream_base")
    ctx.add_layer(base)
    layer = elf.Elf64Stacker.stack(ctx, "migstream_base")
    if layer is None:
        raise UnsupportedError(f"volatility3 does not take {os.fspath(path)!r} for an ELF64 core")
    ctx.add_layer(layer)
    return bytes(layer.read(gpa, length, pad=True))
