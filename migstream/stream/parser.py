"""The record loop: header, configuration, sections, commands, EOF, description.

QEMU: migration/savevm.c (qemu_loadvm_state, qemu_loadvm_state_main).
``parse_stream(buf)`` reads a whole stream held in a buffer and returns a
:class:`~migstream.stream.model.ParsedStream`.  It never prints and never
writes files; every problem is a :class:`~migstream.errors.MigstreamError`.
A stream that ends early is not an error here: the result holds every record
read up to the cut, and says where and inside what the stream ends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from migstream.errors import LimitError, MigstreamError, StreamFormatError, TruncatedError, UnsupportedError
from migstream.ram.model import RamBlock, RamIndex, RamStats, RunTable
from migstream.ram.records import RamDecoder, RamOptions, RamState
from migstream.sections import live_decoder
from migstream.stream import records as rt
from migstream.stream.commands import read_command
from migstream.stream.configuration import read_configuration
from migstream.stream.devices import DeviceSections, SectionEntry, UnsizableSection, index_descriptions
from migstream.stream.footers import footer_follows, read_footer, scan_to_footer
from migstream.stream.model import DeviceState, LiveSection, ParsedStream
from migstream.stream.records import Configuration, Diagnostic, Record
from migstream.stream.vmdesc import VmDescription, locate_vmdesc, read_trailer
from migstream.wire.constants import (
    QEMU_VM_FILE_MAGIC,
    QEMU_VM_FILE_VERSION,
    QEMU_VM_FILE_VERSION_COMPAT,
    MigCmd,
    RecordType,
)
from migstream.wire.reader import Reader, Window

_SECTION_TYPE_NAMES = {
    RecordType.SECTION_START: rt.SECTION_START,
    RecordType.SECTION_PART: rt.SECTION_PART,
    RecordType.SECTION_END: rt.SECTION_END,
    RecordType.SECTION_FULL: rt.SECTION_FULL,
}
_HEADER_TYPES = (RecordType.SECTION_START, RecordType.SECTION_FULL)


class RamSink(Protocol):
    """Takes the pages of a one-pass stream while their bytes are at hand (see ``ram.stage``)."""

    def apply(
        self, page_size: int, blocks: Sequence[RamBlock], runs: RunTable, buffer: memoryview
    ) -> None: ...

    def discard(self, name: str, ranges: Sequence[Sequence[int]]) -> None: ...


class _Parser:
    def __init__(
        self,
        buf: memoryview,
        desc_override: Mapping[str, Any] | None,
        window: Window | None = None,
        ram_sink: RamSink | None = None,
    ) -> None:
        self.buf = buf
        self.window = window
        self.ram_sink = ram_sink
        self.reader: Reader | None = None
        self.records: list[Record] = []
        self.diagnostics: list[Diagnostic] = []
        self.sections: dict[int, SectionEntry] = {}
        self.section_order: list[int] = []
        self.devices: list[DeviceState] = []
        self.footers: bool | None = None
        self.configuration: Configuration | None = None
        # A one-pass stream shows its description only at its end (see _describe_devices).
        self.vmdesc: VmDescription | None = None if window is not None else locate_vmdesc(buf)
        self.desc: Mapping[str, Any] | None = desc_override
        if self.desc is None and self.vmdesc is not None:
            self.desc = self.vmdesc.data
        self.foreign_desc = desc_override is not None
        self.device_reader = self._device_reader()
        self.ram_section_id: int | None = None
        self.eof_offset: int | None = None
        self.version = 0
        self.postcopy_advise: Mapping[str, Any] | None = None
        self.ram: RamState | None = None
        self.truncated: TruncatedError | None = None

    def _device_reader(self) -> DeviceSections:
        return DeviceSections(
            index_descriptions(self.desc) if self.desc is not None else {},
            have_desc=self.desc is not None,
            foreign_desc=self.foreign_desc,
            scan_to_footer=_footer_scanner(self.sections),  # not a bound method: no cycle to the parser
            diagnostics=self.diagnostics,
            known_sections=self.sections,
        )

    @property
    def size(self) -> int:
        """The stream's size (for a one-pass stream: the bytes read)."""
        if self.window is not None and self.reader is not None:
            return self.reader.end
        return len(self.buf)

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
        r = self.reader = Reader(buf, window=self.window)
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
        try:
            self._loop(r, depth=0)
        except TruncatedError as exc:
            self.truncated = exc.with_traceback(None)  # no frames (nor the buffer they read) kept
        except UnsizableSection as exc:
            self.diagnostics.append(Diagnostic("warning", f"records stop being read here: {exc}", exc.offset))
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
            size=self.size,
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
            truncated=self.truncated,
        )

    # -- the loop ------------------------------------------------------------
    def _loop(self, r: Reader, depth: int) -> None:
        while True:
            if depth and r.remaining == 0:
                return
            start = r.pos
            r.context = None
            r.refill()
            if r.remaining == 0:
                raise TruncatedError(
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
                self.configuration = read_configuration(r, start, self.desc)
                self.records.append(
                    Record(start, rt.CONFIGURATION, r.pos, depth=depth, details=self.configuration.to_json())
                )
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
        if self.window is not None:
            read_trailer(r)
            if self.desc is None:
                self.vmdesc = locate_vmdesc(self.buf[: self.size])
                if self.vmdesc is not None:
                    self.desc = self.vmdesc.data
                    self._describe_devices()
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
        elif pos < self.size and self.buf[pos] == RecordType.VMDESCRIPTION:
            self.diagnostics.append(
                Diagnostic(
                    "warning",
                    "a VM description marker follows EOF, but its length or JSON does not check out; "
                    "it was ignored",
                    pos,
                )
            )
        if bytes(self.buf[pos : min(pos + 4096, self.size)]).strip(b"\0"):
            self.diagnostics.append(
                Diagnostic("note", f"{self.size - pos} bytes follow the end of the stream", pos)
            )

    def _describe_devices(self) -> None:
        """A one-pass stream: decode its device sections (kept in memory) with the description found last."""
        self.device_reader = self._device_reader()
        for i, dev in enumerate(self.devices):
            sec = SectionEntry(dev.section_id, dev.name, dev.instance_id, dev.version_id)
            r = Reader(self.buf, dev.payload_offset, self.size)
            r.context = f"{dev.name!r} (id {dev.section_id})"
            self.devices[i] = self.device_reader.read(r, dev.offset, sec, dev.depth, self.footers)
            if self.footers:
                read_footer(r, dev.section_id)

    # -- sections -------------------------------------------------------------
    def _section(self, r: Reader, start: int, kind: RecordType, depth: int) -> None:
        sid = r.be32("a section id")
        if kind in _HEADER_TYPES:
            name = r.cstr8("a section name")
            instance_id = r.be32("an instance id")
            version_id = r.be32("a version id")
            sec = self.sections.get(sid)
            if sec is None:
                sec = SectionEntry(sid, name, instance_id, version_id)
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
        r.context = f"{sec.name!r} (id {sid})"
        type_name = _SECTION_TYPE_NAMES[kind]
        payload = r.pos
        if sec.name == "ram" and kind != RecordType.SECTION_FULL:
            self._ram_payload(r, sid, sec.version_id)
        elif kind == RecordType.SECTION_FULL:
            self.devices.append(self.device_reader.read(r, start, sec, depth, self.footers))
        else:
            decoder = live_decoder(sec.name)
            summary = self._skip_unknown(r, sec) if decoder is None else decoder(r, type_name)
            sec.summaries.append((type_name, start, summary))
        if self.footers is None:
            self.footers = footer_follows(r, sid)
        footer = read_footer(r, sid) if self.footers else None
        header = kind in _HEADER_TYPES
        self.records.append(
            Record(
                start,
                type_name,
                r.pos,
                section_id=sid,
                name=sec.name,
                instance_id=sec.instance_id if header else None,
                version_id=sec.version_id if header else None,
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
        # With footers, every device section is sized without the description, which a
        # one-pass stream shows last: page bytes need not be kept for a second reading.
        RamDecoder(self._ram_state(), sink=self._sink_runs).read_section(r, release=self.footers is True)

    def _sink_runs(self, state: RamState) -> None:
        if self.ram_sink is not None:
            self.ram_sink.apply(state.options.page_size, state.blocks, state.runs, self.buf)

    def _skip_unknown(self, r: Reader, sec: SectionEntry) -> dict[str, Any]:
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

    def _scan_to_footer(self, r: Reader, sec: SectionEntry) -> None:
        scan_to_footer(r, sec.section_id, self.sections)

    # -- commands ---------------------------------------------------------------
    def _command(self, r: Reader, start: int, depth: int) -> None:
        cmd, details = read_command(r, start)
        if cmd == MigCmd.POSTCOPY_ADVISE and details:
            self.postcopy_advise = details
        if cmd == MigCmd.POSTCOPY_RAM_DISCARD and self.ram_sink is not None and self.ram is not None:
            self._sink_runs(self.ram)  # the pages sent before the command are dropped by it
            self.ram_sink.discard(str(details.get("block")), details.get("ranges", []))
        self.records.append(Record(start, rt.COMMAND, r.pos, command=cmd.name, depth=depth, details=details))
        if cmd == MigCmd.PACKAGED:
            # The records inside are read up to the end of the data even when the
            # package is cut, so that a cut stream keeps all it holds.
            end = r.pos + int(details["length"])
            r.ensure(end)
            inner = Reader(r.buf, r.pos, min(end, r.end))
            try:
                self._loop(inner, depth + 1)
            except UnsizableSection as exc:
                # The package states its own length: what follows it is still readable.
                self.diagnostics.append(
                    Diagnostic(
                        "warning", f"rest of the PACKAGED payload skipped by its length: {exc}", exc.offset
                    )
                )
                inner.pos = inner.end
            r.pos = inner.pos
            r.need(end - r.pos, "the PACKAGED payload")
            r.pos = end


def _footer_scanner(sections: dict[int, SectionEntry]) -> Callable[[Reader, SectionEntry], None]:
    def scan(r: Reader, sec: SectionEntry) -> None:
        scan_to_footer(r, sec.section_id, sections)

    return scan


def parse_stream(
    buf: memoryview,
    desc: Mapping[str, Any] | None = None,
    *,
    window: Window | None = None,
    ram_sink: RamSink | None = None,
) -> ParsedStream:
    """Parse a whole stream held in ``buf`` (``desc``: a VM description to use instead of the stream's).

    With a ``window``, the stream is read once as the parse goes (a pipe): page
    bytes are given back once indexed, and device sections are decoded at the
    end, with the description.  A stream without section footers keeps every
    byte instead, and what was read is parsed again as a whole once its
    description is at hand.  ``ram_sink`` takes the pages of a one-pass
    stream before their bytes are given back.
    """
    try:
        if window is None:
            return _Parser(buf, desc).parse()
        first = _Parser(buf, desc, window, ram_sink)
        try:
            parsed = first.parse()
        except MigstreamError:
            if first.footers is True or first.reader is None:
                raise
        else:
            if first.footers is True:
                return parsed
        return _Parser(buf[: first.size], desc).parse()
    except RecursionError:
        raise LimitError("the stream nests records too deeply") from None
