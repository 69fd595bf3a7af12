"""x86-64 memory layout: pc (i440fx), q35 and isapc, from the machine type and the chipset state.

QEMU: hw/i386/pc.c, hw/pci-host/i440fx.c, q35.c, pam.c, hw/display/vga.c, vga-isa.c.

From the machine type alone:

* ``pc`` (i440fx) and ``isapc``: RAM below 4 GiB up to 0xe0000000; when RAM
  reaches 0xe0000000 and the machine aligns to gigabytes (every i440fx version
  after 1.7), the split moves down to 3 GiB.  What does not fit below the split
  is placed at 4 GiB, continuing in the block.
* ``q35``: RAM below 4 GiB up to 0xb0000000; from 0xb0000000 of RAM on, the
  split is at 2 GiB (q35 1.7 and older: at 0xb0000000), the rest at 4 GiB.
* firmware: ``pc.bios`` ends at 4 GiB.  pflash (``system.flash0/1``) is a ROM
  device, which QEMU's ``dump-guest-memory`` leaves out: not placed.

From the decoded device state (the host bridge's PCI configuration space), as
QEMU's ``dump-guest-memory`` sees guest memory:

* 0xa0000-0xbffff: while SMRAM is closed, the PCI window: the memory-mapped
  I/O of a VGA device (left out), or, without one, nothing there, so RAM shows
  through; RAM when the SMRAM register opens it (q35: and H_SMRAME is clear).
* 0xc0000-0xfffff: thirteen PAM segments (0xc0000-0xeffff in 16 KiB steps,
  0xf0000-0xfffff whole).  A segment whose read attribute is 0 shows the PCI
  window: ``pc.rom`` at 0xc0000 and the ISA BIOS (the last 128 KiB at most of
  ``pc.bios``, or the ``isa-bios`` block of a pflash machine) ending at 1 MiB,
  RAM where neither is; otherwise RAM.
* q35 TSEG: with T_EN the top of RAM below 4 GiB (1, 2, 8 MiB or the extended
  size, 16 MiB) reads as a black hole, left out; open SMRAM with H_SMRAME
  shows RAM 0xa0000-0xbffff at 0xfeda0000.
* VGA in chain-4 mode (256-colour or VBE modes): the VRAM alias QEMU maps in
  the legacy window (0xa0000, 0xb0000 or 0xb8000, by GR06) shows through the
  PCI window while SMRAM is closed.
* ISA VGA: its VRAM at the fixed VBE linear framebuffer address 0xe0000000.
* PCI BARs with memory decoding on: device memory (``vga.vram``, option ROMs)
  where the device's configuration space puts it (:mod:`migstream.arch.pci`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace

from migstream.arch.memory_layout import add_if_free, punch
from migstream.arch.model import LayoutContext, MachineFamily, MachineVersion
from migstream.arch.pci import add_bar_placements, config_space, find_config, pci_address
from migstream.ram.layout import FOUR_GIB, KiB, MiB, Placement, human_size
from migstream.vmstate.values import IntArray

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


def _version_at_most(version: MachineVersion, limit: tuple[int, int]) -> bool:
    return version is not None and version <= limit


def _x86_split(family: str, version: MachineVersion, ram: int, notes: list[str]) -> int:
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


def _place_ram(
    family: str, version: MachineVersion, block: str, size: int, notes: list[str]
) -> list[Placement]:
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
    return [replace(p, source="machine rule") for p in out]


def _firmware(family: str, sizes: Mapping[str, int], notes: list[str]) -> dict[str, int]:
    """GPA of each firmware block present in ``sizes``."""
    out: dict[str, int] = {}
    if "pc.bios" in sizes:
        out["pc.bios"] = FOUR_GIB - sizes["pc.bios"]
    flash = [name for name in ("system.flash0", "system.flash1") if name in sizes]
    if flash:
        top = FOUR_GIB
        for name in flash:
            top -= sizes[name]
            notes.append(
                f"{name} (pflash, {top:#x}-{top + sizes[name] - 1:#x}) is a ROM device, not RAM:"
                " QEMU's dump-guest-memory leaves it out; --map places it"
            )
    return out


# ------------------------------------------------------------------ chipset state

#: Host bridge registers (offsets in its configuration space), names as in QEMU.
I440FX_PAM = 0x59
I440FX_SMRAM = 0x72
MCH_HOST_BRIDGE_PAM0 = 0x90
MCH_HOST_BRIDGE_SMRAM = 0x9D
MCH_HOST_BRIDGE_ESMRAMC = 0x9E
SMRAM_D_OPEN = 0x40
MCH_HOST_BRIDGE_ESMRAMC_H_SMRAME = 0x80
MCH_HOST_BRIDGE_ESMRAMC_T_EN = 0x01
#: TSEG sizes by ESMRAMC bits 2:1; 3 selects the extended size.
TSEG_SIZES = (1 * MiB, 2 * MiB, 8 * MiB)
#: ``ext_tseg_mbytes`` of q35 machines after 2.9 (0 before).
EXT_TSEG_MBYTES = 16
EXT_TSEG_SINCE = (2, 10)
#: Where open SMRAM shows with H_SMRAME set.
OPEN_HIGH_SMRAM = 0xFEDA_0000
SMRAM_WINDOW = (0xA0000, 0x20000)
#: PAM segments: the BIOS one, then twelve 16 KiB expansion ones.
PAM_BIOS = (0xF0000, 0x10000)
PAM_EXPAN_BASE = 0xC0000
PAM_EXPAN_SIZE = 0x4000
PAM_SEGMENTS = 13
PAM_ATTR_MASK = 3


def _pam_segments() -> list[tuple[int, int, int, int]]:
    """``(gpa, size, register offset from PAM0, nibble shift)`` of each segment, in QEMU's order."""
    out = []
    for i in range(PAM_SEGMENTS):
        gpa, size = PAM_BIOS if i == 0 else (PAM_EXPAN_BASE + (i - 1) * PAM_EXPAN_SIZE, PAM_EXPAN_SIZE)
        out.append((gpa, size, (i + 1) // 2, 0 if i & 1 else 4))
    return out


def _pci_window(ctx: LayoutContext, gpa: int, size: int, why: str) -> list[Placement]:
    """What the PCI window shows of ``[gpa, gpa+size)`` below 1 MiB: pc.rom and the ISA BIOS;
    where neither is, nothing in the window claims the address and main RAM shows through."""
    out: list[Placement] = []
    rom = ctx.sizes.get("pc.rom", 0) if "pc.rom" not in ctx.overridden else 0
    isa_block = "isa-bios" if "isa-bios" in ctx.sizes else "pc.bios"
    bios = ctx.sizes.get(isa_block, 0) if isa_block not in ctx.overridden else 0
    isa = min(bios, ISA_BIOS_MAX)
    windows = [("pc.rom", PC_ROM_START, rom, 0), (isa_block, ISA_BIOS_END - isa, isa, bios - isa)]
    for block, start, length, base in windows:
        lo, hi = max(gpa, start), min(gpa + size, start + length)
        if lo < hi:
            out.append(Placement(block, base + lo - start, lo, hi - lo, "firmware", why))
    return out + _ram_between(ctx, gpa, gpa + size, out, why + " (empty there: RAM)")


def _ram_between(
    ctx: LayoutContext, start: int, end: int, taken: list[Placement], why: str
) -> list[Placement]:
    """Main RAM over ``[start, end)`` where ``taken`` leaves it free (identity offsets)."""
    out: list[Placement] = []
    cursor = start
    for p in sorted(taken, key=lambda p: p.gpa):
        if p.gpa > cursor and ctx.main:
            out.append(Placement(ctx.main, cursor, cursor, p.gpa - cursor, "ram", why))
        cursor = max(cursor, p.gpa_end)
    if cursor < end and ctx.main:
        out.append(Placement(ctx.main, cursor, cursor, end - cursor, "ram", why))
    return out


def _vga_claims_window(ctx: LayoutContext) -> str | None:
    """The device whose VGA memory-mapped I/O sits at 0xa0000-0xbffff, if any: a PCI device of
    class 0x0300 (VGA compatible) or an ISA VGA."""
    for idstr, _instance, fields in ctx.devices:
        base = idstr.rsplit("/", 1)[-1]
        if base in ("vga", "isa-vga") and pci_address(idstr) is None:
            return idstr
        if pci_address(idstr) is not None:
            config = config_space(fields)
            if config is not None and len(config) > 0x0B and config[0x0A] == 0x00 and config[0x0B] == 0x03:
                return idstr
    return None


def _merge(placements: list[Placement]) -> list[Placement]:
    out: list[Placement] = []
    for p in sorted(placements, key=lambda p: p.gpa):
        q = out[-1] if out else None
        if (
            q is not None
            and (q.block, q.kind, q.source) == (p.block, p.kind, p.source)
            and q.gpa_end == p.gpa
            and q.block_offset + q.size == p.block_offset
        ):
            out[-1] = replace(q, size=q.size + p.size)
        else:
            out.append(p)
    return out


def _chipset(ctx: LayoutContext, host: str, config: bytes, out: list[Placement]) -> list[Placement]:
    """Apply the host bridge's SMRAM, PAM (and q35 TSEG) registers to main RAM."""
    notes = ctx.notes
    main = ctx.main
    q35 = ctx.family == "q35"
    if main is None or main in ctx.overridden or len(config) < 0xA0:
        return out
    low = [
        p for p in out if p.block == main and p.gpa == 0 and p.block_offset == 0 and p.size >= ISA_BIOS_END
    ]
    if not low:
        notes.append(f"{main} does not cover the first MiB: chipset routing below 1 MiB not applied")
        return out
    name = host.rsplit("/", 1)[-1]
    smram = config[MCH_HOST_BRIDGE_SMRAM if q35 else I440FX_SMRAM]
    esmramc = config[MCH_HOST_BRIDGE_ESMRAMC] if q35 else 0
    d_open = bool(smram & SMRAM_D_OPEN)
    h_smrame = bool(esmramc & MCH_HOST_BRIDGE_ESMRAMC_H_SMRAME)
    out = punch(out, SMRAM_WINDOW[0], ISA_BIOS_END)
    added: list[Placement] = []
    reg = f"{name} SMRAM={smram:#04x}" + (f" ESMRAMC={esmramc:#04x}" if q35 else "")
    if d_open and not h_smrame:
        added.append(Placement(main, SMRAM_WINDOW[0], *SMRAM_WINDOW, "ram", f"SMRAM open ({reg})"))
    else:
        vga = _vga_claims_window(ctx)
        window = _vga_chain4(ctx) if vga else None
        span = f"{SMRAM_WINDOW[0]:#x}-{sum(SMRAM_WINDOW) - 1:#x}"
        if vga is None:
            added += _ram_between(
                ctx, SMRAM_WINDOW[0], sum(SMRAM_WINDOW), [], f"SMRAM closed ({reg}), no VGA: RAM"
            )
        else:
            rest = "the rest is" if window else "it is"
            notes.append(
                f"{span}: SMRAM closed ({reg}), the PCI window shows the VGA memory-mapped I/O of {vga}"
                f" there; {rest} left out like QEMU's dump"
            )
        if window is not None:
            added.append(window)
    pam0 = MCH_HOST_BRIDGE_PAM0 if q35 else I440FX_PAM
    for gpa, size, index, shift in _pam_segments():
        mode = (config[pam0 + index] >> shift) & PAM_ATTR_MASK
        if mode:
            added.append(Placement(main, gpa, gpa, size, "ram", f"PAM {name} {pam0:#x}-{pam0 + 6:#x}: RAM"))
        else:
            added += _pci_window(ctx, gpa, size, f"PAM {name} {pam0:#x}-{pam0 + 6:#x}: PCI window")
    out += _merge(added)
    if q35 and esmramc & MCH_HOST_BRIDGE_ESMRAMC_T_EN:
        out = _tseg(ctx, out, esmramc)
    if q35 and d_open and h_smrame:
        high = Placement(
            main, SMRAM_WINDOW[0], OPEN_HIGH_SMRAM, SMRAM_WINDOW[1], "ram", f"SMRAM open high ({reg})"
        )
        add_if_free(out, high, notes)
    return out


def _tseg(ctx: LayoutContext, out: list[Placement], esmramc: int) -> list[Placement]:
    bits = (esmramc >> 1) & 3
    if bits < len(TSEG_SIZES):
        size = TSEG_SIZES[bits]
    else:
        old = ctx.version is not None and ctx.version < EXT_TSEG_SINCE
        size = 0 if old else EXT_TSEG_MBYTES * MiB
    top = max((p.gpa_end for p in out if p.block == ctx.main and p.gpa < FOUR_GIB), default=0)
    if size and top > size:
        ctx.notes.append(
            f"TSEG enabled (ESMRAMC={esmramc:#04x}): {top - size:#x}-{top - 1:#x} ({human_size(size)})"
            " reads as a black hole outside SMM; left out like QEMU's dump"
        )
        out = punch(out, top - size, top)
    return out


# ------------------------------------------------------------------ VGA window

#: VGA registers (sequencer and graphics controller indexes), names as in QEMU.
VGA_SEQ_PLANE_WRITE = 0x02
VGA_SR02_ALL_PLANES = 0x0F
VGA_SEQ_MEMORY_MODE = 0x04
VGA_SR04_CHN_4M = 0x08
VGA_GFX_MISC = 0x06
VBE_DISPI_INDEX_BPP = 3
VBE_DISPI_INDEX_ENABLE = 4
VBE_DISPI_ENABLED = 0x01
#: Where an ISA VGA maps its whole VRAM (the VBE linear framebuffer).
VBE_LFB_ADDRESS = 0xE000_0000
#: Chain-4 window by GR06 memory map select: (GPA, size, uses the bank offset).
CHAIN4_WINDOWS = ((0xA0000, 0x20000, False), (0xA0000, 0x10000, True), (0xB0000, 0x8000, False),
                  (0xB8000, 0x8000, False))  # fmt: skip


def _leaf_bytes(node: object) -> bytes:
    value = getattr(node, "value", None)
    return value if isinstance(value, bytes) else b""


def _leaf_int(node: object) -> int:
    value = getattr(node, "value", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _ints(node: object) -> list[int]:
    if isinstance(node, IntArray):
        return list(node.values)
    if isinstance(node, list):
        return [_leaf_int(x) for x in node]
    return []


def _vga_chain4(ctx: LayoutContext) -> Placement | None:
    """The VRAM alias a VGA device maps into its legacy window in chain-4 mode (256-colour and
    VBE modes), which the guest sees through the PCI window at 0xa0000-0xbffff; None otherwise."""
    for idstr, _instance, fields in ctx.devices:
        vga = fields.get("vga") if idstr.rsplit("/", 1)[-1] in ("vga", "VGA") else None
        if not isinstance(vga, Mapping) or "sr" not in vga or "gr" not in vga:
            continue
        sr, gr = bytearray(_leaf_bytes(vga["sr"])), bytearray(_leaf_bytes(vga["gr"]))
        if len(sr) <= VGA_SEQ_MEMORY_MODE or len(gr) <= VGA_GFX_MISC:
            return None
        vbe = _ints(vga.get("vbe_regs"))
        if len(vbe) > VBE_DISPI_INDEX_ENABLE and vbe[VBE_DISPI_INDEX_ENABLE] & VBE_DISPI_ENABLED:
            # VBE on: QEMU reads the sequencer through its VBE copy (chain 4 unless 4 bpp) and
            # selects memory map 1.
            if vbe[VBE_DISPI_INDEX_BPP] != 4:
                sr[VGA_SEQ_MEMORY_MODE] |= VGA_SR04_CHN_4M
                sr[VGA_SEQ_PLANE_WRITE] |= VGA_SR02_ALL_PLANES
            gr[VGA_GFX_MISC] = (gr[VGA_GFX_MISC] & ~0x0C) | 0x04
        chain4 = sr[VGA_SEQ_PLANE_WRITE] & VGA_SR02_ALL_PLANES == VGA_SR02_ALL_PLANES
        if not (chain4 and sr[VGA_SEQ_MEMORY_MODE] & VGA_SR04_CHN_4M):
            return None
        gpa, size, banked = CHAIN4_WINDOWS[(gr[VGA_GFX_MISC] >> 2) & 3]
        offset = _leaf_int(vga.get("bank_offset")) if banked else 0
        prefix = idstr.rsplit("/", 1)[0] + "/" if "/" in idstr else ""
        block = prefix + "vga.vram"
        if block not in ctx.sizes or block in ctx.overridden or offset + size > ctx.sizes[block]:
            return None
        return Placement(block, offset, gpa, size, "device", f"VGA chain-4 window of {idstr}")
    return None


def _refine(ctx: LayoutContext, placed: list[Placement]) -> list[Placement]:
    out = list(placed)
    if ctx.family == "isapc":
        if ctx.main and ctx.main not in ctx.overridden:
            out = punch(out, PC_ROM_START, ISA_BIOS_END)
            out += _pci_window(ctx, PC_ROM_START, ISA_BIOS_END - PC_ROM_START, "ISA ROM window")
            if _vga_claims_window(ctx):  # the VGA's memory-mapped I/O lies over RAM
                out = punch(out, SMRAM_WINDOW[0], sum(SMRAM_WINDOW))
                window = _vga_chain4(ctx)
                if window is not None:
                    out.append(window)
    else:
        names = ("mch",) if ctx.family == "q35" else ("I440FX", "i440FX")
        host = find_config(ctx.devices, *names)
        if host is None:
            ctx.notes.append(
                f"no {'/'.join(names)} section with its PCI configuration: PAM and SMRAM routing"
                " below 1 MiB not applied"
            )
        else:
            out = _chipset(ctx, host[0], host[1], out)
    add_bar_placements(ctx, out)
    isa_vga = any(i.rsplit("/", 1)[-1] == "vga" and pci_address(i) is None for i, _n, _f in ctx.devices)
    if isa_vga and "vga.vram" in ctx.sizes and "vga.vram" not in ctx.overridden:
        lfb = Placement(
            "vga.vram", 0, VBE_LFB_ADDRESS, ctx.sizes["vga.vram"], "device", "ISA VGA linear framebuffer"
        )
        add_if_free(out, lfb, ctx.notes)
    return out


FAMILIES = (
    MachineFamily(
        "pc",
        (re.compile(r"^pc-i440fx-(\d+)\.(\d+)"), re.compile(r"^pc-(\d+)\.(\d+)"), re.compile(r"^pc$")),
        "pc.ram",
        _place_ram,
        _firmware,
        implied_note=" (q35 would differ only from 0xb0000000 bytes of RAM)",
        refine=_refine,
    ),
    MachineFamily(
        "q35",
        (re.compile(r"^pc-q35-(\d+)\.(\d+)"), re.compile(r"^q35$")),
        "pc.ram",
        _place_ram,
        _firmware,
        refine=_refine,
    ),
    MachineFamily("isapc", (re.compile(r"^isapc$"),), "pc.ram", _place_ram, _firmware, refine=_refine),
)
