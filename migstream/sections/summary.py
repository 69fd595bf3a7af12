"""What a section decoder returns: a small summary of one payload (counts, names, byte totals)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from migstream.wire.reader import Reader

Summary = dict[str, Any]
#: Consumes one section payload from the reader (record type name given) and sums it up.
Decoder = Callable[[Reader, str], Summary]


def bump(summary: Summary, key: str, n: int = 1) -> None:
    summary[key] = summary.get(key, 0) + n
