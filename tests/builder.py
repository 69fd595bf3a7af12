"""Test-only builder of byte-exact QEMU migration streams.

:class:`StreamBuilder` appends top-level records to a byte buffer and logs each
one in the shape of the CLI contract (``migstream info --json``), so a test can
compare the parser's ``records`` / ``ram_blocks`` with what was written.  Every
method that writes something returns the byte offset of what it wrote.

Sections stay *open* after their header is written: payload helpers
(``ram_*``, ``block_*``, ``dirty_bitmap_*``, ``htab_*``, ``stattr_*``,
``vfio_*``, :meth:`StreamBuilder.raw`) append to the open section, and the
section's footer is written automatically when the next top-level record
starts (or on :meth:`StreamBuilder.close_section` / :meth:`StreamBuilder.data`).

:func:`encode_vmsd` encodes device state from a JSON-style description (the
vmdesc form, with ``size`` keys optional) and returns the wire bytes plus the
description completed with the exact ``size`` of every entry.

All wire constants are declared once here, named as QEMU names them.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JsonObj = dict[str, Any]

# --- file header ------------------------------------------------------------
QEMU_VM_FILE_MAGIC = 0x5145564D
QEMU_VM_FILE_VERSION_COMPAT = 0x00000002
QEMU_VM_FILE_VERSION = 0x00000003

# --- top-level record types ---------------------------------------------------
QEMU_VM_EOF = 0x00
QEMU_VM_SECTION_START = 0x01
QEMU_VM_SECTION_PART = 0x02
QEMU_VM_SECTION_END = 0x03
QEMU_VM_SECTION_FULL = 0x04
QEMU_VM_SUBSECTION = 0x05
QEMU_VM_VMDESCRIPTION = 0x06
QEMU_VM_CONFIGURATION = 0x07
QEMU_VM_COMMAND = 0x08
QEMU_VM_SECTION_FOOTER = 0x7E

SECTION_TYPE_NAMES = {
    QEMU_VM_SECTION_START: "SECTION_START",
    QEMU_VM_SECTION_PART: "SECTION_PART",
    QEMU_VM_SECTION_END: "SECTION_END",
    QEMU_VM_SECTION_FULL: "SECTION_FULL",
}

# --- commands -------------------------------------------------------------------
MIG_CMD_INVALID = 0
MIG_CMD_OPEN_RETURN_PATH = 1
MIG_CMD_PING = 2
MIG_CMD_POSTCOPY_ADVISE = 3
MIG_CMD_POSTCOPY_LISTEN = 4
MIG_CMD_POSTCOPY_RUN = 5
MIG_CMD_POSTCOPY_RAM_DISCARD = 6
MIG_CMD_PACKAGED = 7
MIG_CMD_ENABLE_COLO = 8
MIG_CMD_POSTCOPY_RESUME = 9
MIG_CMD_RECV_BITMAP = 10
MIG_CMD_SWITCHOVER_START = 11

MIG_CMD_NAMES = {
    MIG_CMD_INVALID: "INVALID",
    MIG_CMD_OPEN_RETURN_PATH: "OPEN_RETURN_PATH",
    MIG_CMD_PING: "PING",
    MIG_CMD_POSTCOPY_ADVISE: "POSTCOPY_ADVISE",
    MIG_CMD_POSTCOPY_LISTEN: "POSTCOPY_LISTEN",
    MIG_CMD_POSTCOPY_RUN: "POSTCOPY_RUN",
    MIG_CMD_POSTCOPY_RAM_DISCARD: "POSTCOPY_RAM_DISCARD",
    MIG_CMD_PACKAGED: "PACKAGED",
    MIG_CMD_ENABLE_COLO: "ENABLE_COLO",
    MIG_CMD_POSTCOPY_RESUME: "POSTCOPY_RESUME",
    MIG_CMD_RECV_BITMAP: "RECV_BITMAP",
    MIG_CMD_SWITCHOVER_START: "SWITCHOVER_START",
}

# Values QEMU puts in PING commands.
MIG_PING_AFTER_RETURN_PATH = 1
MIG_PING_BEFORE_PACKAGE = 2
MIG_PING_IN_PACKAGE = 3
MIG_PING_AFTER_PACKAGE = 4
MIG_PING_PACKAGE_LOADED = 0x42

# --- RAM ("ram", version 4) ---------------------------------------------------------
RAM_SAVE_FLAG_FULL = 0x01
RAM_SAVE_FLAG_ZERO = 0x02
RAM_SAVE_FLAG_MEM_SIZE = 0x04
RAM_SAVE_FLAG_PAGE = 0x08
RAM_SAVE_FLAG_EOS = 0x10
RAM_SAVE_FLAG_CONTINUE = 0x20
RAM_SAVE_FLAG_XBZRLE = 0x40
RAM_SAVE_FLAG_HOOK = 0x80
RAM_SAVE_FLAG_COMPRESS_PAGE = 0x100
RAM_SAVE_FLAG_MULTIFD_FLUSH = 0x200

ENCODING_FLAG_XBZRLE = 0x01
XBZRLE_MAX_RUN = 0x3FFF  # runs are ULEB128 limited to two bytes

MAPPED_RAM_HDR_VERSION = 1
MAPPED_RAM_HDR_SIZE = 28
MAPPED_RAM_FILE_OFFSET_ALIGNMENT = 0x100000

RAM_SECTION_NAME = "ram"
RAM_SECTION_VERSION = 4

# --- block migration ("block", version 1) -----------------------------------------------
BLK_MIG_FLAG_DEVICE_BLOCK = 0x01
BLK_MIG_FLAG_EOS = 0x02
BLK_MIG_FLAG_PROGRESS = 0x04
BLK_MIG_FLAG_ZERO_BLOCK = 0x08
BDRV_SECTOR_BITS = 9
BLK_MIG_BLOCK_SIZE = 1 << 20

# --- dirty bitmaps ("dirty-bitmap", version 1) ------------------------------------------------
DIRTY_BITMAP_MIG_FLAG_EOS = 0x01
DIRTY_BITMAP_MIG_FLAG_ZEROES = 0x02
DIRTY_BITMAP_MIG_FLAG_BITMAP_NAME = 0x04
DIRTY_BITMAP_MIG_FLAG_DEVICE_NAME = 0x08
DIRTY_BITMAP_MIG_FLAG_START = 0x10
DIRTY_BITMAP_MIG_FLAG_COMPLETE = 0x20
DIRTY_BITMAP_MIG_FLAG_BITS = 0x40
DIRTY_BITMAP_MIG_START_FLAG_ENABLED = 0x01
DIRTY_BITMAP_MIG_START_FLAG_PERSISTENT = 0x02

# --- pseries hash page table ("spapr/htab", version 1) ------------------------------------------
HASH_PTE_SIZE_64 = 16
HTAB_NO_HPT = 0xFFFFFFFF

# --- s390 storage attributes ("s390-storage_attributes", version 0) -----------------------------
STATTR_FLAG_EOS = 0x01
STATTR_FLAG_MORE = 0x02
STATTR_FLAG_ERROR = 0x04
STATTR_FLAG_DONE = 0x08

# --- VFIO ("<path>/vfio", version 1) --------------------------------------------------------
VFIO_MIG_FLAG_END_OF_STATE = 0xFFFFFFFFEF100001
VFIO_MIG_FLAG_DEV_CONFIG_STATE = 0xFFFFFFFFEF100002
VFIO_MIG_FLAG_DEV_SETUP_STATE = 0xFFFFFFFFEF100003
VFIO_MIG_FLAG_DEV_DATA_STATE = 0xFFFFFFFFEF100004
VFIO_MIG_FLAG_DEV_INIT_DATA_SENT = 0xFFFFFFFFEF100005

# --- vmstate ------------------------------------------------------------------------------
VMS_NULLPTR_MARKER = 0x30

# JSON type name -> (byte width, signed) for the integer-like VMStateInfo types.
VMSTATE_INT_TYPES: dict[str, tuple[int, bool]] = {
    "int8": (1, True),
    "uint8": (1, False),
    "int16": (2, True),
    "uint16": (2, False),
    "int32": (4, True),
    "uint32": (4, False),
    "int64": (8, True),
    "uint64": (8, False),
    "int32 equal": (4, True),
    "int32 le": (4, True),
    "uint8 equal": (1, False),
    "uint16 equal": (2, False),
    "uint32 equal": (4, False),
    "int64 equal": (8, False),
    "timer": (8, False),
}

# Record types of the CLI contract (others, e.g. footers, are not logged).
CONTRACT_TYPES = (
    "HEADER",
    "CONFIGURATION",
    "SECTION_START",
    "SECTION_PART",
    "SECTION_END",
    "SECTION_FULL",
    "COMMAND",
    "EOF",
    "VMDESCRIPTION",
)


# ---------------------------------------------------------------------------
# primitive encoders


def be16(v: int) -> bytes:
    return struct.pack(">H", v & 0xFFFF)


def be32(v: int) -> bytes:
    return struct.pack(">I", v & 0xFFFFFFFF)


def be64(v: int) -> bytes:
    return struct.pack(">Q", v & 0xFFFFFFFFFFFFFFFF)


def cstr8(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    if len(raw) > 255:
        raise ValueError(f"counted string longer than 255 bytes: {len(raw)}")
    return bytes([len(raw)]) + raw


def uleb128_2(v: int) -> bytes:
    """ULEB128 restricted to 1 or 2 bytes, as the XBZRLE runs use it."""
    if not 0 <= v <= XBZRLE_MAX_RUN:
        raise ValueError(f"XBZRLE run {v} does not fit two ULEB128 bytes")
    if v < 0x80:
        return bytes([v])
    return bytes([(v & 0x7F) | 0x80, v >> 7])


def xbzrle_encode(old: bytes, new: bytes) -> bytes:
    """Delta of ``new`` against ``old``: (zrun, nzrun, literal bytes) pairs.

    The trailing unchanged run is not encoded; every pair after the first has
    a non-zero zrun because a literal run only stops at an unchanged byte.
    """
    if len(old) != len(new):
        raise ValueError("XBZRLE pages differ in length")
    out = bytearray()
    i, n = 0, len(new)
    while i < n:
        start = i
        while i < n and old[i] == new[i]:
            i += 1
        if i == n:
            break
        zrun = i - start
        lit = i
        while i < n and old[i] != new[i]:
            i += 1
        out += uleb128_2(zrun) + uleb128_2(i - lit) + new[lit:i]
    return bytes(out)


def _uleb_read(data: bytes, pos: int) -> tuple[int, int]:
    b0 = data[pos]
    if b0 & 0x80:
        return (b0 & 0x7F) | (data[pos + 1] << 7), pos + 2
    return b0, pos + 1


def xbzrle_decode(old: bytes, enc: bytes) -> bytes:
    """Apply an XBZRLE delta (used to check :func:`xbzrle_encode`)."""
    page = bytearray(old)
    pos = d = 0
    while pos < len(enc):
        zrun, pos = _uleb_read(enc, pos)
        d += zrun
        nzrun, pos = _uleb_read(enc, pos)
        if nzrun == 0:
            raise ValueError("XBZRLE literal run of 0")
        page[d : d + nzrun] = enc[pos : pos + nzrun]
        pos += nzrun
        d += nzrun
    if len(page) != len(old):
        raise ValueError("XBZRLE delta overruns the page")
    return bytes(page)


# ---------------------------------------------------------------------------
# vmstate encoding driven by a JSON description


def _encode_scalar(ftype: str, value: Any, field: JsonObj) -> bytes:
    if ftype in VMSTATE_INT_TYPES:
        width, signed = VMSTATE_INT_TYPES[ftype]
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"field {field['name']}: {ftype} needs an int, got {value!r}")
        return int(value).to_bytes(width, "big", signed=signed and value < 0)
    if ftype == "bool":
        return b"\x01" if value else b"\x00"
    if ftype == "nullptr":
        if value is not None:
            raise TypeError(f"field {field['name']}: nullptr takes None")
        return bytes([VMS_NULLPTR_MARKER])
    if ftype == "capability":
        return cstr8(value)
    if ftype == "CPU_Double_U":
        if isinstance(value, float):
            return struct.pack(">d", value)
        return be64(int(value))
    if ftype == "unused_buffer" and value is None:
        return bytes(int(field["size"]))
    if not isinstance(value, (bytes, bytearray)):
        raise TypeError(f"field {field['name']}: {ftype} needs bytes, got {type(value).__name__}")
    if "size" in field and int(field["size"]) != len(value):
        raise ValueError(f"field {field['name']}: size {field['size']} but {len(value)} bytes given")
    return bytes(value)


def _encode_element(field: JsonObj, value: Any) -> tuple[bytes, JsonObj | None]:
    """One element of a field; for structs also the completed child description."""
    if field["type"] == "struct":
        wire, child = encode_vmsd(field["struct"], value)
        return wire, child
    return _encode_scalar(field["type"], value, field), None


def encode_vmsd(desc: JsonObj, values: dict[str, Any]) -> tuple[bytes, JsonObj]:
    """Encode ``values`` as the vmsd ``desc`` describes; returns (wire, described).

    ``desc`` has the vmdesc shape: ``vmsd_name``, ``version``, ``fields`` (each
    ``name``, ``type``, optional ``array_len`` / ``index``, ``struct`` for
    ``type == "struct"``, ``size`` required only for buffer-like types) and
    optional ``subsections`` (each a vmsd).  Values: a field that appears once
    without ``array_len``/``index`` takes ``values[name]``; otherwise
    ``values[name]`` is a list consumed in order by the entries of that name
    (``array_len`` entries take that many elements).  Structs take a dict,
    ``nullptr`` takes ``None``.  The values of subsection ``S`` are
    ``values[S["vmsd_name"]]``; a subsection whose values are missing is not
    sent (its ``needed`` test is false) and not described.
    """
    out = bytearray()
    fields_out: list[JsonObj] = []
    counts: dict[str, int] = {}
    for f in desc["fields"]:
        counts[f["name"]] = counts.get(f["name"], 0) + 1
    cursor: dict[str, int] = {}
    for f in desc["fields"]:
        name = f["name"]
        listy = counts[name] > 1 or "array_len" in f or "index" in f
        if listy:
            seq = values[name]
            pos = cursor.get(name, 0)
            n = int(f.get("array_len", 1))
            elems = list(seq[pos : pos + n])
            if len(elems) != n:
                raise ValueError(f"field {name}: needs {n} more values at index {pos}")
            cursor[name] = pos + n
        else:
            elems = [values[name]]
        first_size = 0
        child_desc: JsonObj | None = None
        for k, v in enumerate(elems):
            wire, child = _encode_element(f, v)
            if k == 0:
                first_size, child_desc = len(wire), child
            out += wire
        entry: JsonObj = {"name": name}
        if "array_len" in f:
            entry["array_len"] = f["array_len"]
        if "index" in f:
            entry["index"] = f["index"]
        entry["type"] = f["type"]
        if child_desc is not None:
            entry["struct"] = child_desc
        entry["size"] = first_size
        fields_out.append(entry)
    described: JsonObj = {
        "vmsd_name": desc["vmsd_name"],
        "version": desc["version"],
        "fields": fields_out,
    }
    subs_out: list[JsonObj] = []
    for sub in desc.get("subsections", []):
        sname = sub["vmsd_name"]
        if sname not in values:
            continue
        wire, sub_desc = encode_vmsd(sub, values[sname])
        out += bytes([QEMU_VM_SUBSECTION]) + cstr8(sname) + be32(int(sub["version"])) + wire
        subs_out.append(sub_desc)
    if subs_out:
        described["subsections"] = subs_out
    return bytes(out), described


def device_entry(name: str, instance_id: int, described: JsonObj) -> JsonObj:
    """The vmdesc ``devices`` entry of a FULL section (key order as QEMU writes it)."""
    return {"name": name, "instance_id": instance_id, **described}


def oldstyle_entry(name: str, instance_id: int, size: int) -> JsonObj:
    """The vmdesc entry of an old-style (opaque blob) FULL section."""
    return {
        "name": name,
        "instance_id": instance_id,
        "size": size,
        "fields": [{"name": "data", "size": size, "type": "buffer"}],
    }


CONFIGURATION_DESC: JsonObj = {
    "vmsd_name": "configuration",
    "version": 1,
    "fields": [
        {"name": "len", "type": "uint32"},
        {"name": "name", "type": "buffer"},
    ],
    "subsections": [
        {
            "vmsd_name": "configuration/target-page-bits",
            "version": 1,
            "fields": [{"name": "target_page_bits", "type": "uint32"}],
        },
        {
            "vmsd_name": "configuration/capabilities",
            "version": 1,
            "fields": [
                {"name": "caps_count", "type": "uint32"},
                {"name": "capabilities", "type": "capability"},
            ],
        },
        {
            "vmsd_name": "configuration/uuid",
            "version": 1,
            "fields": [{"name": "uuid.data", "type": "uint8", "array_len": 16}],
        },
    ],
}


def ram_pattern_chunks(
    page_size: int,
    first_page: int,
    npages: int,
    data_every: int,
    page: bytes,
    fill: int = 0,
    chunk_pages: int = 1 << 16,
) -> Iterable[bytes]:
    """CONTINUE records for pages ``first_page ..`` of the current block, in large chunks.

    ``data_every`` k >= 1: in each group of k pages the last one is a PAGE record
    (``page`` with its page number stamped in its first 8 bytes), the others ZERO
    records with ``fill``; k = 0: ZERO records only.  Vectorised (numpy), for
    streams of millions of records.  ``first_page`` and ``npages`` are multiples of k.
    """
    import numpy as np

    k = max(data_every, 1)
    if first_page % k or npages % k or len(page) != page_size:
        raise ValueError("the pattern covers whole groups of k pages, and pages have page_size bytes")
    zeros = k - 1 if data_every else 1  # ZERO records per group
    datas = 1 if data_every else 0
    group = zeros * 9 + datas * (8 + page_size)
    per_chunk = max(chunk_pages // k, 1)
    groups_total = npages // k
    pattern = np.frombuffer(page, dtype=np.uint8)
    done = 0
    while done < groups_total:
        n = min(per_chunk, groups_total - done)
        arr = np.empty((n, group), dtype=np.uint8)
        first = first_page + done * k
        base = (np.arange(n, dtype=np.uint64) * np.uint64(k) + np.uint64(first)) * np.uint64(page_size)
        cont = np.uint64(RAM_SAVE_FLAG_CONTINUE)
        for j in range(zeros):
            words = (base + np.uint64(j * page_size)) | np.uint64(RAM_SAVE_FLAG_ZERO) | cont
            arr[:, j * 9 : j * 9 + 8] = words.astype(">u8").view(np.uint8).reshape(n, 8)
            arr[:, j * 9 + 8] = fill
        if datas:
            at = zeros * 9
            addr = base + np.uint64((k - 1) * page_size)
            words = addr | np.uint64(RAM_SAVE_FLAG_PAGE) | cont
            arr[:, at : at + 8] = words.astype(">u8").view(np.uint8).reshape(n, 8)
            arr[:, at + 8 :] = pattern
            if page_size >= 8:
                stamp = (addr // np.uint64(page_size)).astype(">u8").view(np.uint8).reshape(n, 8)
                arr[:, at + 8 : at + 16] = stamp
        yield arr.tobytes()
        done += n


# ---------------------------------------------------------------------------
# the builder


@dataclass(frozen=True)
class RamBlock:
    """One entry of the MEM_SIZE block list."""

    name: str
    used_length: int
    page_size: int | None = None  # postcopy hugepage blocks only
    mr_addr: int | None = None  # x-ignore-shared
    ignored: int | None = None  # the QEMU 4.0-only byte after mr_addr
    mapped_ram: bool = False


@dataclass
class MappedRamLayout:
    bitmap_offset: int
    pages_offset: int
    pages: int


@dataclass
class _OpenSection:
    section_id: int
    footer: bool | int | None


class StreamBuilder:
    """Append-only writer of a migration stream that logs every record."""

    def __init__(self, *, page_size: int = 4096, footers: bool = True) -> None:
        self.page_size = page_size
        self.footers = footers
        self.buf = bytearray()
        self.records: list[JsonObj] = []
        self.footer_offsets: list[int] = []
        self.ram_blocks: list[JsonObj] = []
        self.devices: list[JsonObj] = []
        self.config_desc: JsonObj | None = None
        # guest memory as last written: block -> page offset -> bytes
        self.memory: dict[str, dict[int, bytes]] = {}
        self.mapped_ram: dict[str, MappedRamLayout] = {}
        self.mapped_ram_alignment = MAPPED_RAM_FILE_OFFSET_ALIGNMENT
        self._section_names: dict[int, str] = {}
        self._open: _OpenSection | None = None
        self._last_block: str | None = None
        self._bitmap_names: tuple[str | None, str | None] = (None, None)

    # -- plumbing -------------------------------------------------------------

    @property
    def offset(self) -> int:
        """Where the next byte will go."""
        return len(self.buf)

    def _put(self, data: bytes) -> int:
        off = len(self.buf)
        self.buf += data
        return off

    def _log(self, rtype: str, offset: int, **extra: Any) -> None:
        self.records.append({"type": rtype, "offset": offset, **extra})

    def _top(self) -> int:
        """Start a top-level record: close the open section first."""
        self.close_section()
        return len(self.buf)

    def raw(self, data: bytes) -> int:
        """Append arbitrary bytes (inside the open section, if any)."""
        return self._put(data)

    def padding(self, n: int, byte: int = 0) -> int:
        """Trailing bytes after the stream (not a record)."""
        self.close_section()
        return self._put(bytes([byte]) * n)

    def close_section(self) -> int | None:
        """Write the open section's footer (if it has one); returns its offset."""
        sec, self._open = self._open, None
        if sec is None:
            return None
        footer = self.footers if sec.footer is None else sec.footer
        if footer is False:
            return None
        sid = sec.section_id if footer is True else int(footer)
        off = self._put(bytes([QEMU_VM_SECTION_FOOTER]) + be32(sid))
        self.footer_offsets.append(off)
        return off

    def data(self) -> bytes:
        self.close_section()
        return bytes(self.buf)

    def write(self, path: Path | str) -> Path:
        p = Path(path)
        p.write_bytes(self.data())
        return p

    def expected_info(self) -> JsonObj:
        """What ``migstream info --json`` must report (contract keys only)."""
        self.close_section()
        return {"records": [dict(r) for r in self.records], "ram_blocks": [dict(b) for b in self.ram_blocks]}

    # -- header, configuration, EOF, vmdesc --------------------------------------

    def header(self, version: int = QEMU_VM_FILE_VERSION, magic: int = QEMU_VM_FILE_MAGIC) -> int:
        off = self._top()
        self._put(be32(magic) + be32(version))
        self._log("HEADER", off)
        return off

    def configuration(
        self,
        machine: str,
        *,
        target_page_bits: int | None = None,
        capabilities: Sequence[str] = (),
        uuid: bytes | None = None,
    ) -> int:
        """CONFIGURATION record; also keeps its vmdesc description in ``config_desc``."""
        name = machine.encode()
        values: dict[str, Any] = {"len": len(name), "name": name}
        desc = json.loads(json.dumps(CONFIGURATION_DESC))
        desc["fields"][1]["size"] = len(name)
        if target_page_bits is not None:
            values["configuration/target-page-bits"] = {"target_page_bits": target_page_bits}
        if capabilities:
            caps_field = desc["subsections"][1]["fields"][1]
            caps: Any
            if len(capabilities) > 1:
                caps_field["array_len"] = len(capabilities)
                caps = list(capabilities)
            else:
                caps = capabilities[0]
            values["configuration/capabilities"] = {"caps_count": len(capabilities), "capabilities": caps}
        if uuid is not None:
            if len(uuid) != 16:
                raise ValueError("a UUID has 16 bytes")
            values["configuration/uuid"] = {"uuid.data": list(uuid)}
        wire, described = encode_vmsd(desc, values)
        # the wire starts with the be32 length and the name, exactly the two fields
        off = self._top()
        self._put(bytes([QEMU_VM_CONFIGURATION]) + wire)
        self.config_desc = described
        self._log("CONFIGURATION", off)
        return off

    def eof(self) -> int:
        off = self._top()
        self._put(bytes([QEMU_VM_EOF]))
        self._log("EOF", off)
        return off

    def vmdesc_json(self, *, configuration: bool = True) -> JsonObj:
        """The vmdesc object for what was written so far."""
        obj: JsonObj = {}
        if configuration and self.config_desc is not None:
            obj["configuration"] = self.config_desc
        obj["page_size"] = self.page_size
        obj["devices"] = list(self.devices)
        return obj

    def vmdescription(
        self,
        desc: JsonObj | None = None,
        *,
        raw_json: bytes | None = None,
        configuration: bool = True,
        padding: int = 0,
    ) -> int:
        """VMDESCRIPTION record (default JSON: :meth:`vmdesc_json`), then ``padding`` zero bytes."""
        if raw_json is None:
            raw_json = json.dumps(
                desc if desc is not None else self.vmdesc_json(configuration=configuration)
            ).encode()
        off = self._top()
        self._put(bytes([QEMU_VM_VMDESCRIPTION]) + be32(len(raw_json)) + raw_json)
        self._log("VMDESCRIPTION", off)
        if padding:
            self._put(bytes(padding))
        return off

    # -- sections -------------------------------------------------------------------

    def _section_header(
        self,
        stype: int,
        section_id: int,
        name: str | None,
        instance_id: int,
        version_id: int,
        footer: bool | int | None,
    ) -> int:
        off = self._top()
        head = bytes([stype]) + be32(section_id)
        extra: dict[str, Any] = {"section_id": section_id}
        if stype in (QEMU_VM_SECTION_START, QEMU_VM_SECTION_FULL):
            assert name is not None
            head += cstr8(name) + be32(instance_id) + be32(version_id)
            self._section_names[section_id] = name
            extra.update(name=name, instance_id=instance_id, version_id=version_id)
        else:
            known = self._section_names.get(section_id)
            if known is not None:
                extra["name"] = known
        self._put(head)
        self._log(SECTION_TYPE_NAMES[stype], off, **extra)
        self._open = _OpenSection(section_id, footer)
        return off

    def section_start(
        self,
        section_id: int,
        name: str,
        instance_id: int = 0,
        version_id: int = 1,
        body: bytes = b"",
        *,
        footer: bool | int | None = None,
    ) -> int:
        """SECTION_START; ``footer``: None = builder default, False = none, True, or an explicit id."""
        off = self._section_header(QEMU_VM_SECTION_START, section_id, name, instance_id, version_id, footer)
        self._put(body)
        return off

    def section_part(self, section_id: int, body: bytes = b"", *, footer: bool | int | None = None) -> int:
        off = self._section_header(QEMU_VM_SECTION_PART, section_id, None, 0, 0, footer)
        self._put(body)
        return off

    def section_end(self, section_id: int, body: bytes = b"", *, footer: bool | int | None = None) -> int:
        off = self._section_header(QEMU_VM_SECTION_END, section_id, None, 0, 0, footer)
        self._put(body)
        return off

    def section_full(
        self,
        section_id: int,
        name: str,
        instance_id: int = 0,
        version_id: int = 1,
        body: bytes = b"",
        *,
        footer: bool | int | None = None,
        describe: JsonObj | None = None,
    ) -> int:
        """SECTION_FULL with an opaque body; ``describe`` is appended to the vmdesc devices."""
        off = self._section_header(QEMU_VM_SECTION_FULL, section_id, name, instance_id, version_id, footer)
        self._put(body)
        if describe is not None:
            self.devices.append(describe)
        return off

    def device(
        self,
        section_id: int,
        name: str,
        instance_id: int,
        desc: JsonObj,
        values: dict[str, Any],
        *,
        footer: bool | int | None = None,
        describe: bool = True,
    ) -> int:
        """FULL section of a vmsd device encoded by :func:`encode_vmsd` (version = desc version)."""
        wire, described = encode_vmsd(desc, values)
        entry = device_entry(name, instance_id, described) if describe else None
        return self.section_full(
            section_id, name, instance_id, int(desc["version"]), wire, footer=footer, describe=entry
        )

    def subsection(self, name: str, version_id: int, body: bytes) -> int:
        """A raw subsection inside the open section."""
        return self._put(bytes([QEMU_VM_SUBSECTION]) + cstr8(name) + be32(version_id) + body)

    # -- commands -------------------------------------------------------------------

    def command(self, cmd: int, payload: bytes = b"", *, length: int | None = None) -> int:
        """Any COMMAND; ``length`` overrides the be16 length field (payload bytes unchanged)."""
        off = self._top()
        n = len(payload) if length is None else length
        self._put(bytes([QEMU_VM_COMMAND]) + be16(cmd) + be16(n) + payload)
        self._log("COMMAND", off, command=MIG_CMD_NAMES.get(cmd, f"UNKNOWN_{cmd}"))
        return off

    def open_return_path(self) -> int:
        return self.command(MIG_CMD_OPEN_RETURN_PATH)

    def ping(self, value: int = MIG_PING_AFTER_RETURN_PATH) -> int:
        return self.command(MIG_CMD_PING, be32(value))

    def postcopy_advise(
        self, ram_pagesize_summary: int | None = None, target_page_size: int | None = None
    ) -> int:
        """16-byte form; with no arguments the 0-byte (dirty-bitmap only) form."""
        if ram_pagesize_summary is None and target_page_size is None:
            return self.command(MIG_CMD_POSTCOPY_ADVISE)
        summary = self.page_size if ram_pagesize_summary is None else ram_pagesize_summary
        tps = self.page_size if target_page_size is None else target_page_size
        return self.command(MIG_CMD_POSTCOPY_ADVISE, be64(summary) + be64(tps))

    def postcopy_listen(self) -> int:
        return self.command(MIG_CMD_POSTCOPY_LISTEN)

    def postcopy_run(self) -> int:
        return self.command(MIG_CMD_POSTCOPY_RUN)

    def postcopy_ram_discard(self, block: str, ranges: Iterable[tuple[int, int]]) -> int:
        """(start, length) byte ranges relative to the block."""
        name = block.encode()
        payload = bytes([0, len(name)]) + name + b"\x00"
        for start, length in ranges:
            payload += be64(start) + be64(length)
        return self.command(MIG_CMD_POSTCOPY_RAM_DISCARD, payload)

    def packaged(self, inner: StreamBuilder | bytes) -> int:
        """PACKAGED command followed by the nested stream; its records are logged
        right after the PACKAGED record with outer-stream offsets."""
        data = inner.data() if isinstance(inner, StreamBuilder) else inner
        off = self.command(MIG_CMD_PACKAGED, be32(len(data)))
        base = self._put(data)
        if isinstance(inner, StreamBuilder):
            for rec in inner.records:
                self.records.append({**rec, "offset": rec["offset"] + base})
            self.footer_offsets += [o + base for o in inner.footer_offsets]
        return off

    def enable_colo(self) -> int:
        return self.command(MIG_CMD_ENABLE_COLO)

    def postcopy_resume(self) -> int:
        return self.command(MIG_CMD_POSTCOPY_RESUME)

    def recv_bitmap(self, block: str) -> int:
        return self.command(MIG_CMD_RECV_BITMAP, cstr8(block))

    def switchover_start(self) -> int:
        return self.command(MIG_CMD_SWITCHOVER_START)

    # -- RAM payload (inside an open "ram" section) ----------------------------------

    def ram_word(self, offset: int, flags: int) -> int:
        """A bare RAM record word ``offset | flags``."""
        return self._put(be64(offset | flags))

    def _ram_page_head(self, flag: int, block: str, offset: int, cont: bool | None) -> bytes:
        if offset % self.page_size:
            raise ValueError(f"RAM offset {offset:#x} is not page aligned")
        use_cont = (self._last_block == block) if cont is None else cont
        head = be64(offset | flag | (RAM_SAVE_FLAG_CONTINUE if use_cont else 0))
        if not use_cont:
            head += cstr8(block)
        self._last_block = block
        return head

    def _remember(self, block: str, offset: int, page: bytes) -> None:
        self.memory.setdefault(block, {})[offset] = page

    def page_of(self, block: str, offset: int) -> bytes:
        """Current content of a page as written so far (zeros if never sent)."""
        return self.memory.get(block, {}).get(offset, bytes(self.page_size))

    def ram_mem_size(self, blocks: Sequence[RamBlock], *, total: int | None = None) -> int:
        """MEM_SIZE record and its block list (mapped-ram blocks jump over their region)."""
        tot = sum(b.used_length for b in blocks) if total is None else total
        off = self.ram_word(tot, RAM_SAVE_FLAG_MEM_SIZE)
        for blk in blocks:
            self._put(cstr8(blk.name) + be64(blk.used_length))
            if blk.page_size is not None:
                self._put(be64(blk.page_size))
            if blk.mr_addr is not None:
                self._put(be64(blk.mr_addr))
            if blk.ignored is not None:
                self._put(bytes([blk.ignored]))
            self.ram_blocks.append({"name": blk.name, "size": blk.used_length})
            if blk.mapped_ram:
                self._mapped_ram_header(blk)
        return off

    def _mapped_ram_header(self, blk: RamBlock) -> None:
        pages = -(-blk.used_length // self.page_size)
        bitmap_offset = len(self.buf) + MAPPED_RAM_HDR_SIZE
        bitmap_size = -(-pages // 64) * 8
        align = self.mapped_ram_alignment
        pages_offset = -(-(bitmap_offset + bitmap_size) // align) * align
        self._put(
            be32(MAPPED_RAM_HDR_VERSION) + be64(self.page_size) + be64(bitmap_offset) + be64(pages_offset)
        )
        self.mapped_ram[blk.name] = MappedRamLayout(bitmap_offset, pages_offset, pages)
        end = pages_offset + blk.used_length
        self.buf += bytes(end - len(self.buf))

    def mapped_ram_page(self, block: str, offset: int, data: bytes) -> None:
        """Put a page at its fixed file offset and set its bitmap bit (little-endian longs)."""
        lay = self.mapped_ram[block]
        if len(data) != self.page_size or offset % self.page_size:
            raise ValueError("mapped-ram pages are whole, aligned pages")
        i = offset // self.page_size
        pos = lay.pages_offset + offset
        self.buf[pos : pos + self.page_size] = data
        self.buf[lay.bitmap_offset + i // 8] |= 1 << (i % 8)
        self._remember(block, offset, data)

    def ram_page(self, block: str, offset: int, data: bytes, *, cont: bool | None = None) -> int:
        """PAGE record; ``cont`` None = CONTINUE when the block is the previous one."""
        if len(data) != self.page_size:
            raise ValueError(f"a page has {self.page_size} bytes, got {len(data)}")
        off = self._put(self._ram_page_head(RAM_SAVE_FLAG_PAGE, block, offset, cont) + data)
        self._remember(block, offset, data)
        return off

    def ram_zero(self, block: str, offset: int, fill: int = 0, *, cont: bool | None = None) -> int:
        off = self._put(self._ram_page_head(RAM_SAVE_FLAG_ZERO, block, offset, cont) + bytes([fill]))
        self._remember(block, offset, bytes([fill]) * self.page_size)
        return off

    def ram_xbzrle(
        self,
        block: str,
        offset: int,
        data: bytes,
        *,
        prev: bytes | None = None,
        cont: bool | None = None,
    ) -> int:
        """XBZRLE record of ``data`` against ``prev`` (default: the page as last written)."""
        old = self.page_of(block, offset) if prev is None else prev
        enc = xbzrle_encode(old, data)
        if not enc:
            raise ValueError("unchanged page: QEMU sends nothing")
        if len(enc) > self.page_size:
            raise ValueError("delta larger than a page: QEMU sends a PAGE")
        head = self._ram_page_head(RAM_SAVE_FLAG_XBZRLE, block, offset, cont)
        off = self._put(head + bytes([ENCODING_FLAG_XBZRLE]) + be16(len(enc)) + enc)
        self._remember(block, offset, data)
        return off

    def ram_compress_page(
        self, block: str, offset: int, data: bytes, *, level: int = 1, cont: bool | None = None
    ) -> int:
        comp = zlib.compress(data, level)
        head = self._ram_page_head(RAM_SAVE_FLAG_COMPRESS_PAGE, block, offset, cont)
        off = self._put(head + be32(len(comp)) + comp)
        self._remember(block, offset, data)
        return off

    def ram_pattern(
        self, block: str, first_page: int, npages: int, data_every: int, page: bytes, fill: int = 0
    ) -> int:
        """Bulk ZERO/PAGE records continuing ``block`` (see :func:`ram_pattern_chunks`).

        The block must be the one the previous record named; the pages are not
        remembered in :attr:`memory` (these are the big streams of the benchmark).
        """
        if self._last_block != block:
            raise ValueError("ram_pattern continues the block of the previous record")
        off = len(self.buf)
        for chunk in ram_pattern_chunks(self.page_size, first_page, npages, data_every, page, fill):
            self._put(chunk)
        return off

    def ram_multifd_flush(self) -> int:
        return self.ram_word(0, RAM_SAVE_FLAG_MULTIFD_FLUSH)

    def ram_hook(self) -> int:
        return self.ram_word(0, RAM_SAVE_FLAG_HOOK)

    def ram_eos(self) -> int:
        return self.ram_word(0, RAM_SAVE_FLAG_EOS)

    def ram_start(self, section_id: int, blocks: Sequence[RamBlock], *, multifd_flush: bool = False) -> int:
        """START section of "ram": MEM_SIZE list, [MULTIFD_FLUSH], EOS."""
        off = self.section_start(section_id, RAM_SECTION_NAME, 0, RAM_SECTION_VERSION)
        self.ram_mem_size(blocks)
        if multifd_flush:
            self.ram_multifd_flush()
        self.ram_eos()
        return off

    # -- block migration ----------------------------------------------------------------

    def block_chunk(self, device: str, sector: int, data: bytes | None) -> int:
        """DEVICE_BLOCK chunk: 1 MiB of data, or ZERO_BLOCK when ``data`` is None."""
        flags = BLK_MIG_FLAG_DEVICE_BLOCK
        if data is None:
            flags |= BLK_MIG_FLAG_ZERO_BLOCK
            body = b""
        else:
            if len(data) != BLK_MIG_BLOCK_SIZE:
                raise ValueError("block chunks are always 1 MiB on the wire")
            body = data
        return self._put(be64((sector << BDRV_SECTOR_BITS) | flags) + cstr8(device) + body)

    def block_progress(self, percent: int) -> int:
        return self._put(be64((percent << BDRV_SECTOR_BITS) | BLK_MIG_FLAG_PROGRESS))

    def block_eos(self) -> int:
        return self._put(be64(BLK_MIG_FLAG_EOS))

    # -- dirty bitmaps --------------------------------------------------------------------

    def _bitmap_head(self, flags: int, node: str | None, bitmap: str | None) -> bytes:
        last_node, last_bitmap = self._bitmap_names
        names = b""
        if node is not None and node != last_node:
            flags |= DIRTY_BITMAP_MIG_FLAG_DEVICE_NAME
            names += cstr8(node)
            last_node = node
        if bitmap is not None and bitmap != last_bitmap:
            flags |= DIRTY_BITMAP_MIG_FLAG_BITMAP_NAME
            names += cstr8(bitmap)
            last_bitmap = bitmap
        self._bitmap_names = (last_node, last_bitmap)
        return bytes([flags]) + names

    def dirty_bitmap_start(
        self,
        node: str,
        bitmap: str,
        granularity: int = 65536,
        flags: int = DIRTY_BITMAP_MIG_START_FLAG_ENABLED | DIRTY_BITMAP_MIG_START_FLAG_PERSISTENT,
    ) -> int:
        head = self._bitmap_head(DIRTY_BITMAP_MIG_FLAG_START, node, bitmap)
        return self._put(head + be32(granularity) + bytes([flags]))

    def dirty_bitmap_bits(
        self, node: str, bitmap: str, first_sector: int, nr_sectors: int, data: bytes | None
    ) -> int:
        """BITS chunk; ``data`` None = ZEROES (no data), else the LE bitmap words."""
        flags = DIRTY_BITMAP_MIG_FLAG_BITS | (DIRTY_BITMAP_MIG_FLAG_ZEROES if data is None else 0)
        head = self._bitmap_head(flags, node, bitmap)
        body = be64(first_sector) + be32(nr_sectors)
        if data is not None:
            body += be64(len(data)) + data
        return self._put(head + body)

    def dirty_bitmap_complete(self, node: str, bitmap: str) -> int:
        return self._put(self._bitmap_head(DIRTY_BITMAP_MIG_FLAG_COMPLETE, node, bitmap))

    def dirty_bitmap_eos(self) -> int:
        return self._put(bytes([DIRTY_BITMAP_MIG_FLAG_EOS]))

    # -- spapr/htab --------------------------------------------------------------------------

    def htab_start_payload(self, htab_shift: int) -> int:
        return self._put(be32(htab_shift))

    def htab_part_header(self, no_hpt: bool = False) -> int:
        return self._put(be32(HTAB_NO_HPT if no_hpt else 0))

    def htab_chunk(self, index: int, valid: Sequence[bytes], n_invalid: int = 0) -> int:
        for pte in valid:
            if len(pte) != HASH_PTE_SIZE_64:
                raise ValueError("an HPTE has 16 bytes")
        return self._put(be32(index) + be16(len(valid)) + be16(n_invalid) + b"".join(valid))

    def htab_end_marker(self) -> int:
        return self._put(be32(0) + be16(0) + be16(0))

    # -- s390 storage attributes ---------------------------------------------------------------

    def stattr_more(self, gfn: int, attrs: bytes) -> int:
        return self._put(be64((gfn << 12) | STATTR_FLAG_MORE) + be64(len(attrs)) + attrs)

    def stattr_done(self) -> int:
        return self._put(be64(STATTR_FLAG_DONE))

    def stattr_eos(self) -> int:
        return self._put(be64(STATTR_FLAG_EOS))

    # -- VFIO ---------------------------------------------------------------------------------

    def vfio_tag(self, tag: int) -> int:
        return self._put(be64(tag))

    def vfio_data(self, data: bytes) -> int:
        return self._put(be64(VFIO_MIG_FLAG_DEV_DATA_STATE) + be64(len(data)) + data)

    def vfio_config(self, data: bytes) -> int:
        return self._put(be64(VFIO_MIG_FLAG_DEV_CONFIG_STATE) + data + be64(VFIO_MIG_FLAG_END_OF_STATE))

    # -- Proxmox pbs-state -------------------------------------------------------------------

    def pbs_state_payload(self, data: bytes) -> int:
        return self._put(be64(len(data)) + data)


# -- records from ready-made payloads (nothing remembered: for large or many pages) ------------


def ram_xbzrle_delta(
    b: StreamBuilder, block: str, offset: int, enc: bytes, *, cont: bool | None = None
) -> int:
    """An XBZRLE record carrying the encoded delta ``enc`` as it is."""
    head = b._ram_page_head(RAM_SAVE_FLAG_XBZRLE, block, offset, cont)
    return b.raw(head + bytes([ENCODING_FLAG_XBZRLE]) + be16(len(enc)) + enc)


def ram_compressed(
    b: StreamBuilder, block: str, offset: int, comp: bytes, *, cont: bool | None = None
) -> int:
    """A COMPRESS_PAGE record carrying the zlib data ``comp`` as it is."""
    head = b._ram_page_head(RAM_SAVE_FLAG_COMPRESS_PAGE, block, offset, cont)
    return b.raw(head + be32(len(comp)) + comp)


# -- large sparse RAM, made a chunk at a time ---------------------------------------------


def pattern_pages(idx: Any, page_size: int = 4096) -> Any:
    """The content :func:`sparse_ram_records` gives the pages of index array ``idx``: an
    (len(idx), page_size) uint8 array, every byte non-zero, a page's first 8 bytes its index + 1."""
    import numpy as np

    idx = np.asarray(idx, dtype=np.int64)
    row = (np.arange(page_size, dtype=np.int64) * 31 % 251).astype(np.uint16)
    pages = ((row[None, :] + (idx % 251).astype(np.uint16)[:, None]) % 251 + 1).astype(np.uint8)
    pages[:, :8] = (idx + 1).astype("<u8").view(np.uint8).reshape(len(idx), 8)
    return pages


def sparse_ram_records(
    first_page: int, npages: int, every: int, page_size: int = 4096, *, chunk_pages: int = 1 << 16
) -> Iterable[bytes]:
    """Records of pages ``first_page..first_page+npages-1`` of the current block, all with CONTINUE,
    as QEMU streams a block in order: page i is a PAGE record (content :func:`pattern_pages`) when
    ``i % every == every - 1``, otherwise a ZERO record (fill 0).  Yields chunks of bytes."""
    import numpy as np

    zero_word = RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_CONTINUE
    page_word = RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_CONTINUE
    end = first_page + npages
    pos = first_page
    while pos < end:
        if pos % every == 0 and end - pos >= every:
            # Whole groups of ``every`` pages share one layout: fill it column by column.
            groups = min((end - pos) // every, max(1, chunk_pages // every))
            zl = 9 * (every - 1)
            out = np.zeros((groups, zl + 8 + page_size), dtype=np.uint8)
            idx = pos + np.arange(groups * every, dtype=np.int64).reshape(groups, every)
            zw = (idx[:, :-1] * page_size) | zero_word
            out[:, :zl].reshape(groups, every - 1, 9)[:, :, :8] = (
                zw.astype(">u8").view(np.uint8).reshape(groups, every - 1, 8)
            )
            pw = (idx[:, -1] * page_size) | page_word
            out[:, zl : zl + 8] = pw.astype(">u8").view(np.uint8).reshape(groups, 8)
            out[:, zl + 8 :] = pattern_pages(idx[:, -1], page_size)
            yield out.tobytes()
            pos += groups * every
            continue
        stop = min(end, pos + chunk_pages, (pos // every + 1) * every)
        idx = np.arange(pos, stop, dtype=np.int64)
        data = idx % every == every - 1
        sizes = np.where(data, 8 + page_size, 9)
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        out = np.zeros(int(sizes.sum()), dtype=np.uint8)
        words = (idx * page_size) | np.where(data, page_word, zero_word)
        out[starts[:, None] + np.arange(8)] = words.astype(">u8").view(np.uint8).reshape(-1, 8)
        d = np.flatnonzero(data)
        for k in range(0, len(d), 1024):
            part = d[k : k + 1024]
            out[(starts[part] + 8)[:, None] + np.arange(page_size)] = pattern_pages(idx[part], page_size)
        yield out.tobytes()
        pos = stop
