"""The top-level record loop: header, configuration, sections, commands, EOF, description.

``parse_stream(buf)`` reads a whole stream held in a buffer and returns a
:class:`~migstream.model.stream.ParsedStream`.  It never prints and never
writes files; every problem is a :class:`~migstream.errors.MigstreamError`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..decoders.builtin import decode_builtin
from ..decoders.ram import RamDecoder, RamOptions, RamState
from ..decoders.special import blob_decoder, live_decoder
from ..decoders.vmstate import NeedsSectionEnd, Struct, VmstateDecoder
from ..errors import DescriptionError, LimitError, MigstreamError, StreamFormatError, UnsupportedError
from ..model import records as rt
from ..model.ram import RamStats
from ..model.records import Configuration, Diagnostic, Record
from ..model.stream import DeviceState, LiveSection, ParsedStream, RamIndex
from ..wire.constants import (
    MIG_CMD_LENGTHS,
    QEMU_VM_FILE_MAGIC,
    QEMU_VM_FILE_VERSION,
    QEMU_VM_FILE_VERSION_COMPAT,
    MigCmd,
    RecordType,
)
from ..wire.reader import Reader, decode_name
from .vmdesc import VmDescription, locate_vmdesc

_SECTION_TYPE_NAMES = {
    RecordType.SECTION_START: rt.SECTION_START,
    RecordType.SECTION_PART: rt.SECTION_PART,
    RecordType.SECTION_END: rt.SECTION_END,
    RecordType.SECTION_FULL: rt.SECTION_FULL,
}
#: Longest machine type name accepted in the configuration.
MAX_MACHINE_NAME = 256
#: Most capabilities accepted in the configuration.
MAX_CAPABILITIES = 256
#: What a section idstr looks like (for telling a real footer from look-alike bytes).
_PRINTABLE_IDSTR = re.compile(rb"[\x20-\x7e]+")


@dataclass
class _Section:
    section_id: int
    name: str
    instance_id: int
    version_id: int
    summaries: list[tuple[str, int, Mapping[str, Any]]] = field(default_factory=list)
    decoded: bool = True


class _Parser:
    def __init__(self, buf: memoryview, desc_override: Mapping[str, Any] | None) -> None:
        self.buf = buf
        self.records: list[Record] = []
        self.diagnostics: list[Diagnostic] = []
        self.sections: dict[int, _Section] = {}
        self.section_order: list[int] = []
        self.devices: list[DeviceState] = []
        self.footers: bool | None = None
        self.configuration: Configuration | None = None
        self.vmdesc: VmDescription | None = None
        self.desc: Mapping[str, Any] | None = None
        self.device_descs: dict[tuple[str, int], Mapping[str, Any]] = {}
        self.ram_section_id: int | None = None
        self.eof_offset: int | None = None
        self.version = 0
        self.postcopy_advise: Mapping[str, Any] | None = None
        self.ram: RamState | None = None
        self._desc_override = desc_override

    # -- set-up ----------------------------------------------------------
    def _load_description(self) -> None:
        self.vmdesc = locate_vmdesc(self.buf)
        desc: Mapping[str, Any] | None = self._desc_override
        if desc is None and self.vmdesc is not None:
            desc = self.vmdesc.data
        if desc is None:
            return
        devices = desc.get("devices")
        if not isinstance(devices, list):
            raise DescriptionError("the VM description has no 'devices' list")
        for dev in devices:
            if not isinstance(dev, Mapping) or not isinstance(dev.get("name"), str):
                raise DescriptionError("a device entry of the VM description has no name")
            inst = dev.get("instance_id", 0)
            if not isinstance(inst, int):
                raise DescriptionError("a device entry has a non-integer instance_id", field=dev["name"])
            self.device_descs[(dev["name"], inst)] = dev
        self.desc = desc

    def _page_size(self) -> int:
        if self.desc is not None:
            ps = self.desc.get("page_size")
            if isinstance(ps, int) and not isinstance(ps, bool) and ps > 0:
                return ps
        if self.configuration is not None and self.configuration.target_page_bits is not None:
            return 1 << self.configuration.target_page_bits
        return 4096

    def _ram_state(self) -> RamState:
        if self.ram is None:
            caps = self.configuration.capabilities if self.configuration else ()
            advise = self.postcopy_advise or {}
            summary = advise.get("ram_pagesize_summary")
            opts = RamOptions(
                page_size=self._page_size(),
                ignore_shared="x-ignore-shared" in caps,
                mapped_ram="mapped-ram" in caps,
                postcopy_page_sizes=bool(advise) and summary is not None,
                postcopy_page_summary=summary if isinstance(summary, int) else None,
            )
            self.ram = RamState(opts)
        return self.ram

    # -- entry -------------------------------------------------------------
    def parse(self) -> ParsedStream:
        buf = self.buf
        r = Reader(buf)
        if len(buf) < 8:
            r.need(8, "the stream header")
        magic = r.be32("the stream magic")
        if magic != QEMU_VM_FILE_MAGIC:
            raise StreamFormatError(
                "not a QEMU migration stream",
                offset=0,
                expected="'QEVM' (51 45 56 4d)",
                found=bytes(buf[0:4]),
            )
        version = r.be32("the stream version")
        if version == QEMU_VM_FILE_VERSION_COMPAT:
            raise UnsupportedError(
                "stream version 2 is the obsolete pre-0.12 format, which no QEMU since 2009 reads",
                offset=4,
                expected=QEMU_VM_FILE_VERSION,
                found=version,
            )
        if version != QEMU_VM_FILE_VERSION:
            raise StreamFormatError(
                "unknown stream version", offset=4, expected=QEMU_VM_FILE_VERSION, found=version
            )
        self.version = version
        self.records.append(Record(0, rt.HEADER, 8, details={"version": version}))
        self._load_description()
        self._loop(r, depth=0)
        return self._result()

    def _result(self) -> ParsedStream:
        ram = self.ram or RamState(RamOptions(page_size=self._page_size()))
        discards = sum(1 for rec in self.records if rec.command == "POSTCOPY_RAM_DISCARD")
        stats = RamStats(**ram.counters, discards=discards)
        index = RamIndex(
            ram.options.page_size,
            tuple(ram.blocks),
            ram.runs,
            stats,
            self.ram_section_id,
            ram.options.ignore_shared,
            ram.options.mapped_ram,
        )
        lives = tuple(
            LiveSection(s.section_id, s.name, s.instance_id, s.version_id, tuple(s.summaries), s.decoded)
            for sid in self.section_order
            if (s := self.sections[sid]).summaries
        )
        return ParsedStream(
            size=len(self.buf),
            version=self.version,
            records=tuple(self.records),
            configuration=self.configuration,
            page_size=ram.options.page_size,
            footers=self.footers,
            vmdesc=self.desc,
            vmdesc_offset=self.vmdesc.offset if self.vmdesc else None,
            ram=index,
            devices=tuple(self.devices),
            live_sections=lives,
            section_order=tuple(self.section_order),
            section_names={sid: s.name for sid, s in self.sections.items()},
            diagnostics=tuple(self.diagnostics),
            eof_offset=self.eof_offset,
        )

    # -- the loop ------------------------------------------------------------
    def _loop(self, r: Reader, depth: int) -> None:
        while True:
            if depth and r.remaining == 0:
                return
            start = r.pos
            r.context = None
            if r.remaining == 0:
                raise StreamFormatError(
                    "stream ends without an EOF record",
                    offset=start,
                    expected="a record type byte",
                    found="end of data",
                )
            kind = r.u8("a record type")
            if kind == RecordType.EOF:
                self.records.append(Record(start, rt.EOF, r.pos, depth=depth))
                if depth:
                    self.diagnostics.append(
                        Diagnostic("warning", "EOF record inside a PACKAGED payload", start)
                    )
                    continue
                self.eof_offset = start
                self._after_eof(r)
                return
            if kind == RecordType.CONFIGURATION:
                self._configuration(r, start, depth)
            elif kind in _SECTION_TYPE_NAMES:
                self._section(r, start, RecordType(kind), depth)
            elif kind == RecordType.COMMAND:
                self._command(r, start, depth)
            elif kind == RecordType.VMDESCRIPTION:
                raise StreamFormatError("VM description before the EOF record", offset=start)
            else:
                raise StreamFormatError(
                    "unknown record type",
                    offset=start,
                    expected="EOF, SECTION_START/PART/END/FULL, CONFIGURATION or COMMAND",
                    found=f"{kind:#04x}",
                )

    def _after_eof(self, r: Reader) -> None:
        pos = r.pos
        if self.vmdesc is not None and self.vmdesc.offset == pos:
            self.records.append(
                Record(pos, rt.VMDESCRIPTION, self.vmdesc.end, details={"length": self.vmdesc.length})
            )
            pos = self.vmdesc.end
        elif self.vmdesc is not None:
            self.diagnostics.append(
                Diagnostic(
                    "warning",
                    f"the VM description found at {self.vmdesc.offset:#x} does not follow the EOF record",
                    pos,
                )
            )
        elif pos < len(self.buf) and self.buf[pos] == RecordType.VMDESCRIPTION:
            self.diagnostics.append(
                Diagnostic(
                    "warning",
                    "a VM description marker follows EOF, but its length or "
                    "JSON does not check out; it was ignored",
                    pos,
                )
            )
        rest = bytes(self.buf[pos : pos + 4096])
        if rest.strip(b"\0"):
            self.diagnostics.append(
                Diagnostic("note", f"{len(self.buf) - pos} bytes follow the end of the stream", pos)
            )

    # -- configuration -------------------------------------------------------
    def _configuration(self, r: Reader, start: int, depth: int) -> None:
        r.context = "configuration"
        n = r.be32("the machine name length")
        r.bounded_length(n, MAX_MACHINE_NAME, "the machine name")
        machine = decode_name(r.take(n))
        page_bits = None
        caps: list[str] = []
        uuid = None
        subs: list[str] = []
        desc_subs = {}
        if self.desc is not None:
            cdesc = self.desc.get("configuration")
            if isinstance(cdesc, Mapping):
                for sd in cdesc.get("subsections", []) or []:
                    if isinstance(sd, Mapping) and isinstance(sd.get("vmsd_name"), str):
                        desc_subs[sd["vmsd_name"]] = sd
        while r.peek_u8() == RecordType.SUBSECTION:
            save = r.pos
            r.u8()
            ln = r.u8("a subsection name length")
            if (
                ln < len("configuration/")
                or r.remaining < ln
                or bytes(r.buf[r.pos : r.pos + len("configuration/")]) != b"configuration/"
            ):
                r.pos = save
                break
            name = decode_name(r.take(ln))
            r.be32("a subsection version")
            subs.append(name)
            if name == "configuration/target-page-bits":
                page_bits = r.be32("target page bits")
                if not 8 <= page_bits <= 24:
                    raise StreamFormatError(
                        "implausible target page bits",
                        offset=r.pos - 4,
                        section="configuration",
                        expected="8..24",
                        found=page_bits,
                    )
            elif name == "configuration/capabilities":
                count = r.be32("the capability count")
                if count > MAX_CAPABILITIES:
                    raise LimitError(
                        "too many capabilities",
                        offset=r.pos - 4,
                        section="configuration",
                        expected=f"<= {MAX_CAPABILITIES}",
                        found=count,
                    )
                caps.extend(r.cstr8("a capability name") for _ in range(count))
            elif name == "configuration/uuid":
                raw = bytes(r.take(16, "the VM UUID"))
                h = raw.hex()
                uuid = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
            elif name in desc_subs:
                VmstateDecoder("configuration").decode_vmsd(r, desc_subs[name], name)
            else:
                raise UnsupportedError(
                    "unknown configuration subsection and no description of it",
                    offset=save,
                    section="configuration",
                    found=name,
                )
        self.configuration = Configuration(start, machine, page_bits, tuple(caps), uuid, tuple(subs))
        self.records.append(
            Record(start, rt.CONFIGURATION, r.pos, depth=depth, details=self.configuration.to_json())
        )

    # -- sections -------------------------------------------------------------
    def _section(self, r: Reader, start: int, kind: RecordType, depth: int) -> None:
        sid = r.be32("a section id")
        if kind in (RecordType.SECTION_START, RecordType.SECTION_FULL):
            name = r.cstr8("a section name")
            instance_id = r.be32("an instance id")
            version_id = r.be32("a version id")
            sec = self.sections.get(sid)
            if sec is None:
                sec = _Section(sid, name, instance_id, version_id)
                self.sections[sid] = sec
                self.section_order.append(sid)
            else:
                sec.name, sec.instance_id, sec.version_id = name, instance_id, version_id
        else:
            found = self.sections.get(sid)
            if found is None:
                raise StreamFormatError(
                    "section part/end for a section that never started",
                    offset=start,
                    field="section_id",
                    found=sid,
                )
            sec = found
            name, instance_id, version_id = sec.name, sec.instance_id, sec.version_id
        r.context = f"{name!r} (id {sid})"
        type_name = _SECTION_TYPE_NAMES[kind]
        payload = r.pos
        if name == "ram" and kind != RecordType.SECTION_FULL:
            self._ram_payload(r, sid, version_id)
        elif kind == RecordType.SECTION_FULL:
            self._device(r, start, sec, depth)
        else:
            decoder = live_decoder(name)
            summary = self._skip_unknown(r, sec, type_name) if decoder is None else decoder(r, type_name)
            sec.summaries.append((type_name, start, summary))
        footer = self._footer(r, sid)
        self.records.append(
            Record(
                start,
                type_name,
                r.pos,
                section_id=sid,
                name=name,
                instance_id=instance_id
                if kind in (RecordType.SECTION_START, RecordType.SECTION_FULL)
                else None,
                version_id=version_id
                if kind in (RecordType.SECTION_START, RecordType.SECTION_FULL)
                else None,
                depth=depth,
                footer_offset=footer,
                payload_offset=payload,
            )
        )

    def _ram_payload(self, r: Reader, sid: int, version_id: int) -> None:
        if version_id != 4:
            raise UnsupportedError(
                "only version 4 RAM sections exist since QEMU 0.13",
                offset=r.pos,
                section=r.context,
                expected=4,
                found=version_id,
            )
        if self.ram_section_id is None:
            self.ram_section_id = sid
        RamDecoder(self._ram_state()).read_section(r)

    def _device(self, r: Reader, start: int, sec: _Section, depth: int) -> None:
        desc = self.device_descs.get((sec.name, sec.instance_id))
        payload = r.pos
        state: Struct | None = None
        if desc is not None and self._desc_override is not None and self.footers:
            # A description from elsewhere may not match this stream: fall back to the footer.
            try:
                state = VmstateDecoder(r.context).decode_vmsd(r, desc)
                if r.peek_u8() != RecordType.SECTION_FOOTER:
                    raise StreamFormatError(
                        "the given description does not account for this section's bytes",
                        offset=r.pos,
                        section=r.context,
                    )
            except MigstreamError as exc:
                r.pos = payload
                self._scan_to_footer(r, sec)
                sec.decoded = False
                state = None
                self.diagnostics.append(
                    Diagnostic(
                        "warning",
                        f"{sec.name} (instance {sec.instance_id}): the given description does not fit "
                        f"this section ({exc.message}); skipped to its footer",
                        start,
                    )
                )
        elif desc is not None:
            try:
                state = VmstateDecoder(r.context).decode_vmsd(r, desc)
            except NeedsSectionEnd:
                if not self.footers:
                    raise
                r.pos = payload
                self._scan_to_footer(r, sec)
                end = r.pos
                r.pos = payload
                state = VmstateDecoder(r.context, end_hint=end).decode_vmsd(r, desc)
                self.diagnostics.append(
                    Diagnostic(
                        "note",
                        f"{sec.name}: a non-NULL pointer slot the description (QEMU < 10.0) describes as "
                        "NULL was sized from the section footer",
                        payload,
                    )
                )
        else:
            state = self._undescribed_device(r, start, sec)
        if state is not None:
            state.version = sec.version_id
        self.devices.append(
            DeviceState(
                sec.section_id,
                sec.name,
                sec.instance_id,
                sec.version_id,
                start,
                payload,
                r.pos - payload,
                _vmsd_name(desc),
                state,
                depth,
                _blob_summary(sec.name, Reader(r.buf, payload, r.pos), r.context),
            )
        )

    def _undescribed_device(self, r: Reader, start: int, sec: _Section) -> Struct | None:
        """A device section the description does not cover: find its end by its footer, and say so."""
        sizable = self.footers or (self.footers is None and self._footer_ahead(r, sec.section_id))
        if not sizable:
            if self.desc is not None:
                problem = "the VM description has no entry for this device section, and there is no footer"
            elif self.footers is False:
                problem = (
                    "device section cannot be sized: the stream has neither a VM description nor footers"
                )
            else:
                problem = "device section cannot be read without a VM description (pass one with --desc)"
            raise DescriptionError(problem, offset=start, section=r.context)
        payload = r.pos
        self._scan_to_footer(r, sec)
        sec.decoded = False
        if self.desc is not None:
            self.diagnostics.append(
                Diagnostic(
                    "warning",
                    f"{sec.name} (instance {sec.instance_id}): not in the VM description; "
                    f"{r.pos - payload} bytes skipped to its footer",
                    start,
                )
            )
        state = decode_builtin(r.buf, sec.name, sec.version_id, payload, r.pos, str(r.context))
        if state is not None:
            self.diagnostics.append(
                Diagnostic(
                    "note",
                    f"{sec.name} (instance {sec.instance_id}): no description; its leading fields were "
                    "decoded with the built-in x86-64 layout",
                    payload,
                )
            )
        return state

    def _skip_unknown(self, r: Reader, sec: _Section, type_name: str) -> dict[str, Any]:
        if self.footers is False:
            raise UnsupportedError(
                "no decoder for this live section, and the stream has no section footers to find its end",
                offset=r.pos,
                section=r.context,
            )
        start = r.pos
        self._scan_to_footer(r, sec)
        sec.decoded = False
        self.diagnostics.append(
            Diagnostic(
                "warning",
                f"live section {sec.name!r} has no decoder here; {r.pos - start} bytes skipped to its footer",
                start,
            )
        )
        return {"skipped_bytes": r.pos - start}

    def _footer_ahead(self, r: Reader, sid: int) -> bool:
        """Whether a footer for ``sid`` can be found ahead (used when footers are not yet known)."""
        save = r.pos
        try:
            self._scan_to_footer(r, self.sections[sid])
            return True
        except MigstreamError:
            return False
        finally:
            r.pos = save

    def _scan_to_footer(self, r: Reader, sec: _Section) -> None:
        """Move to the footer of ``sec``: the first ``0x7E + be32 id`` followed by a plausible record."""
        pattern = bytes([RecordType.SECTION_FOOTER]) + sec.section_id.to_bytes(4, "big")
        pos = r.pos
        while True:
            hit = _find(r.buf, pattern, pos, r.end)
            if hit < 0:
                raise StreamFormatError(
                    "no section footer found for this section",
                    offset=r.pos,
                    section=r.context,
                    expected=pattern.hex(" "),
                    found="end of data",
                )
            if self._plausible_next(r, hit + 5):
                r.pos = hit
                return
            pos = hit + 1

    def _plausible_next(self, r: Reader, pos: int) -> bool:
        if pos == r.end:
            return True
        if pos > r.end:
            return False
        b = r.buf[pos]
        if b == RecordType.EOF:
            return True
        if b in (RecordType.SECTION_START, RecordType.SECTION_FULL):
            if pos + 6 > r.end:
                return False
            n = r.buf[pos + 5]
            name = bytes(r.buf[pos + 6 : pos + 6 + n])
            return (
                n > 0
                and len(name) == n
                and _PRINTABLE_IDSTR.fullmatch(name) is not None
                and pos + 14 + n <= r.end
            )
        if b in (RecordType.SECTION_PART, RecordType.SECTION_END):
            if pos + 5 > r.end:
                return False
            return int.from_bytes(r.buf[pos + 1 : pos + 5], "big") in self.sections
        if b == RecordType.COMMAND:
            if pos + 5 > r.end:
                return False
            return int.from_bytes(r.buf[pos + 1 : pos + 3], "big") in MIG_CMD_LENGTHS
        return False

    def _footer(self, r: Reader, sid: int) -> int | None:
        nxt = r.peek_u8()
        if self.footers is None:
            self.footers = (
                nxt == RecordType.SECTION_FOOTER
                and r.remaining >= 5
                and int.from_bytes(r.buf[r.pos + 1 : r.pos + 5], "big") == sid
            )
        if not self.footers:
            return None
        at = r.pos
        if nxt != RecordType.SECTION_FOOTER:
            raise StreamFormatError(
                "section footer expected",
                offset=at,
                section=r.context,
                expected=f"{int(RecordType.SECTION_FOOTER):#04x}",
                found="end of data" if nxt is None else f"{nxt:#04x}",
            )
        r.u8()
        got = r.be32("the footer's section id")
        if got != sid:
            raise StreamFormatError(
                "section footer names another section", offset=at, section=r.context, expected=sid, found=got
            )
        return at

    # -- commands ---------------------------------------------------------------
    def _command(self, r: Reader, start: int, depth: int) -> None:
        r.context = "command"
        num = r.be16("a command number")
        length = r.be16("a command length")
        try:
            cmd = MigCmd(num)
        except ValueError:
            raise StreamFormatError(
                f"unknown command {num} (payload length {length})",
                offset=start,
                field="command",
                expected=f"1..{int(max(MigCmd))}",
                found=num,
            ) from None
        if cmd == MigCmd.INVALID:
            raise StreamFormatError("invalid command 0", offset=start, field="command", found=num)
        allowed = MIG_CMD_LENGTHS[cmd]
        if allowed is not None and length not in allowed:
            raise StreamFormatError(
                f"wrong length for command {cmd.name}",
                offset=start,
                field="length",
                expected=" or ".join(map(str, allowed)),
                found=length,
            )
        body = Reader(r.buf, r.pos, r.pos + length)
        body.need(length, f"the payload of command {cmd.name}")
        body.context = f"command {cmd.name}"
        details = _command_payload(cmd, body, length)
        r.pos += length
        if cmd == MigCmd.POSTCOPY_ADVISE and length:
            self.postcopy_advise = details
        self.records.append(Record(start, rt.COMMAND, r.pos, command=cmd.name, depth=depth, details=details))
        if cmd == MigCmd.PACKAGED:
            size = int(details["length"])
            r.need(size, "the PACKAGED payload")
            inner = Reader(r.buf, r.pos, r.pos + size)
            self._loop(inner, depth + 1)
            r.pos += size


def _command_payload(cmd: MigCmd, r: Reader, length: int) -> dict[str, Any]:
    if cmd == MigCmd.PING:
        return {"value": r.be32("the PING value")}
    if cmd == MigCmd.POSTCOPY_ADVISE:
        if length == 0:
            return {}
        return {
            "ram_pagesize_summary": r.be64("the page size summary"),
            "target_page_size": r.be64("the target page size"),
        }
    if cmd == MigCmd.PACKAGED:
        return {"length": r.be32("the package length")}
    if cmd == MigCmd.RECV_BITMAP:
        n = r.u8("a block name length")
        if n + 1 != length:
            raise StreamFormatError(
                "RECV_BITMAP length does not match its block name",
                offset=r.pos - 5,
                field="length",
                expected=n + 1,
                found=length,
            )
        return {"block": decode_name(r.take(n))}
    if cmd == MigCmd.POSTCOPY_RAM_DISCARD:
        if length < 3:
            raise StreamFormatError(
                "POSTCOPY_RAM_DISCARD too short",
                offset=r.pos - 4,
                field="length",
                expected=">= 3",
                found=length,
            )
        version = r.u8("the discard version")
        if version != 0:
            raise StreamFormatError(
                "unknown POSTCOPY_RAM_DISCARD version", offset=r.pos - 1, expected=0, found=version
            )
        n = r.u8("a block name length")
        name = decode_name(r.take(n, "the block name"))
        zero = r.u8("the name terminator")
        if zero != 0:
            raise StreamFormatError(
                "POSTCOPY_RAM_DISCARD block name is not NUL-terminated",
                offset=r.pos - 1,
                expected=0,
                found=zero,
            )
        if r.remaining % 16:
            raise StreamFormatError(
                "POSTCOPY_RAM_DISCARD ranges are not whole (start, length) pairs",
                offset=r.pos,
                field="length",
                expected=f"3 + {n} + 16*k",
                found=length,
            )
        ranges = [(r.be64("a range start"), r.be64("a range length")) for _ in range(r.remaining // 16)]
        return {"block": name, "ranges": [[a, b] for a, b in ranges]}
    return {}


_FIND_CHUNK = 1 << 20


def _find(buf: memoryview, pattern: bytes, start: int, end: int) -> int:
    """Position of ``pattern`` in ``buf[start:end]``, searched in bounded chunks; -1 if absent."""
    pos = start
    while pos < end:
        stop = min(end, pos + _FIND_CHUNK + len(pattern) - 1)
        hit = bytes(buf[pos:stop]).find(pattern)
        if hit >= 0:
            return pos + hit
        pos += _FIND_CHUNK
    return -1


def _blob_summary(name: str, r: Reader, context: str | None) -> Mapping[str, Any] | None:
    """What an old-style (opaque) device section holds, for the few whose layout is known."""
    decoder = blob_decoder(name)
    if decoder is None:
        return None
    r.context = context
    try:
        return decoder(r, rt.SECTION_FULL)
    except MigstreamError as exc:
        return {"error": str(exc)}


def _vmsd_name(desc: Mapping[str, Any] | None) -> str | None:
    if desc is None:
        return None
    v = desc.get("vmsd_name")
    return v if isinstance(v, str) else None


def parse_stream(buf: memoryview, desc: Mapping[str, Any] | None = None) -> ParsedStream:
    """Parse a whole stream held in ``buf`` (``desc``: a VM description to use instead of the stream's)."""
    try:
        return _Parser(buf, desc).parse()
    except RecursionError:
        raise LimitError("the stream nests records too deeply") from None
