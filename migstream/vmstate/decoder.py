"""Device state (vmstate) decoded with the stream's JSON VM description.

QEMU: migration/vmstate.c (vmstate_load_state, vmsd_desc_field_start), migration/vmstate-types.c.

The description gives, for every FULL section, each field's name, type and
exact wire size.  The decoder walks it over the section bytes and builds a
tree: a :class:`Struct` maps field names to :class:`Leaf` values (or lists of
them when a name repeats: arrays), nested structs, and subsections (keyed by
their name as written in the stream).
"""

from __future__ import annotations

import struct as _struct
from collections.abc import Mapping
from typing import Any

from migstream.errors import DescriptionError, LimitError, MigstreamError, StreamFormatError
from migstream.vmstate.values import IntArray, Leaf, Struct
from migstream.wire.constants import VMS_NULLPTR_MARKER, RecordType
from migstream.wire.reader import Reader

#: Integer types and whether QEMU reads them signed (as its JSON names them).
INT_TYPES: Mapping[str, bool] = {
    "int8": True,
    "int16": True,
    "int32": True,
    "int64": True,
    "int32 equal": True,
    "int32 le": True,
    "int64 equal": True,
    "uint8 equal": False,
    "uint16 equal": False,
    "uint8": False,
    "uint16": False,
    "uint32": False,
    "uint64": False,
    "uint32 equal": False,
}
#: Types whose entry carries a nested description in the field object itself.
INLINE_STRUCT_TYPES = frozenset({"vstruct", "tmp"})
#: Types decoded as a number in typed output (but shown as bytes by QEMU's script).
NUMERIC_OPAQUE_TYPES = frozenset({"timer"})
FLOAT_TYPES = frozenset({"float64", "CPU_Double_U"})

#: Deepest nesting of structs accepted (real descriptions stay far below).
MAX_DEPTH = 64
#: Array elements that may take no bytes at all (empty structs), beyond the bytes left.
MAX_EMPTY_ELEMENTS = 4096
#: Fields, elements and structs that take no bytes, per section, beyond the bytes left in it.
#: Nested arrays of empty elements multiply; this bounds the work of one section's decode.
EMPTY_WORK_SLACK = 4096


_BE_UNSIGNED = {
    1: _struct.Struct(">B"),
    2: _struct.Struct(">H"),
    4: _struct.Struct(">I"),
    8: _struct.Struct(">Q"),
}
_BE_SIGNED = {
    1: _struct.Struct(">b"),
    2: _struct.Struct(">h"),
    4: _struct.Struct(">i"),
    8: _struct.Struct(">q"),
}

#: Widest integer field read as a number (an odd size from a foreign description); wider ones stay bytes.
MAX_INT_FIELD = 16


class NeedsSectionEnd(DescriptionError):
    """The description cannot size a field; knowing where the section ends would settle it."""


class VmstateDecoder:
    """Decodes vmsd encodings described by JSON entries.

    ``end_hint`` (where the section payload ends, known from its footer) lets the
    decoder size the one thing older descriptions get wrong: a non-NULL slot in
    an array of pointers described with the NULL slot's 1-byte size (QEMU < 10.0).
    """

    def __init__(self, section: str | None = None, end_hint: int | None = None) -> None:
        self.section = section
        self.end_hint = end_hint
        self._budget: int | None = None
        self._limit = 0

    def _charge_empty(self, r: Reader, path: str) -> None:
        """Count one field, element or struct that took no bytes; too many is a description bomb."""
        assert self._budget is not None
        self._budget -= 1
        if self._budget < 0:
            raise LimitError(
                f"the description asks for more than {self._limit} fields, elements and structs "
                "that take no bytes (nested arrays of empty elements); refusing to go on",
                offset=r.pos,
                section=self.section,
                field=path or None,
            )

    def _error(self, message: str, r: Reader, path: str, **kw: Any) -> MigstreamError:
        return StreamFormatError(message, offset=r.pos, section=self.section, field=path or None, **kw)

    def decode_vmsd(self, r: Reader, desc: Mapping[str, Any], path: str = "", depth: int = 0) -> Struct:
        """Fields then subsections of one vmsd description."""
        if self._budget is None:
            # The whole decode of one section shares one budget, sized by the bytes it may use.
            self._limit = self._budget = r.remaining + EMPTY_WORK_SLACK
        if depth > MAX_DEPTH:
            raise DescriptionError(
                "description nests structs too deeply", offset=r.pos, section=self.section, field=path
            )
        out = Struct(r.pos, _str_or_none(desc.get("vmsd_name")), _int_or_none(desc.get("version")))
        fields = desc.get("fields", [])
        if not isinstance(fields, list):
            raise DescriptionError("'fields' is not a list", section=self.section, field=path)
        for i, fdesc in enumerate(fields):
            if not isinstance(fdesc, Mapping):
                raise DescriptionError(
                    "a field description is not an object", section=self.section, field=path
                )
            if (
                fdesc.get("type") == "struct"
                and fdesc.get("size") == 1
                and isinstance(fdesc.get("struct"), Mapping)
                and not fdesc["struct"].get("fields")
            ):
                tail = _fixed_size(fields[i + 1 :]) if depth == 0 and not desc.get("subsections") else None
                self._decode_pointer_slots(r, fdesc, out, path, tail)
                continue
            self._decode_field(r, fdesc, out, path, depth)
        subs = desc.get("subsections", [])
        if subs:
            if not isinstance(subs, list):
                raise DescriptionError("'subsections' is not a list", section=self.section, field=path)
            for sdesc in subs:
                if not isinstance(sdesc, Mapping):
                    raise DescriptionError(
                        "a subsection description is not an object", section=self.section, field=path
                    )
                want = sdesc.get("vmsd_name")
                start = r.pos
                marker = r.u8("a subsection marker")
                if marker != RecordType.SUBSECTION:
                    r.pos = start
                    raise self._error(
                        f"subsection {want!r} expected",
                        r,
                        path,
                        expected=f"{int(RecordType.SUBSECTION):#04x}",
                        found=f"{marker:#04x}",
                    )
                name = r.cstr8("a subsection name")
                if want is not None and name != want:
                    raise StreamFormatError(
                        "subsection name differs from the description",
                        offset=start,
                        section=self.section,
                        field=path,
                        expected=want,
                        found=name,
                    )
                version = r.be32("a subsection version")
                sub = self.decode_vmsd(r, sdesc, f"{path}/{name}" if path else name, depth + 1)
                sub.version = version
                sub.offset = start
                out.add(name, sub)
        out.size = r.pos - out.offset
        if not out.size:
            self._charge_empty(r, path)
        return out

    def _decode_field(self, r: Reader, fdesc: Mapping[str, Any], out: Struct, path: str, depth: int) -> None:
        name = fdesc.get("name")
        ftype = fdesc.get("type")
        if not isinstance(name, str) or not isinstance(ftype, str):
            raise DescriptionError(
                "a field description lacks its name or type", section=self.section, field=path
            )
        count = fdesc.get("array_len", 1)
        if not isinstance(count, int) or count < 0:
            raise DescriptionError("bad array_len", section=self.section, field=f"{path}.{name}", found=count)
        fpath = f"{path}.{name}" if path else name
        size = fdesc.get("size", 0)
        if not isinstance(size, int) or size < 0:
            raise DescriptionError("bad field size", section=self.section, field=fpath, found=size)
        if count > r.remaining + MAX_EMPTY_ELEMENTS or count * size > r.remaining:
            raise LimitError(
                "array longer than the bytes left in the section",
                offset=r.pos,
                section=self.section,
                field=fpath,
                expected=f"<= {r.remaining} bytes",
                found=f"{count} x {size} bytes",
            )
        if count > 1 and ftype in INT_TYPES and size in _BE_UNSIGNED:
            # Bulk path for arrays of integers.
            r.need(count * size, f"field {fpath}")
            signed = INT_TYPES[ftype]
            fmt = _struct.Struct(">" + str(count) + (_BE_SIGNED if signed else _BE_UNSIGNED)[size].format[1:])
            values = fmt.unpack_from(r.buf, r.pos)
            out.add(name, IntArray(ftype, r.pos, size, signed, values))
            r.pos += count * size
            return
        if not count:
            self._charge_empty(r, fpath)
        for _ in range(count):
            before = r.pos
            out.add(name, self._decode_element(r, fdesc, ftype, size, fpath, depth))
            if r.pos == before:
                self._charge_empty(r, fpath)

    def _decode_pointer_slots(
        self, r: Reader, fdesc: Mapping[str, Any], out: Struct, path: str, tail: int | None
    ) -> None:
        """An array of pointers as older descriptions show it: every slot described as a 1-byte NULL."""
        name = str(fdesc.get("name"))
        count = fdesc.get("array_len", 1)
        if not isinstance(count, int) or count < 0:
            raise DescriptionError("bad array_len", section=self.section, field=f"{path}.{name}", found=count)
        fpath = f"{path}.{name}" if path else name
        for i in range(count):
            start = r.pos
            b = r.u8(f"field {fpath}")
            if b == VMS_NULLPTR_MARKER:
                out.add(name, Leaf("nullptr", start, 1, None))
                continue
            r.pos = start
            if self.end_hint is None or tail is None:
                raise NeedsSectionEnd(
                    "a pointer slot is not NULL, but the description only knows NULL slots (QEMU < 10.0)",
                    offset=start,
                    section=self.section,
                    field=f"{fpath}[{i}]",
                )
            left = count - i - 1
            region_end = self.end_hint - tail
            n = region_end - start - left
            if n < 1 or bytes(r.buf[start + n : region_end]) != bytes([VMS_NULLPTR_MARKER]) * left:
                raise DescriptionError(
                    "cannot size the non-NULL slots of a pointer array the description mis-describes",
                    offset=start,
                    section=self.section,
                    field=f"{fpath}[{i}]",
                )
            out.add(name, Leaf("struct", start, n, bytes(r.take(n))))
            for _ in range(left):
                out.add(name, Leaf("nullptr", r.pos, 1, None))
                r.pos += 1
            return

    def _decode_element(
        self, r: Reader, fdesc: Mapping[str, Any], ftype: str, size: int, path: str, depth: int
    ) -> Any:
        start = r.pos
        if ftype == "struct":
            sdesc = fdesc.get("struct")
            if not isinstance(sdesc, Mapping):
                raise DescriptionError(
                    "struct field without a 'struct' description", section=self.section, field=path
                )
            if size == 1 and not sdesc.get("fields") and r.peek_u8() == VMS_NULLPTR_MARKER:
                # Older descriptions show a NULL pointer slot with the pointee's type.
                r.pos += 1
                return Leaf("nullptr", start, 1, None)
            node = self.decode_vmsd(r, sdesc, path, depth + 1)
            return node
        if ftype in INT_TYPES:
            fmt = (_BE_SIGNED if INT_TYPES[ftype] else _BE_UNSIGNED).get(size)
            if fmt is None:
                raw = bytes(r.take(size, f"field {path}"))
                if size > MAX_INT_FIELD:  # no integer that wide exists: kept as bytes (shown as hex)
                    return Leaf(ftype, start, size, raw)
                return Leaf(
                    ftype, start, size, int.from_bytes(raw, "big", signed=INT_TYPES[ftype]), INT_TYPES[ftype]
                )
            r.need(size, f"field {path}")
            (v,) = fmt.unpack_from(r.buf, r.pos)
            r.pos += size
            return Leaf(ftype, start, size, int(v), INT_TYPES[ftype])
        if ftype == "bool":
            raw = bytes(r.take(size, f"field {path}"))
            return Leaf(ftype, start, size, bool(raw[0]) if raw else False)
        if ftype == "nullptr":
            raw = bytes(r.take(size, f"field {path}"))
            if raw != bytes([VMS_NULLPTR_MARKER]) * len(raw):
                raise StreamFormatError(
                    "NULL pointer marker expected",
                    offset=start,
                    section=self.section,
                    field=path,
                    expected=f"{VMS_NULLPTR_MARKER:#04x}",
                    found=raw,
                )
            return Leaf(ftype, start, size, None)
        if ftype == "capability":
            n = r.u8("a capability name length")
            return Leaf(ftype, start, n + 1, bytes(r.take(n, f"field {path}")).decode("utf-8", "replace"))
        raw = bytes(r.take(size, f"field {path}"))
        inner = None
        if ftype in INLINE_STRUCT_TYPES and isinstance(fdesc.get("fields"), list):
            inner = self._try_inline(r, fdesc, start, size, path, depth)
        return Leaf(ftype, start, size, raw, False, inner)

    def _try_inline(
        self, r: Reader, fdesc: Mapping[str, Any], start: int, size: int, path: str, depth: int
    ) -> Struct | None:
        """Decode a vstruct/tmp entry's own description, if it accounts for exactly its bytes."""
        sub = Reader(r.buf, start, start + size)
        try:
            node = self.decode_vmsd(sub, fdesc, path, depth + 1)
        except MigstreamError:
            return None
        return node if sub.pos == start + size else None


def _fixed_size(fields: list[Any]) -> int | None:
    """Wire size of fields that have a fixed size (no structs, no counted strings), else None."""
    total = 0
    for f in fields:
        if not isinstance(f, Mapping) or f.get("type") in (
            "struct",
            "capability",
            "vstruct",
            "tmp",
            "qtailq",
            "qlist",
            "gtree",
        ):
            return None
        size, count = f.get("size"), f.get("array_len", 1)
        if not isinstance(size, int) or not isinstance(count, int):
            return None
        total += size * count
    return total


def _str_or_none(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _int_or_none(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None
