"""What an architecture module describes: vCPU state, and the :class:`Arch` record itself.

Each guest architecture has one module (``x86_64``, ``aarch64``, ``ppc64``,
``s390x``) that ends with one :class:`Arch` value; :mod:`migstream.arch` keeps
them in a registry.  An :class:`Arch` says how to decode the registers of its
``cpu`` sections, how the monitor prints them, which ELF notes a core file
carries for them, how its machine families lay RAM out in guest-physical
memory, and what tells a stream of that architecture apart.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from migstream.ram.layout import Placement
from migstream.vmstate.values import Struct

if TYPE_CHECKING:
    from migstream.arch.cpu_fields import CpuFields
    from migstream.arch.elf_notes import ElfNote

#: A register is an integer, or a small record of integers (x86 segments:
#: selector/base/limit/flags; descriptor tables: base/limit).
RegisterValue = int | Mapping[str, int]

#: A machine type version, ``(major, minor)``; None for an alias such as ``pc``.
MachineVersion = tuple[int, int] | None


@dataclass(frozen=True)
class CpuState:
    """The registers of one vCPU.

    ``registers`` uses lower-case architecture names (``rax``, ``x0``, ``nip``,
    ``psw_addr``...) as in the command-line contract; values are unsigned.
    ``extra`` holds architecture state that is not a register proper but that
    outputs may want (e.g. x86 ``hflags`` to tell the 32-bit view).
    """

    index: int
    arch: str
    registers: Mapping[str, RegisterValue]
    extra: Mapping[str, int] = field(default_factory=dict)
    #: Registers given in JSON as ``0x``-prefixed hex strings of this many digits
    #: (vector and other registers wider than 64 bits).
    hex_digits: Mapping[str, int] = field(default_factory=dict)

    def json_value(self, name: str) -> object:
        """One register as JSON gives it."""
        value = self.registers[name]
        if isinstance(value, Mapping):
            return dict(value)
        digits = self.hex_digits.get(name)
        return f"0x{value:0{digits}x}" if digits else value

    def to_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "arch": self.arch,
            "registers": {k: self.json_value(k) for k in self.registers},
        }


#: A device section as the memory layouts read it: ``(idstr, instance_id, decoded fields)``.
DeviceFields = tuple[str, int, Mapping[str, Any]]


@dataclass(frozen=True)
class LayoutContext:
    """What a family's device-state rule sees: the machine, the RAM blocks, the decoded devices."""

    family: str
    version: MachineVersion
    #: Block name -> used length, for every block of the stream.
    sizes: Mapping[str, int]
    #: The main RAM block (None when there is none).
    main: str | None
    devices: Sequence[DeviceFields]
    #: Blocks placed by ``--map``: a rule leaves them alone.
    overridden: frozenset[str]
    #: Notes for the user; a rule appends to them.
    notes: list[str]


#: Main RAM placement of a family: ``(family, version, block, size, notes)`` -> placements.
PlaceRam = Callable[[str, MachineVersion, str, int, list[str]], list[Placement]]
#: Firmware of a family: ``(family, block sizes, notes)`` -> GPA of each firmware block present.
PlaceFirmware = Callable[[str, Mapping[str, int], list[str]], dict[str, int]]


#: Placements refined by the decoded device state (chipset routing, PCI BARs):
#: ``(context, placements)`` -> the new placements, not overlapping.
RefineLayout = Callable[[LayoutContext, list[Placement]], list[Placement]]


def _no_firmware(family: str, sizes: Mapping[str, int], notes: list[str]) -> dict[str, int]:
    return {}


@dataclass(frozen=True)
class MachineFamily:
    """One machine family (``pc``, ``q35``, ``virt``...) and how it lays out guest RAM.

    ``patterns`` match its machine type names; a first group pair, when the
    pattern has one, is the machine version.  ``implied_note`` is added to the
    note that says the family was guessed from the RAM block names.
    """

    name: str
    patterns: tuple[re.Pattern[str], ...]
    main_ram_block: str
    place_ram: PlaceRam
    firmware: PlaceFirmware = _no_firmware
    implied_note: str = ""
    #: What the decoded device state changes in the layout (None: nothing).
    refine: RefineLayout | None = None


@dataclass(frozen=True)
class DetectionHints:
    """What tells a stream of this architecture apart, strongest first.

    ``machine``: a pattern on the machine type; ``firmware_blocks``: RAM blocks
    that only its machines have (besides the main RAM blocks of its families);
    ``sections``: section idstrs only it has; ``cpu_fields``: fields that all
    appear in its decoded ``cpu`` section.
    """

    machine: re.Pattern[str]
    firmware_blocks: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()
    cpu_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class Arch:
    """Everything migstream knows of one guest architecture."""

    name: str
    #: ELF ``e_machine`` of its core files (unless :attr:`elf_machine_of` says otherwise).
    elf_machine: int
    #: Byte order of the guest (and of its ELF core, unless :attr:`elf_byteorder_of` says otherwise).
    byteorder: str
    #: Registers of one vCPU from its ``cpu`` section; may add to the extra state dict.
    decode: Callable[[CpuFields, dict[str, int]], dict[str, RegisterValue]]
    #: ``info registers`` lines of one vCPU (without the ``CPU#n`` line).
    format: Callable[[CpuState], list[str]]
    #: The ELF notes of all vCPUs (sorted by index), in the file's byte order.
    elf_notes: Callable[[str, Sequence[CpuState]], list[ElfNote]]
    #: Its machine families, for the guest-physical memory layout.
    families: tuple[MachineFamily, ...]
    detect: DetectionHints
    #: Byte order of a core file when it depends on the vCPU state (ppc64).
    elf_byteorder_of: Callable[[Sequence[CpuState]], str] | None = None
    #: Built-in layouts of sections that may come without a description:
    #: ``(buf, idstr, version_id, start, end, section)`` -> decoded state, or None.
    decode_builtin: Callable[[memoryview, str, int, int, int, str], Struct | None] | None = None
    #: What the diagnostics say of a section decoded with :attr:`decode_builtin`.
    builtin_note: str = ""
    #: Registers that JSON gives as hex strings, with their number of hex digits.
    hex_digits: Mapping[str, int] = field(default_factory=dict)
    #: Hex digits of registers whose width depends on the vCPU state (scalable vectors).
    vector_digits: Callable[[Mapping[str, RegisterValue], Mapping[str, int]], Mapping[str, int]] | None = None
    #: The register that mirrors the ``cpu_common`` halted flag, if the monitor shows it.
    halted_register: str | None = None
    #: ``e_machine`` when it depends on the vCPU state (x86: EM_386 outside long mode).
    elf_machine_of: Callable[[Sequence[CpuState]], int] | None = None
    #: ELF class (32 or 64) when it depends on the vCPUs and the ranges (x86: QEMU writes
    #: ELFCLASS32 for a guest outside long mode whose memory all ends below 4 GiB).
    elf_class_of: Callable[[Sequence[CpuState], Sequence[tuple[int, int]]], int] | None = None
    #: State only the ELF notes need (vector and FP registers, timers...): read from the
    #: ``cpu`` section into the extra state dict, where the notes find it by name.
    note_state: Callable[[CpuFields, dict[str, int]], None] | None = None

    def elf_class_for(self, cpus: Sequence[CpuState], ranges: Sequence[tuple[int, int]]) -> int:
        """32 or 64: the ELF class QEMU's ``dump-guest-memory`` would write."""
        if self.elf_class_of is None:
            return 64
        return self.elf_class_of(cpus, ranges)

    def elf_machine_for(self, cpus: Sequence[CpuState]) -> int:
        """The ``e_machine`` QEMU's ``dump-guest-memory`` would give a core of these vCPUs."""
        if self.elf_machine_of is None:
            return self.elf_machine
        return self.elf_machine_of(cpus)

    def elf_byteorder(self, cpus: Sequence[CpuState]) -> str:
        """The byte order QEMU's ``dump-guest-memory`` would give a core of these vCPUs."""
        if self.elf_byteorder_of is None:
            return self.byteorder
        return self.elf_byteorder_of(cpus)

    @property
    def ram_blocks(self) -> tuple[str, ...]:
        """Main RAM block names of its machines (first family first)."""
        return tuple(dict.fromkeys(f.main_ram_block for f in self.families))
