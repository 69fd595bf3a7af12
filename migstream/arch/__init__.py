"""Guest architectures: which one a stream is, and what each one knows.

One module per architecture (:mod:`~migstream.arch.x86_64`,
:mod:`~migstream.arch.aarch64`, :mod:`~migstream.arch.ppc64`,
:mod:`~migstream.arch.s390x`) holds its register decoding, its ``info
registers`` text, its ELF notes, its machine memory layouts and what tells it
apart, as one :class:`~migstream.arch.model.Arch` value.  This module is the
registry of those values and dispatches to them.

The input of the register decoding is the decoded device state of a stream:
one ``(idstr, instance_id, fields)`` tuple per device section.  The sections
with idstr ``cpu`` hold one vCPU each (instance id = vCPU index); the
``cpu_common`` section with the same instance id adds the halted flag.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from migstream.arch import aarch64, ppc64, s390x, x86_64
from migstream.arch.cpu_fields import CpuFields, to_uint
from migstream.arch.cpu_text import format_generic
from migstream.arch.memory_layout import build_memory_map
from migstream.arch.memory_layout import parse_machine as _parse_machine
from migstream.arch.model import Arch, CpuState, RegisterValue
from migstream.errors import MigstreamError, StreamFormatError, UnsupportedError
from migstream.ram.layout import MemoryMap
from migstream.vmstate.values import Struct

__all__ = [
    "ARCHES",
    "CPU_COMMON_IDSTR",
    "CPU_IDSTR",
    "Arch",
    "CpuState",
    "cpus_from_devices",
    "decode_builtin",
    "decode_cpu",
    "detect_arch",
    "detect_cpu_arch",
    "find_arch",
    "format_cpu",
    "format_cpus",
    "get_arch",
    "memory_map",
    "parse_machine",
]

#: The registry, in the order used wherever architectures are listed or tried.
_REGISTRY: dict[str, Arch] = {a.name: a for a in (x86_64.ARCH, aarch64.ARCH, ppc64.ARCH, s390x.ARCH)}
ARCHES = tuple(_REGISTRY)

CPU_IDSTR = "cpu"
CPU_COMMON_IDSTR = "cpu_common"


def find_arch(name: str) -> Arch | None:
    """The description of architecture ``name``, or None when it is not known."""
    return _REGISTRY.get(name)


def get_arch(name: str) -> Arch:
    """The description of architecture ``name``; :class:`UnsupportedError` when it is not known."""
    found = _REGISTRY.get(name)
    if found is None:
        raise UnsupportedError("unknown CPU architecture", expected=" ".join(ARCHES), found=name)
    return found


# --------------------------------------------------------------------- detection


def detect_arch(machine: str | None, block_names: Iterable[str], section_names: Iterable[str]) -> str | None:
    """The guest architecture, from the machine type, then the RAM block names, then the sections."""
    if machine:
        for arch in _REGISTRY.values():
            if arch.detect.machine.search(machine):
                return arch.name
    for name in block_names:
        for arch in _REGISTRY.values():
            if name in arch.ram_blocks:
                return arch.name
    seen = set(section_names)
    for arch in _REGISTRY.values():
        if seen.intersection(arch.detect.sections):
            return arch.name
    return None


def detect_cpu_arch(state: Mapping[str, Any]) -> str:
    """The architecture of a decoded ``cpu`` section, from the fields it has."""
    for arch in _REGISTRY.values():
        if all(name in state for name in arch.detect.cpu_fields):
            return arch.name
    raise UnsupportedError(
        "cannot tell the CPU architecture from the fields of the cpu section",
        section=CPU_IDSTR,
        found=", ".join(sorted(state)[:8]) or "no fields",
    )


# --------------------------------------------------------------------- registers


def cpus_from_devices(
    devices: Sequence[tuple[str, int, Mapping[str, Any]]], arch: str | None = None
) -> list[CpuState]:
    """The vCPUs of a stream, in index order, from its decoded device sections.

    ``devices`` holds ``(idstr, instance_id, fields)`` for every device section
    (others than ``cpu``/``cpu_common`` are ignored; when a section appears more
    than once the last one wins).  ``arch`` forces the architecture; by default
    it is detected from the fields of each ``cpu`` section.
    """
    if arch is not None:
        get_arch(arch)
    cpus: dict[int, Mapping[str, Any]] = {}
    commons: dict[int, Mapping[str, Any]] = {}
    for idstr, instance_id, fields in devices:
        if idstr == CPU_IDSTR:
            cpus[instance_id] = fields
        elif idstr == CPU_COMMON_IDSTR:
            commons[instance_id] = fields
    return [decode_cpu(index, cpus[index], arch, commons.get(index)) for index in sorted(cpus)]


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
    try:
        spec = get_arch(arch if arch is not None else detect_cpu_arch(state))
    except UnsupportedError as exc:
        raise exc.located(section=section) from None
    extra: dict[str, int] = {}
    registers: dict[str, RegisterValue] = spec.decode(CpuFields(state, section), extra)
    if spec.note_state is not None:
        # Note-only state is optional: what cannot be read is written as 0 in the notes.
        with contextlib.suppress(MigstreamError):
            spec.note_state(CpuFields(state, section), extra)
    if common is not None and "halted" in common:
        halted = common["halted"]
        if isinstance(halted, bool):
            extra["halted"] = int(halted)
        else:
            extra["halted"] = to_uint(halted, 32, f"{CPU_COMMON_IDSTR} (instance {index})", "halted")
        if spec.halted_register:
            registers[spec.halted_register] = extra["halted"]
    hex_digits = {name: spec.hex_digits[name] for name in registers if name in spec.hex_digits}
    if spec.vector_digits is not None:
        hex_digits.update(spec.vector_digits(registers, extra))
    return CpuState(index=index, arch=spec.name, registers=registers, extra=extra, hex_digits=hex_digits)


def format_cpus(cpus: Sequence[CpuState]) -> str:
    """All vCPUs like ``info registers -a``: each block a blank line, ``CPU#n``, the registers."""
    return "".join(format_cpu(cpu) for cpu in cpus)


def format_cpu(cpu: CpuState) -> str:
    """One vCPU as the monitor prints it: a blank line, ``CPU#n``, its lines, each ending with a newline.

    QEMU: monitor/hmp-cmds-target.c (hmp_info_registers).
    """
    spec = find_arch(cpu.arch)
    lines = ["", f"CPU#{cpu.index}", *(spec.format(cpu) if spec else format_generic(cpu))]
    return "\n".join(lines) + "\n"


def decode_builtin(
    buf: memoryview, name: str, version_id: int, start: int, end: int, section: str
) -> tuple[Struct, str] | None:
    """The leading fields of an undescribed section that an architecture knows the layout of,
    with the note to give, or None."""
    for arch in _REGISTRY.values():
        if arch.decode_builtin is not None:
            state = arch.decode_builtin(buf, name, version_id, start, end, section)
            if state is not None:
                return state, arch.builtin_note
    return None


# ------------------------------------------------------------------ memory layout


def memory_map(
    blocks: Sequence[tuple[str, int]],
    *,
    machine: str | None,
    arch: str | None,
    overrides: Mapping[str, int] = {},  # noqa: B006 - read only
    devices: Sequence[tuple[str, int, Mapping[str, Any]]] = (),
) -> MemoryMap:
    """Place RAM blocks in guest-physical memory.

    ``blocks``: ``(idstr, used_length)`` in stream order.  ``machine``: the
    machine type from the stream's configuration section (None for streams
    without one).  ``arch``: one of :data:`ARCHES` or None (inferred).
    ``overrides``: block name -> GPA; the whole block is placed there.
    ``devices``: ``(idstr, instance_id, fields)`` of the decoded device
    sections; with them the machine's chipset registers and PCI BARs place ROM
    shadows, SMRAM and device memory as QEMU's ``dump-guest-memory`` sees them.

    Raises :class:`UsageError` for an unknown ``arch``, an arch that contradicts
    the machine, an override naming no block, or placements that overlap.
    """
    return build_memory_map(blocks, machine, arch, overrides, tuple(_REGISTRY.values()), devices)


def parse_machine(machine: str) -> tuple[str, tuple[int, int] | None] | None:
    """``(family, version)`` of a machine type name; version None for an alias; None if unknown."""
    found = _parse_machine(machine, tuple(_REGISTRY.values()))
    return (found[0].name, found[1]) if found else None
