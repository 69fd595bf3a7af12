"""Where RAM blocks sit in the guest-physical address space.

A migration stream names its RAM blocks (RAMBlock ``idstr`` and used length)
but never says at which guest-physical address (GPA) the guest sees them: that
is decided by the machine type.  This module knows the layouts of the machine
families QEMU migrates most often and turns ``(block, used_length)`` pairs into
:class:`Placement` records (block, offset in the block, GPA, size).

Rules, per machine family (facts of QEMU's board code, re-stated):

* x86 ``pc`` (i440fx) and ``isapc``: RAM below 4 GiB up to 0xe0000000; when RAM
  reaches 0xe0000000 and the machine aligns to gigabytes (every i440fx version
  after 1.7), the split moves down to 3 GiB.  What does not fit below the split
  is placed at 4 GiB, continuing in the block.
* x86 ``q35``: RAM below 4 GiB up to 0xb0000000; from 0xb0000000 of RAM on, the
  split is at 2 GiB (q35 1.7 and older: at 0xb0000000), the rest at 4 GiB.
* x86 firmware: ``pc.bios`` ends at 4 GiB; pflash ``system.flash0`` ends at
  4 GiB with ``system.flash1`` below it.  ``pc.rom`` (0xc0000) and the ISA BIOS
  window lie over RAM: main RAM stays authoritative, they are not placed.
* aarch64 ``virt``: RAM at 0x40000000; ``virt.flash0`` at 0, ``virt.flash1`` at
  0x04000000, ``virt.secure-ram`` at 0x0e000000.
* ppc64 ``pseries`` and s390x ``s390-ccw-virtio``: RAM at 0.

Blocks without a fixed GPA (fw_cfg ROM blobs such as ``/rom@etc/acpi/tables``,
PCI option ROMs, video RAM, hot-plugged memory) are reported as unplaced.  An
``overrides`` mapping (the CLI's ``--map BLOCK=GPA``) places any block, whole,
at a given GPA.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from migstream.errors import UsageError

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
FOUR_GIB = 4 * GiB

#: Guest-physical addresses are 64-bit: every placed range ends at or below this.
GPA_LIMIT = 1 << 64
#: Architectures this module knows, as in :mod:`migstream.model.cpu`.
KNOWN_ARCHES = ("x86_64", "aarch64", "ppc64", "s390x")

# --- x86 ----------------------------------------------------------------------
#: i440fx: default upper bound of RAM below 4 GiB (``max-ram-below-4g`` default).
PC_MAX_RAM_BELOW_4G = 0xE000_0000
#: i440fx with gigabyte alignment: split used once RAM reaches PC_MAX_RAM_BELOW_4G.
PC_GIGABYTE_ALIGNED_LOWMEM = 0xC000_0000
#: q35: RAM at or above this size is split.
Q35_SPLIT_THRESHOLD = 0xB000_0000
#: q35: RAM kept below 4 GiB when split (gigabyte-aligned machines).
Q35_GIGABYTE_ALIGNED_LOWMEM = 0x8000_0000
#: Last machine version (major, minor) of both x86 families without gigabyte alignment.
X86_LAST_UNALIGNED_VERSION = (1, 7)
#: Where RAM above the split starts (without the AMD 1 TiB relocation).
X86_ABOVE_4G_START = FOUR_GIB
#: AMD HyperTransport reserved range start; QEMU 7.1+ moves high RAM to 1 TiB for AMD vCPUs.
AMD_HT_START = 0xFD_0000_0000
AMD_ABOVE_4G_RELOCATED = 1 << 40
AMD_1TB_HOLE_SINCE = (7, 1)
#: Legacy window where the guest sees VGA memory and BIOS shadows instead of RAM.
X86_LEGACY_HOLE = (0xA0000, 0x100000)
#: Option ROM area (``pc.rom``) start; it overlays RAM.
PC_ROM_START = 0xC0000
#: The ISA BIOS window ends at 1 MiB and shows at most the last 128 KiB of the BIOS.
ISA_BIOS_END = 0x100000
ISA_BIOS_MAX = 128 * KiB

# --- aarch64 virt --------------------------------------------------------------
VIRT_RAM_BASE = 0x4000_0000
VIRT_FLASH0_BASE = 0x0000_0000
VIRT_FLASH1_BASE = 0x0400_0000
VIRT_SECURE_RAM_BASE = 0x0E00_0000

#: Block names of main RAM by machine family.
MAIN_RAM_BLOCK = {
    "pc": "pc.ram",
    "isapc": "pc.ram",
    "q35": "pc.ram",
    "virt": "mach-virt.ram",
    "pseries": "ppc_spapr.ram",
    "s390-ccw-virtio": "s390.ram",
}

#: Architecture of each machine family.
FAMILY_ARCH = {
    "pc": "x86_64",
    "isapc": "x86_64",
    "q35": "x86_64",
    "virt": "aarch64",
    "pseries": "ppc64",
    "s390-ccw-virtio": "s390x",
}

#: Architecture implied by a main RAM block name (streams without a machine name).
BLOCK_ARCH = {
    "pc.ram": "x86_64",
    "mach-virt.ram": "aarch64",
    "ppc_spapr.ram": "ppc64",
    "s390.ram": "s390x",
}

#: Family assumed for streams without a machine name, from the first of these blocks
#: present (main RAM names first, then firmware that only one family has).
BLOCK_FAMILY = {
    "pc.ram": "pc",
    "mach-virt.ram": "virt",
    "ppc_spapr.ram": "pseries",
    "s390.ram": "s390-ccw-virtio",
    "pc.bios": "pc",
    "pc.rom": "pc",
    "virt.flash0": "virt",
}

#: Fixed firmware/flash GPAs (aarch64 virt).
VIRT_FIXED_BLOCKS = {
    "virt.flash0": VIRT_FLASH0_BASE,
    "virt.flash1": VIRT_FLASH1_BASE,
    "virt.secure-ram": VIRT_SECURE_RAM_BASE,
}

#: Name fragments of blocks that are never main RAM (device memory, firmware, ROMs).
NOT_RAM_HINTS = (".rom", "bios", "flash", "vram", "kvmvapic", "secure-ram")

_MACHINE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^pc-i440fx-(\d+)\.(\d+)"), "pc"),
    (re.compile(r"^pc-q35-(\d+)\.(\d+)"), "q35"),
    (re.compile(r"^pc-(\d+)\.(\d+)"), "pc"),  # pc-0.x / pc-1.x names of old i440fx machines
    (re.compile(r"^pc$"), "pc"),
    (re.compile(r"^q35$"), "q35"),
    (re.compile(r"^isapc$"), "isapc"),
    (re.compile(r"^virt(?:-(\d+)\.(\d+))?"), "virt"),
    (re.compile(r"^pseries(?:-(\d+)\.(\d+))?"), "pseries"),
    (re.compile(r"^s390-ccw-virtio(?:-(\d+)\.(\d+))?"), "s390-ccw-virtio"),
)


@dataclass(frozen=True)
class Placement:
    """``size`` bytes of ``block`` from ``block_offset`` on, seen by the guest at ``gpa``.

    ``kind`` is ``ram`` (main memory), ``firmware`` (BIOS, flash, secure RAM at a
    fixed address) or ``override`` (placed by the caller).
    """

    block: str
    block_offset: int
    gpa: int
    size: int
    kind: str = "ram"

    @property
    def gpa_end(self) -> int:
        """First GPA after the placement."""
        return self.gpa + self.size

    def to_json(self) -> dict[str, Any]:
        return {
            "block": self.block,
            "block_offset": self.block_offset,
            "gpa": self.gpa,
            "size": self.size,
            "kind": self.kind,
        }


@dataclass(frozen=True)
class MemoryMap:
    """The guest-physical layout of a stream's RAM blocks."""

    machine: str | None
    family: str | None
    arch: str | None
    placements: tuple[Placement, ...]  # sorted by GPA, never overlapping
    unplaced: tuple[str, ...]
    notes: tuple[str, ...]

    def ranges(self, kinds: Sequence[str] | None = None) -> tuple[tuple[int, int], ...]:
        """``(gpa, size)`` of the placements (of the given kinds), sorted, adjacent ones merged."""
        out: list[list[int]] = []
        for p in self.placements:
            if kinds is not None and p.kind not in kinds:
                continue
            if out and out[-1][0] + out[-1][1] == p.gpa:
                out[-1][1] += p.size
            else:
                out.append([p.gpa, p.size])
        return tuple((gpa, size) for gpa, size in out)

    def ram_ranges(self) -> tuple[tuple[int, int], ...]:
        """``(gpa, size)`` of main RAM only."""
        return self.ranges(("ram",))

    def placements_of(self, block: str) -> tuple[Placement, ...]:
        return tuple(p for p in self.placements if p.block == block)

    def gpa_of(self, block: str, offset: int) -> int | None:
        """GPA of byte ``offset`` of ``block``, or None when that byte is not placed."""
        for p in self.placements:
            if p.block == block and p.block_offset <= offset < p.block_offset + p.size:
                return p.gpa + offset - p.block_offset
        return None

    def block_at(self, gpa: int) -> tuple[str, int] | None:
        """``(block, offset)`` holding guest-physical byte ``gpa``, or None."""
        for p in self.placements:
            if p.gpa <= gpa < p.gpa_end:
                return p.block, p.block_offset + gpa - p.gpa
        return None

    def describe(self) -> str:
        """The map as text, one placement a line, then unplaced blocks and notes."""
        head = f"machine {self.machine or '(unknown)'}"
        if self.family or self.arch:
            head += f" ({', '.join(x for x in (self.family, self.arch) if x)})"
        lines = [head]
        if self.placements:
            width = max(len(p.block) for p in self.placements)
            for p in self.placements:
                lines.append(
                    f"  {p.gpa:#018x}-{p.gpa_end - 1:#018x}  {p.block:<{width}}"
                    f"  +{p.block_offset:#x}  {human_size(p.size)}  {p.kind}"
                )
        else:
            lines.append("  (nothing placed)")
        if self.unplaced:
            lines.append("unplaced: " + ", ".join(self.unplaced))
        for note in self.notes:
            lines.append(f"note: {note}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "family": self.family,
            "arch": self.arch,
            "placements": [p.to_json() for p in self.placements],
            "unplaced": list(self.unplaced),
            "notes": list(self.notes),
        }


def human_size(size: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size:#x} bytes"


def parse_machine(machine: str) -> tuple[str, tuple[int, int] | None] | None:
    """``(family, version)`` of a machine type name; version None for an alias.

    Returns None for machine types this module does not know.
    """
    for pattern, family in _MACHINE_PATTERNS:
        m = pattern.match(machine)
        if m is None:
            continue
        groups = [g for g in m.groups() if g is not None]
        version = (int(groups[0]), int(groups[1])) if len(groups) >= 2 else None
        return family, version
    return None


def _looks_like_ram(name: str) -> bool:
    if "/" in name:  # device-owned (PCI ROMs, VGA RAM) or fw_cfg blobs (/rom@...)
        return False
    return not any(hint in name for hint in NOT_RAM_HINTS)


def _version_at_most(version: tuple[int, int] | None, limit: tuple[int, int]) -> bool:
    return version is not None and version <= limit


def _x86_split(family: str, version: tuple[int, int] | None, ram: int, notes: list[str]) -> int:
    """Bytes of RAM below 4 GiB for an x86 machine (the rest goes to 4 GiB)."""
    aligned = family != "isapc" and not _version_at_most(version, X86_LAST_UNALIGNED_VERSION)
    if family == "q35":
        lowmem = Q35_SPLIT_THRESHOLD
        if ram >= Q35_SPLIT_THRESHOLD and aligned:
            lowmem = Q35_GIGABYTE_ALIGNED_LOWMEM
        rule = f"q35 splits RAM of {Q35_SPLIT_THRESHOLD:#x} bytes or more"
    else:
        lowmem = PC_MAX_RAM_BELOW_4G
        if ram >= PC_MAX_RAM_BELOW_4G and aligned:
            lowmem = PC_GIGABYTE_ALIGNED_LOWMEM
        rule = f"i440fx splits RAM of {PC_MAX_RAM_BELOW_4G:#x} bytes or more"
    below = min(ram, lowmem)
    if ram > below:
        notes.append(
            f"{rule}: {human_size(below)} below 4 GiB, {human_size(ram - below)} at 4 GiB"
            f" (block offset {below:#x} -> GPA {X86_ABOVE_4G_START:#x}); a max-ram-below-4g"
            " machine option is not recorded in the stream and is not taken into account"
        )
    return below


def _main_ram_placements(
    family: str, version: tuple[int, int] | None, block: str, size: int, notes: list[str]
) -> list[Placement]:
    if family in ("pc", "q35", "isapc"):
        below = _x86_split(family, version, size, notes)
        out = [Placement(block, 0, 0, below)] if below else []
        if size > below:
            out.append(Placement(block, below, X86_ABOVE_4G_START, size - below))
            end = X86_ABOVE_4G_START + size - below
            if end > AMD_HT_START and (version is None or version >= AMD_1TB_HOLE_SINCE):
                notes.append(
                    f"RAM above 4 GiB ends at {end:#x}, past {AMD_HT_START:#x}: with an AMD vCPU"
                    f" QEMU {AMD_1TB_HOLE_SINCE[0]}.{AMD_1TB_HOLE_SINCE[1]}+ machines put it at"
                    f" {AMD_ABOVE_4G_RELOCATED:#x} instead (not applied)"
                )
        notes.append(
            f"x86: GPA {X86_LEGACY_HOLE[0]:#x}-{X86_LEGACY_HOLE[1] - 1:#x} is written from {block};"
            " the guest itself sees VGA memory and BIOS shadows there"
        )
        return out
    if family == "virt":
        return [Placement(block, 0, VIRT_RAM_BASE, size)]
    # pseries, s390-ccw-virtio
    return [Placement(block, 0, 0, size)]


def _firmware_candidates(family: str, sizes: Mapping[str, int], notes: list[str]) -> dict[str, int]:
    """GPA of each firmware block of ``family`` present in ``sizes``."""
    out: dict[str, int] = {}
    if family in ("pc", "q35", "isapc"):
        if "pc.bios" in sizes:
            bios = sizes["pc.bios"]
            out["pc.bios"] = FOUR_GIB - bios
            window = min(bios, ISA_BIOS_MAX)
            notes.append(
                f"pc.bios ({human_size(bios)}) ends at 4 GiB; its last {human_size(window)} also"
                f" show at GPA {ISA_BIOS_END - window:#x} (ISA BIOS window over RAM), not duplicated"
            )
        top = FOUR_GIB
        for name in ("system.flash0", "system.flash1"):
            if name in sizes:
                top -= sizes[name]
                out[name] = top
        if "pc.rom" in sizes:
            out["pc.rom"] = PC_ROM_START
    elif family == "virt":
        for name, gpa in VIRT_FIXED_BLOCKS.items():
            if name in sizes:
                out[name] = gpa
    return out


def _overlap(a0: int, a1: int, b0: int, b1: int) -> bool:
    return a0 < b1 and b0 < a1


def machine_memory_map(
    blocks: Sequence[tuple[str, int]],
    *,
    machine: str | None,
    arch: str | None,
    overrides: Mapping[str, int] = {},  # noqa: B006 - read only
) -> MemoryMap:
    """Place RAM blocks in guest-physical memory.

    ``blocks``: ``(idstr, used_length)`` in stream order.  ``machine``: the
    machine type from the stream's configuration section (None for streams
    without one).  ``arch``: one of :data:`KNOWN_ARCHES` or None (inferred).
    ``overrides``: block name -> GPA; the whole block is placed there.

    Raises :class:`UsageError` for an unknown ``arch``, an arch that contradicts
    the machine, an override naming no block, or placements that overlap.
    """
    sizes: dict[str, int] = {}
    for name, size in blocks:
        if name in sizes:
            raise UsageError(f"RAM block {name!r} listed twice")
        if size < 0:
            raise UsageError(f"RAM block {name!r} has a negative size", found=size)
        sizes[name] = size
    if arch is not None and arch not in KNOWN_ARCHES:
        raise UsageError("unknown architecture", expected="/".join(KNOWN_ARCHES), found=arch)
    for name, gpa in overrides.items():
        if name not in sizes:
            raise UsageError(
                f"--map names block {name!r}, which is not in the stream",
                expected=", ".join(sizes) or "(no blocks)",
                found=name,
            )
        if not isinstance(gpa, int) or isinstance(gpa, bool):
            raise UsageError(f"--map {name}: the GPA {gpa!r} is not an integer")
        if gpa < 0:
            raise UsageError(f"--map {name}: negative GPA", found=gpa)
        if gpa + sizes[name] > GPA_LIMIT:
            raise UsageError(
                f"--map {name}: the block would end past the 64-bit guest-physical space",
                expected=f"<= {GPA_LIMIT - sizes[name]:#x}",
                found=gpa,
            )

    notes: list[str] = []
    family: str | None = None
    version: tuple[int, int] | None = None
    if machine is not None:
        parsed = parse_machine(machine)
        if parsed is None:
            notes.append(f"machine type {machine!r} has no known memory layout; use --map BLOCK=GPA")
        else:
            family, version = parsed
    else:
        for name in BLOCK_FAMILY:
            if name in sizes:
                family = BLOCK_FAMILY[name]
                notes.append(
                    f"no machine type in the stream: {name} implies a {family} machine"
                    + (" (q35 would differ only from 0xb0000000 bytes of RAM)" if family == "pc" else "")
                )
                break

    family_arch = FAMILY_ARCH.get(family) if family else None
    if arch is None:
        arch = family_arch
        if arch is None:
            arch = next((BLOCK_ARCH[n] for n in sizes if n in BLOCK_ARCH), None)
    elif family_arch is not None and family_arch != arch:
        raise UsageError(f"machine {machine!r} is not an {arch} machine", expected=family_arch, found=arch)

    main: str | None = None
    if family is not None:
        wanted = MAIN_RAM_BLOCK[family]
        if wanted in sizes:
            main = wanted
        else:
            candidates = [n for n in sizes if _looks_like_ram(n) and n not in overrides]
            if candidates:
                main = max(candidates, key=lambda n: sizes[n])
                notes.append(
                    f"no {wanted} block: main RAM taken to be {main!r}, the largest RAM-like block"
                    " (a memory backend named by -machine memory-backend=)"
                )

    placed: list[Placement] = []
    if family is not None and main is not None and main not in overrides:
        placed = _main_ram_placements(family, version, main, sizes[main], notes)

    for name, gpa in overrides.items():
        placed.append(Placement(name, 0, gpa, sizes[name], "override"))
        notes.append(f"{name} placed at {gpa:#x} by --map")
    for i, a in enumerate(placed):
        for b in placed[i + 1 :]:
            if _overlap(a.gpa, a.gpa_end, b.gpa, b.gpa_end):
                raise UsageError(
                    f"{a.block} at {a.gpa:#x} and {b.block} at {b.gpa:#x} overlap in guest-physical memory"
                )

    explained: set[str] = set()
    if family is not None:
        for name, gpa in _firmware_candidates(family, sizes, notes).items():
            if name in overrides or name == main:
                continue
            end = gpa + sizes[name]
            clash = next((p for p in placed if _overlap(gpa, end, p.gpa, p.gpa_end)), None)
            if clash is not None:
                notes.append(
                    f"{name} ({gpa:#x}-{end - 1:#x}) lies over {clash.block}; not placed,"
                    f" {clash.block} is authoritative there"
                )
                explained.add(name)
                continue
            placed.append(Placement(name, 0, gpa, sizes[name], "firmware"))

    placed_names = {p.block for p in placed}
    unplaced = tuple(name for name in sizes if name not in placed_names)
    if family is not None and main is None:
        notes.append(f"no main RAM block found for machine family {family}")
    rest = [n for n in unplaced if n not in explained]
    if rest and family is None:
        notes.append("not placed (machine layout unknown): " + ", ".join(rest))
    elif rest:
        notes.append(
            "not placed (no fixed guest-physical address: fw_cfg blobs, option ROMs,"
            " device memory): " + ", ".join(rest)
        )
    placed.sort(key=lambda p: p.gpa)
    return MemoryMap(
        machine=machine,
        family=family,
        arch=arch,
        placements=tuple(placed),
        unplaced=unplaced,
        notes=tuple(notes),
    )
