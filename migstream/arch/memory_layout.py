"""Where RAM blocks sit in the guest-physical address space, by machine family.

A migration stream names its RAM blocks (RAMBlock ``idstr`` and used length)
but never says at which guest-physical address (GPA) the guest sees them: that
is decided by the machine type.  The architecture modules know the layouts of
the machine families QEMU migrates most often (their :class:`MachineFamily`
records); this module applies them to ``(block, used_length)`` pairs and gives
a :class:`~migstream.ram.layout.MemoryMap`.

When the stream's device state is decoded, a family's ``refine`` rule reads
it to place what the chipset and the PCI devices decide, as QEMU's
``dump-guest-memory`` sees guest memory: ROM shadows routed by the PAM
registers, the legacy VGA window and SMRAM, device memory behind PCI BARs.
Blocks that still have no GPA (fw_cfg ROM blobs such as
``/rom@etc/acpi/tables``, unmapped BARs, hot-plugged memory) are reported as
unplaced.  An ``overrides`` mapping (the CLI's ``--map BLOCK=GPA``) places any
block, whole, at a given GPA.

QEMU: hw/i386/pc.c, hw/arm/virt.c, hw/ppc/spapr.c, hw/s390x/s390-virtio-ccw.c (board memory).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from migstream.arch.model import Arch, DeviceFields, LayoutContext, MachineFamily, MachineVersion
from migstream.errors import UsageError
from migstream.ram.layout import GPA_LIMIT, MemoryMap, Placement

#: Name fragments of blocks that are never main RAM (device memory, firmware, ROMs).
NOT_RAM_HINTS = (".rom", "bios", "flash", "vram", "kvmvapic", "secure-ram")


def parse_machine(machine: str, arches: Sequence[Arch]) -> tuple[MachineFamily, MachineVersion] | None:
    """The family of a machine type name and its version (None for an alias), or None if unknown."""
    for arch in arches:
        for family in arch.families:
            for pattern in family.patterns:
                m = pattern.match(machine)
                if m is None:
                    continue
                groups = [g for g in m.groups() if g is not None]
                version = (int(groups[0]), int(groups[1])) if len(groups) >= 2 else None
                return family, version
    return None


def _implied_family(sizes: Mapping[str, int], arches: Sequence[Arch]) -> tuple[str, MachineFamily] | None:
    """For a stream without a machine name: the first block (main RAM names first, then
    firmware that only one family has) present, and the family it implies."""
    hints: list[tuple[str, MachineFamily]] = []
    for arch in arches:
        hints += [
            (block, next(f for f in arch.families if f.main_ram_block == block)) for block in arch.ram_blocks
        ]
    for arch in arches:
        hints += [(block, arch.families[0]) for block in arch.detect.firmware_blocks]
    return next(((block, family) for block, family in hints if block in sizes), None)


def _looks_like_ram(name: str) -> bool:
    if "/" in name:  # device-owned (PCI ROMs, VGA RAM) or fw_cfg blobs (/rom@...)
        return False
    return not any(hint in name for hint in NOT_RAM_HINTS)


def _overlap(a0: int, a1: int, b0: int, b1: int) -> bool:
    return a0 < b1 and b0 < a1


def punch(placements: Sequence[Placement], start: int, end: int) -> list[Placement]:
    """The placements with GPAs ``[start, end)`` cut out (``override`` placements are kept whole)."""
    out: list[Placement] = []
    for p in placements:
        if p.kind == "override" or not _overlap(p.gpa, p.gpa_end, start, end):
            out.append(p)
            continue
        if p.gpa < start:
            out.append(Placement(p.block, p.block_offset, p.gpa, start - p.gpa, p.kind, p.source))
        if p.gpa_end > end:
            cut = end - p.gpa
            out.append(Placement(p.block, p.block_offset + cut, end, p.gpa_end - end, p.kind, p.source))
    return out


def add_if_free(placements: list[Placement], new: Placement, notes: list[str]) -> bool:
    """Append ``new`` unless it overlaps a placement (then say so in ``notes``); True if added."""
    clash = next((p for p in placements if _overlap(new.gpa, new.gpa_end, p.gpa, p.gpa_end)), None)
    if clash is not None:
        notes.append(
            f"{new.block} ({new.source or new.kind}, {new.gpa:#x}-{new.gpa_end - 1:#x}) lies over"
            f" {clash.block}; not placed, {clash.block} is authoritative there"
        )
        return False
    placements.append(new)
    return True


def build_memory_map(
    blocks: Sequence[tuple[str, int]],
    machine: str | None,
    arch: str | None,
    overrides: Mapping[str, int],
    arches: Sequence[Arch],
    devices: Sequence[DeviceFields] = (),
) -> MemoryMap:
    """Place RAM blocks in guest-physical memory with the layouts of ``arches``.

    See :func:`migstream.arch.memory_map` for the arguments and errors.
    """
    names = tuple(a.name for a in arches)
    sizes: dict[str, int] = {}
    for name, size in blocks:
        if name in sizes:
            raise UsageError(f"RAM block {name!r} listed twice")
        if size < 0:
            raise UsageError(f"RAM block {name!r} has a negative size", found=size)
        sizes[name] = size
    if arch is not None and arch not in names:
        raise UsageError("unknown architecture", expected="/".join(names), found=arch)
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
    family: MachineFamily | None = None
    version: MachineVersion = None
    if machine is not None:
        parsed = parse_machine(machine, arches)
        if parsed is None:
            notes.append(f"machine type {machine!r} has no known memory layout; use --map BLOCK=GPA")
        else:
            family, version = parsed
    else:
        implied = _implied_family(sizes, arches)
        if implied is not None:
            block, family = implied
            notes.append(
                f"no machine type in the stream: {block} implies a {family.name} machine{family.implied_note}"
            )

    family_arch = next((a.name for a in arches if family in a.families), None) if family else None
    if arch is None:
        arch = family_arch
        if arch is None:
            arch = next((a.name for n in sizes for a in arches if n in a.ram_blocks), None)
    elif family_arch is not None and family_arch != arch:
        raise UsageError(f"machine {machine!r} is not an {arch} machine", expected=family_arch, found=arch)

    main: str | None = None
    if family is not None:
        wanted = family.main_ram_block
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
        placed = family.place_ram(family.name, version, main, sizes[main], notes)

    for name, gpa in overrides.items():
        placed.append(Placement(name, 0, gpa, sizes[name], "override", "--map"))
        notes.append(f"{name} placed at {gpa:#x} by --map")
    for i, a in enumerate(placed):
        for b in placed[i + 1 :]:
            if _overlap(a.gpa, a.gpa_end, b.gpa, b.gpa_end):
                raise UsageError(
                    f"{a.block} at {a.gpa:#x} and {b.block} at {b.gpa:#x} overlap in guest-physical memory"
                )

    explained: set[str] = set()
    if family is not None:
        for name, gpa in family.firmware(family.name, sizes, notes).items():
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
            placed.append(Placement(name, 0, gpa, sizes[name], "firmware", "machine rule"))
    if family is not None and family.refine is not None:
        if devices:
            context = LayoutContext(family.name, version, sizes, main, devices, frozenset(overrides), notes)
            placed = family.refine(context, placed)
        else:
            notes.append(
                "no decoded device state: chipset routing and PCI BARs are not applied"
                " (a description, --desc, gives it)"
            )

    placed_names = {p.block for p in placed}
    unplaced = tuple(name for name in sizes if name not in placed_names)
    if family is not None and main is None:
        notes.append(f"no main RAM block found for machine family {family.name}")
    # Blocks a rule already said something of (pflash, an unmapped BAR) are not listed again.
    explained |= {n for n in unplaced if any(n in note for note in notes)}
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
        family=family.name if family else None,
        arch=arch,
        placements=tuple(placed),
        unplaced=unplaced,
        notes=tuple(notes),
    )
