"""The exceptions migstream raises.

Every error that leaves a parse is a :class:`MigstreamError`.  Each one carries
where it happened (byte offset in the QEMU stream, the section, the field path)
and, when a value was checked, what was expected and what was found, so that
one line is enough to act on it.
"""

from __future__ import annotations

from typing import Any


class MigstreamError(Exception):
    """Root of every migstream exception."""

    def __init__(
        self,
        message: str,
        *,
        offset: int | None = None,
        section: str | None = None,
        field: str | None = None,
        expected: Any = None,
        found: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.section = section
        self.field = field
        self.expected = expected
        self.found = found

    def located(
        self,
        *,
        offset: int | None = None,
        section: str | None = None,
        field: str | None = None,
    ) -> MigstreamError:
        """Fill in location details that the raiser did not know (keeps what it knew)."""
        if self.offset is None:
            self.offset = offset
        if self.section is None:
            self.section = section
        if self.field is None:
            self.field = field
        return self

    def __str__(self) -> str:
        parts: list[str] = []
        if self.offset is not None:
            parts.append(f"at offset {self.offset:#x}")
        if self.section is not None:
            parts.append(f"in section {self.section}")
        if self.field is not None:
            parts.append(f"field {self.field}")
        text = self.message
        if self.expected is not None or self.found is not None:
            text += f": expected {_show(self.expected)}, found {_show(self.found)}"
        if parts:
            return f"{' '.join(parts)}: {text}"
        return text


def _show(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:#x}" if value > 9 else str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        return raw[:32].hex(" ") + (" ..." if len(raw) > 32 else "")
    return str(value)


class StreamFormatError(MigstreamError):
    """The bytes do not follow the migration stream format."""


class TruncatedError(StreamFormatError):
    """The stream ends before a record or field is complete."""


class LimitError(StreamFormatError):
    """A length or count read from the stream exceeds what the format or the input allows."""


class UnsupportedError(MigstreamError):
    """Valid input that migstream cannot read (e.g. an obsolete stream version, RDMA hooks)."""


class DescriptionError(MigstreamError):
    """The JSON VM description is missing, malformed, or disagrees with the stream."""


class ContainerError(MigstreamError):
    """The input container (compressed file, libvirt image, qcow2) cannot be opened."""


class UsageError(MigstreamError):
    """The caller asked for something that cannot be done with this input."""
