"""The decoded device-state tree: leaves that know their type, offset and size; structs; arrays.

A :class:`Struct` maps field names to :class:`Leaf` values, nested structs, or
lists of them when a name repeats (arrays); :class:`IntArray` holds integer
arrays read in bulk.  ``to_plain`` and ``to_typed`` turn a tree into Python or
JSON-ready values.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, Union


class Leaf:
    """One decoded field element.

    ``value`` is an ``int`` (integer types), ``bool``, ``str`` (capability),
    ``None`` (nullptr) or ``bytes`` (everything else, as on the wire).
    ``inner`` is the decoded nested structure of ``vstruct``/``tmp`` entries.
    """

    __slots__ = ("type", "offset", "size", "value", "signed", "inner")

    def __init__(
        self,
        type: str,
        offset: int,
        size: int,
        value: int | bool | bytes | str | None,
        signed: bool = False,
        inner: Struct | None = None,
    ) -> None:
        self.type = type
        self.offset = offset
        self.size = size
        self.value = value
        self.signed = signed
        self.inner = inner

    @property
    def raw_int(self) -> int:
        """The value as an unsigned integer of its width (integers only)."""
        if isinstance(self.value, bool) or not isinstance(self.value, int):
            raise TypeError(f"{self.type} is not an integer")
        return self.value & ((1 << (8 * self.size)) - 1)

    def __repr__(self) -> str:
        return f"Leaf({self.type!r}, {self.offset:#x}, {self.size}, {self.value!r})"


class IntArray:
    """A run of integers of one type read in bulk (an array field): compact, no object per element."""

    __slots__ = ("type", "offset", "size", "signed", "values")

    def __init__(self, type: str, offset: int, size: int, signed: bool, values: tuple[int, ...]) -> None:
        self.type = type
        self.offset = offset
        self.size = size  # bytes per element
        self.signed = signed
        self.values = values

    def leaves(self) -> list[Leaf]:
        return [
            Leaf(self.type, self.offset + i * self.size, self.size, v, self.signed)
            for i, v in enumerate(self.values)
        ]


Node = Union[Leaf, "Struct", list[Any]]


class Struct(dict[str, Any]):
    """Decoded vmsd: field name -> Leaf | Struct | list; keeps where it was read."""

    __slots__ = ("offset", "size", "vmsd_name", "version")

    def __init__(self, offset: int, vmsd_name: str | None = None, version: int | None = None) -> None:
        super().__init__()
        self.offset = offset
        self.size = 0
        self.vmsd_name = vmsd_name
        self.version = version

    def add(self, name: str, node: Any) -> None:
        """Store a field; a repeated name turns the entry into a list (arrays)."""
        if name not in self:
            self[name] = node
            return
        prev = self[name]
        if isinstance(prev, IntArray):
            prev = _Elements(prev.leaves())
            self[name] = prev
        if isinstance(node, IntArray):
            items: list[Any] = node.leaves()
        else:
            items = [node]
        if isinstance(prev, _Elements):
            prev.extend(items)
        else:
            self[name] = _Elements([prev, *items])

    def walk(self, prefix: str = "") -> Iterator[tuple[str, Leaf]]:
        """Every leaf with its path, e.g. ``env.segs[1].base``."""
        for name, node in self.items():
            yield from _walk(node, f"{prefix}.{name}" if prefix else name)


class _Elements(list[Any]):
    """The list made from a repeated field name (distinct from a Leaf's bytes)."""


def _walk(node: Any, path: str) -> Iterator[tuple[str, Leaf]]:
    if isinstance(node, Leaf):
        yield path, node
        if node.inner is not None:
            yield from node.inner.walk(path)
    elif isinstance(node, Struct):
        yield from node.walk(path)
    elif isinstance(node, IntArray):
        for i, leaf in enumerate(node.leaves()):
            yield f"{path}[{i}]", leaf
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _walk(item, f"{path}[{i}]")


_FLOAT = struct.Struct(">d")


def leaf_value(leaf: Leaf, typed: bool) -> Any:
    v = leaf.value
    if isinstance(v, bytes):
        if leaf.inner is not None:
            return to_typed(leaf.inner) if typed else to_plain(leaf.inner)
        if typed:
            if leaf.type == "timer" and len(v) == 8:
                return int.from_bytes(v, "big")
            if leaf.type in ("float64", "CPU_Double_U") and len(v) == 8:
                return _FLOAT.unpack(v)[0]
            return v.hex()
        return v
    return v


def _convert(node: Any, typed: bool, offsets: bool) -> Any:
    if isinstance(node, Leaf):
        value = leaf_value(node, typed)
        if offsets:
            return {"value": value, "type": node.type, "offset": node.offset, "size": node.size}
        return value
    if isinstance(node, IntArray):
        if offsets:
            return [
                {"value": v, "type": node.type, "offset": node.offset + i * node.size, "size": node.size}
                for i, v in enumerate(node.values)
            ]
        return list(node.values)
    if isinstance(node, Struct):
        return {k: _convert(v, typed, offsets) for k, v in node.items()}
    if isinstance(node, list):
        return [_convert(v, typed, offsets) for v in node]
    return node


def to_plain(state: Struct | None) -> dict[str, Any]:
    """Plain Python values: int, bool, bytes, str, None, lists, dicts (names as in the description)."""
    if state is None:
        return {}
    out = _convert(state, False, False)
    assert isinstance(out, dict)
    return out


def to_typed(state: Struct | None, offsets: bool = False) -> dict[str, Any]:
    """JSON-ready values: numbers, bytes as hex strings; with ``offsets`` each leaf is an object."""
    if state is None:
        return {}
    out = _convert(state, True, offsets)
    assert isinstance(out, dict)
    return out
