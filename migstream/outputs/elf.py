"""ELF core files laid out like QEMU's ``dump-guest-memory`` output (ELF64; ELF32 where QEMU
writes one: an x86 guest outside long mode whose memory all lies below 4 GiB).

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

The notes, ``e_machine`` and the byte order come from the architecture module
(:mod:`migstream.arch`); this module only lays them out.

QEMU: dump/dump.c (write_elf64_header, write_elf_phdr_loads, write_elf64_notes).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from migstream.arch import ARCHES, get_arch
from migstream.arch.elf_notes import ElfNote
from migstream.arch.model import CpuState
from migstream.errors import UsageError

# --- ELF constants (names as in <elf.h>) --------------------------------------
ELFMAG = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
ELFDATA2MSB = 2
EV_CURRENT = 1
ELFOSABI_NONE = 0
ET_CORE = 4

PT_LOAD = 1
PT_NOTE = 4
PF_X = 1
PF_W = 2
PF_R = 4
PN_XNUM = 0xFFFF
SHN_UNDEF = 0
SHT_NULL = 0

ELFCLASS32 = 1
ELF64_EHDR_SIZE = 64
ELF64_PHDR_SIZE = 56
ELF64_SHDR_SIZE = 64
ELF32_EHDR_SIZE = 52
ELF32_PHDR_SIZE = 32
ELF32_SHDR_SIZE = 40

DEFAULT_PAGE_SIZE = 4096


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
    elf_class: int = 64

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


def _note(e: str, note: ElfNote) -> bytes:
    name_z = note.name + b"\0"
    return struct.pack(e + "III", len(name_z), len(note.desc), note.type) + _pad4(name_z) + _pad4(note.desc)


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
    "big" to force it (default: the architecture's, see ``Arch.elf_byteorder``).
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
    spec = get_arch(arch)
    order = byteorder or spec.elf_byteorder(cpus)
    if order not in ("little", "big"):
        raise UsageError("ELF core: byte order must be 'little' or 'big'", found=order)
    e = "<" if order == "little" else ">"

    ordered = sorted(cpus, key=lambda c: c.index)
    machine = spec.elf_machine_for(ordered)
    notes = b"".join(_note(e, n) for n in spec.elf_notes(order, ordered))

    cls = spec.elf_class_for(ordered, ranges)
    wide = cls == 64
    ehsize, phentsize, shentsize = (
        (ELF64_EHDR_SIZE, ELF64_PHDR_SIZE, ELF64_SHDR_SIZE)
        if wide
        else (ELF32_EHDR_SIZE, ELF32_PHDR_SIZE, ELF32_SHDR_SIZE)
    )
    phnum = 1 + len(ranges)
    extended = phnum >= PN_XNUM
    phoff = ehsize
    shoff = phoff + phnum * phentsize if extended else 0
    note_offset = phoff + phnum * phentsize + (shentsize if extended else 0)
    header_end = note_offset + len(notes)

    segments: list[ElfSegment] = []
    cursor = header_end
    for gpa, size in ranges:
        offset = _align_congruent(cursor, gpa, page_size)
        segments.append(ElfSegment(gpa, size, offset))
        cursor = offset + size
    total = cursor
    if not wide and total > 0xFFFF_FFFF:
        raise UsageError("ELF32 core: the file would pass 4 GiB", found=total)

    ident = (
        ELFMAG
        + bytes(
            [
                ELFCLASS64 if wide else ELFCLASS32,
                ELFDATA2LSB if order == "little" else ELFDATA2MSB,
                EV_CURRENT,
            ]
        )
        + bytes([ELFOSABI_NONE])
    )
    word = "Q" if wide else "I"
    ehdr = struct.pack(
        e + f"16sHHI{word}{word}{word}IHHHHHH",
        ident,
        ET_CORE,
        machine,
        EV_CURRENT,
        0,  # e_entry
        phoff,
        shoff,
        0,  # e_flags
        ehsize,
        phentsize,
        PN_XNUM if extended else phnum,
        shentsize if extended else 0,
        1 if extended else 0,
        SHN_UNDEF,
    )
    flags = PF_R | PF_W | PF_X
    table = [(PT_NOTE, 0, note_offset, 0, len(notes), 4)]
    table += [(PT_LOAD, flags, seg.file_offset, seg.gpa, seg.size, page_size) for seg in segments]
    phdrs = []
    for p_type, p_flags, p_offset, addr, size, align in table:
        if wide:
            phdrs.append(
                struct.pack(e + "IIQQQQQQ", p_type, p_flags, p_offset, addr, addr, size, size, align)
            )
        else:
            phdrs.append(struct.pack(e + "8I", p_type, p_offset, addr, addr, size, size, p_flags, align))
    shdr = b""
    if extended:
        # Section header 0 carries the real program header count in sh_info.
        fmt = "IIQQQQIIQQ" if wide else "10I"
        shdr = struct.pack(e + fmt, 0, SHT_NULL, 0, 0, 0, 0, 0, phnum, 0, 0)
    header = ehdr + b"".join(phdrs) + shdr + notes
    assert len(header) == header_end
    return ElfCoreLayout(
        header=header,
        segments=tuple(segments),
        total_size=total,
        byteorder=order,
        e_machine=machine,
        elf_class=cls,
    )
