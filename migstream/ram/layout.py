"""Where RAM blocks sit in the guest-physical address space: the generic model.

A :class:`MemoryMap` lists :class:`Placement` records (block, offset in the
block, GPA, size, kind), the blocks left unplaced and notes for the user, and
prints itself for ``--print-map``.  Which machine puts which block where is
architecture knowledge: :func:`migstream.arch.memory_map` builds the map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
FOUR_GIB = 4 * GiB
#: Guest-physical addresses are 64-bit: every placed range ends at or below this.
GPA_LIMIT = 1 << 64


@dataclass(frozen=True)
class Placement:
    """``size`` bytes of ``block`` from ``block_offset`` on, seen by the guest at ``gpa``.

    ``kind`` is ``ram`` (main memory), ``firmware`` (BIOS, ROMs at a fixed
    address or where the chipset routes them), ``device`` (device memory behind
    a PCI BAR) or ``override`` (placed by the caller).  ``source`` says which
    rule put it there (a machine rule, a chipset register, a BAR), for
    ``--print-map``.
    """

    block: str
    block_offset: int
    gpa: int
    size: int
    kind: str = "ram"
    #: Why it is there; not part of what the placement is (equality ignores it).
    source: str = field(default="", compare=False)

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
            "source": self.source,
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
                    + (f"  ({p.source})" if p.source else "")
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
