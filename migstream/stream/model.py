"""The result of parsing one stream."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from migstream.errors import TruncatedError
from migstream.ram.model import RamIndex
from migstream.stream.records import Configuration, Diagnostic, Record
from migstream.vmstate.values import Leaf, Struct


@dataclass(frozen=True)
class DeviceState:
    """One device section (FULL) and, when a description was at hand, its decoded state."""

    section_id: int
    name: str
    instance_id: int
    version_id: int
    offset: int  # the section record's offset
    payload_offset: int
    payload_size: int
    vmsd_name: str | None
    state: Struct | None
    depth: int = 0
    summary: Mapping[str, Any] | None = None  # old-style sections with a known layout (s390-skeys, todclock)

    @property
    def key(self) -> str:
        return f"{self.name} ({self.section_id})"

    def walk(self) -> Iterator[tuple[str, Leaf]]:
        """Every decoded value with its full path, e.g. ``cpu[0].env.cr[3]``, and its byte offset."""
        if self.state is not None:
            yield from self.state.walk(f"{self.name}[{self.instance_id}]")


@dataclass(frozen=True)
class LiveSection:
    """A live (iterative) section other than RAM: what its payloads held, summed up."""

    section_id: int
    name: str
    instance_id: int
    version_id: int
    summaries: tuple[tuple[str, int, Mapping[str, Any]], ...]  # (record type, offset, summary)
    decoded: bool = True


@dataclass(frozen=True)
class SectionInfo:
    """One section id: what it is and where its records are."""

    section_id: int
    name: str
    instance_id: int
    version_id: int
    kind: str  # "ram", "device" or "live"
    record_offsets: tuple[int, ...]
    size: int  # bytes of all its records

    def to_json(self) -> dict[str, Any]:
        return {
            "section_id": self.section_id,
            "name": self.name,
            "instance_id": self.instance_id,
            "version_id": self.version_id,
            "kind": self.kind,
            "records": len(self.record_offsets),
            "first_offset": self.record_offsets[0] if self.record_offsets else None,
            "size": self.size,
        }


@dataclass(frozen=True)
class ParsedStream:
    size: int
    version: int
    records: tuple[Record, ...]
    configuration: Configuration | None
    page_size: int
    footers: bool | None
    vmdesc: Mapping[str, Any] | None
    vmdesc_offset: int | None
    ram: RamIndex
    devices: tuple[DeviceState, ...]
    live_sections: tuple[LiveSection, ...]
    section_order: tuple[int, ...]  # section ids in order of first START/FULL
    section_names: Mapping[int, str] = field(default_factory=dict)
    diagnostics: tuple[Diagnostic, ...] = ()
    eof_offset: int | None = None
    #: Set when the stream ends early (cut inside or between records): everything
    #: before ``truncated.offset`` was read and is in this result.
    truncated: TruncatedError | None = None
