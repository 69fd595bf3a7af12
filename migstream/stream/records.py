"""Top-level records of a stream, as parsed: immutable and JSON-ready."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

#: Record type names used in results (the contract's names).
HEADER = "HEADER"
CONFIGURATION = "CONFIGURATION"
SECTION_START = "SECTION_START"
SECTION_PART = "SECTION_PART"
SECTION_END = "SECTION_END"
SECTION_FULL = "SECTION_FULL"
COMMAND = "COMMAND"
EOF = "EOF"
VMDESCRIPTION = "VMDESCRIPTION"

_NO_DETAILS: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Record:
    """One top-level record.

    ``offset`` is the position of its type byte in the QEMU stream (for the
    header: 0); ``end`` is the position after its last byte (footer included).
    ``depth`` is 1 for records inside a PACKAGED command's payload.
    """

    offset: int
    type: str
    end: int
    section_id: int | None = None
    name: str | None = None
    instance_id: int | None = None
    version_id: int | None = None
    command: str | None = None
    depth: int = 0
    footer_offset: int | None = None
    payload_offset: int | None = None
    details: Mapping[str, Any] = field(default_factory=lambda: _NO_DETAILS)

    @property
    def size(self) -> int:
        return self.end - self.offset

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"offset": self.offset, "type": self.type, "size": self.size}
        for key in ("section_id", "name", "instance_id", "version_id", "command"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.depth:
            out["depth"] = self.depth
        if self.footer_offset is not None:
            out["footer_offset"] = self.footer_offset
        if self.payload_offset is not None:
            out["payload_offset"] = self.payload_offset
        if self.details:
            out["details"] = dict(self.details)
        return out


@dataclass(frozen=True)
class Configuration:
    """What the CONFIGURATION record says (machine type and validated settings)."""

    offset: int
    machine: str
    target_page_bits: int | None = None
    capabilities: tuple[str, ...] = ()
    uuid: str | None = None
    subsections: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"machine": self.machine, "capabilities": list(self.capabilities)}
        if self.target_page_bits is not None:
            out["target_page_bits"] = self.target_page_bits
        if self.uuid is not None:
            out["uuid"] = self.uuid
        return out


@dataclass(frozen=True)
class Diagnostic:
    """Something worth telling that did not stop the parse."""

    level: str  # "note" or "warning"
    message: str
    offset: int | None = None

    def __str__(self) -> str:
        where = f"at offset {self.offset:#x}: " if self.offset is not None else ""
        return f"{self.level}: {where}{self.message}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"level": self.level, "message": self.message}
        if self.offset is not None:
            out["offset"] = self.offset
        return out
