"""Typed, located access to the decoded fields of a CPU section.

The input is the decoded state of one ``cpu`` section: a mapping from the field
names of the stream's JSON description (``env.regs``, ``env.cr[0]``, ``cpsr``...)
to Python values, subsections nested as mappings keyed by their name
(``cpu/vfp``).  Every read says which section and field it was when it fails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from migstream.errors import StreamFormatError


def mask(bits: int) -> int:
    return (1 << bits) - 1


class CpuFields:
    """Typed, located access to the fields of one decoded CPU section."""

    def __init__(self, state: Mapping[str, Any], section: str, prefix: str = "") -> None:
        self._state = state
        self._section = section
        self._prefix = prefix

    @property
    def section(self) -> str:
        return self._section

    @property
    def mapping(self) -> Mapping[str, Any]:
        """The decoded fields themselves."""
        return self._state

    def _path(self, name: str) -> str:
        return f"{self._prefix}.{name}" if self._prefix else name

    def has(self, name: str) -> bool:
        return name in self._state

    def raw(self, name: str) -> Any:
        try:
            return self._state[name]
        except KeyError:
            raise StreamFormatError(
                "field missing from the CPU state", section=self._section, field=self._path(name)
            ) from None

    def sub(self, name: str) -> CpuFields | None:
        """A subsection (or struct) if present, else None."""
        value = self._state.get(name)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise StreamFormatError(
                "expected a subsection or struct",
                section=self._section,
                field=self._path(name),
                found=type(value).__name__,
            )
        return CpuFields(value, self._section, self._path(name))

    def struct(self, name: str) -> CpuFields:
        found = self.sub(name)
        if found is None:
            raise StreamFormatError(
                "struct missing from the CPU state", section=self._section, field=self._path(name)
            )
        return found

    def uint(self, name: str, bits: int = 64) -> int:
        return to_uint(self.raw(name), bits, self._section, self._path(name))

    def uints(self, name: str, bits: int = 64, count: int | None = None) -> list[int]:
        value = self.raw(name)
        path = self._path(name)
        if isinstance(value, (str, bytes, bytearray, memoryview, Mapping)) or not isinstance(value, Sequence):
            raise StreamFormatError(
                "expected an array", section=self._section, field=path, found=type(value).__name__
            )
        if count is not None and len(value) != count:
            raise StreamFormatError(
                "array has the wrong length",
                section=self._section,
                field=path,
                expected=count,
                found=len(value),
            )
        return [to_uint(item, bits, self._section, f"{path}[{i}]") for i, item in enumerate(value)]

    def structs(self, name: str, count: int) -> list[CpuFields]:
        value = self.raw(name)
        path = self._path(name)
        if isinstance(value, (str, bytes, bytearray, memoryview, Mapping)) or not isinstance(value, Sequence):
            raise StreamFormatError(
                "expected an array of structs",
                section=self._section,
                field=path,
                found=type(value).__name__,
            )
        if len(value) != count:
            raise StreamFormatError(
                "array has the wrong length",
                section=self._section,
                field=path,
                expected=count,
                found=len(value),
            )
        out: list[CpuFields] = []
        for i, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise StreamFormatError(
                    "expected a struct",
                    section=self._section,
                    field=f"{path}[{i}]",
                    found=type(item).__name__,
                )
            out.append(CpuFields(item, self._section, f"{path}[{i}]"))
        return out


def to_uint(value: Any, bits: int, section: str, path: str) -> int:
    """An unsigned integer of ``bits`` bits from a decoded value.

    Integers (signed ones too) are taken modulo 2**bits; byte buffers, which is
    how fields with a custom encoding arrive, are read big-endian as QEMU writes
    them.
    """
    if isinstance(value, bool):
        raise StreamFormatError("expected an integer", section=section, field=path, found="bool")
    if isinstance(value, int):
        return value & mask(bits)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if not raw or len(raw) * 8 > bits:
            raise StreamFormatError(
                "buffer has the wrong size for the register",
                section=section,
                field=path,
                expected=f"1..{bits // 8} bytes",
                found=f"{len(raw)} bytes",
            )
        return int.from_bytes(raw, "big")
    raise StreamFormatError("expected an integer", section=section, field=path, found=type(value).__name__)
