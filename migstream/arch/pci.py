"""PCI configuration space as the memory layouts read it: where a device's BARs map its memory.

A PCI device section carries the device's configuration space (a ``pci
config`` leaf, 256 or 4096 bytes).  Its command register says whether memory
decoding is on; its base address registers say where each region sits.  The
RAM blocks a device owns are named after its qdev path (``0000:00:02.0/vga.vram``
for the section ``0000:00:02.0/vga``), which ties a block to the device.

QEMU: hw/pci/pci.c (pci_bar_address, pci_update_mappings), hw/display/vga-pci.c (BAR 0 = VRAM).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from migstream.arch.memory_layout import add_if_free
from migstream.arch.model import DeviceFields, LayoutContext
from migstream.ram.layout import Placement
from migstream.vmstate.values import Leaf

# Configuration space offsets and bits, names as in QEMU's pci_regs.h.
PCI_COMMAND = 0x04
PCI_COMMAND_MEMORY = 0x2
PCI_HEADER_TYPE = 0x0E
PCI_HEADER_TYPE_BRIDGE = 1
PCI_BASE_ADDRESS_0 = 0x10
PCI_BASE_ADDRESS_SPACE_IO = 0x01
PCI_BASE_ADDRESS_MEM_TYPE_64 = 0x04
PCI_ROM_ADDRESS = 0x30
PCI_ROM_ADDRESS1 = 0x38  # bridges
PCI_ROM_ADDRESS_ENABLE = 0x01
#: QEMU's index of the ROM in a device's region list.
PCI_ROM_SLOT = 6

#: A qdev path that starts with a PCI address: ``domain:bus:slot.function/``, or on a
#: sPAPR host bridge ``pci@BUID:slot.function/``.
_PCI_PATH = re.compile(r"^((?:[0-9a-f]{4}:[0-9a-f]{2}|pci@[0-9a-f]+):[0-9a-f]{2}\.[0-7])/", re.IGNORECASE)

#: RAM blocks behind a numbered BAR, by the name of the block after the device path.
#: Other ``*.rom`` blocks of a device sit behind its expansion ROM BAR.
BLOCK_BARS = {"vga.vram": 0}

_MAX_DEPTH = 3


def pci_address(idstr: str) -> str | None:
    """The PCI address a qdev path starts with (``0000:00:02.0``), or None."""
    m = _PCI_PATH.match(idstr)
    return m.group(1).lower() if m else None


def config_space(fields: Mapping[str, Any]) -> bytes | None:
    """The configuration space bytes of a decoded PCI device section, or None."""
    return _find_config(fields, 0)


def _find_config(node: Mapping[str, Any], depth: int) -> bytes | None:
    for value in node.values():
        if isinstance(value, Leaf) and value.type == "pci config" and isinstance(value.value, bytes):
            return value.value
    if depth >= _MAX_DEPTH:
        return None
    for value in node.values():
        if isinstance(value, Mapping):
            found = _find_config(value, depth + 1)
            if found is not None:
                return found
    return None


def find_config(devices: Sequence[DeviceFields], *names: str) -> tuple[str, bytes] | None:
    """``(idstr, config)`` of the first device whose idstr is one of ``names`` or ends with ``/name``."""
    for idstr, _instance, fields in devices:
        base = idstr.rsplit("/", 1)[-1]
        if base in names or idstr in names:
            config = config_space(fields)
            if config is not None:
                return idstr, config
    return None


def _u32(config: bytes, offset: int) -> int:
    return int.from_bytes(config[offset : offset + 4], "little") if offset + 4 <= len(config) else 0


def pow2ceil(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def bar_address(config: bytes, bar: int, size: int) -> int | None:
    """Where BAR ``bar`` (0-5, or :data:`PCI_ROM_SLOT`) maps a memory region of ``size`` bytes.

    None when it is not mapped: memory decoding off, an I/O BAR, a disabled
    ROM, address 0, or a 32-bit BAR that would wrap past 4 GiB.
    """
    if len(config) < 0x40 or size <= 0:
        return None
    if not int.from_bytes(config[PCI_COMMAND : PCI_COMMAND + 2], "little") & PCI_COMMAND_MEMORY:
        return None
    if bar == PCI_ROM_SLOT:
        bridge = config[PCI_HEADER_TYPE] & 0x7F == PCI_HEADER_TYPE_BRIDGE
        raw = _u32(config, PCI_ROM_ADDRESS1 if bridge else PCI_ROM_ADDRESS)
        if not raw & PCI_ROM_ADDRESS_ENABLE:
            return None
        wide = False
    else:
        offset = PCI_BASE_ADDRESS_0 + 4 * bar
        raw = _u32(config, offset)
        if raw & PCI_BASE_ADDRESS_SPACE_IO:
            return None
        wide = bool(raw & PCI_BASE_ADDRESS_MEM_TYPE_64)
        if wide:
            raw |= _u32(config, offset + 4) << 32
    addr = raw & ~(size - 1) & ((1 << 64) - 1)
    last = addr + size - 1
    if addr == 0 or last >= 1 << 64 or (not wide and last >= 0xFFFF_FFFF):
        return None
    return addr


#: Bus address -> guest-physical address for a device: ``(pci address, bus address, size)``.
BusToGpa = Callable[[str, int, int], int | None]


def _identity(address: str, bus: int, size: int) -> int | None:
    return bus


def bar_placements(
    devices: Sequence[DeviceFields],
    sizes: Mapping[str, int],
    skip: frozenset[str],
    notes: list[str],
    to_gpa: BusToGpa = _identity,
) -> list[Placement]:
    """Device memory where the BARs of the PCI devices map it (memory decoding on).

    ``sizes``: block name -> length; ``skip``: blocks not to place (overridden);
    ``to_gpa``: where the host bridge shows a bus address (None: not visible).
    """
    by_device: dict[str, list[str]] = {}
    for name in sizes:
        address = pci_address(name)
        if address is not None and name not in skip:
            by_device.setdefault(address, []).append(name)
    out: list[Placement] = []
    for idstr, _instance, fields in devices:
        address = pci_address(idstr)
        blocks = by_device.pop(address, None) if address else None
        if not blocks:
            continue
        config = config_space(fields)
        if config is None:
            continue
        for name in blocks:
            short = name.split("/", 1)[1]
            bar = BLOCK_BARS.get(short)
            if bar is None and short.endswith(".rom"):
                bar = PCI_ROM_SLOT
            if bar is None:
                notes.append(f"{name}: which BAR of {idstr} maps it is not known; use --map")
                continue
            bus = bar_address(config, bar, pow2ceil(sizes[name]))
            label = "ROM BAR" if bar == PCI_ROM_SLOT else f"BAR{bar}"
            if bus is None:
                notes.append(f"{name}: {label} of {idstr} is not mapped (memory decoding off or BAR unset)")
                continue
            gpa = to_gpa(address or "", bus, sizes[name])
            if gpa is None:
                notes.append(
                    f"{name}: {label} of {idstr} at bus address {bus:#x} is outside the host bridge windows"
                )
                continue
            where = f"{label} of {address}" + (f", bus address {bus:#x}" if gpa != bus else "")
            out.append(Placement(name, 0, gpa, sizes[name], "device", where))
    return out


def add_bar_placements(ctx: LayoutContext, out: list[Placement], to_gpa: BusToGpa = _identity) -> None:
    """Add to ``out`` the device memory behind the PCI BARs that does not clash with what it holds."""
    for p in bar_placements(ctx.devices, ctx.sizes, ctx.overridden, ctx.notes, to_gpa):
        add_if_free(out, p, ctx.notes)
