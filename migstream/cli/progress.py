"""A one-line progress indicator on standard error, shown only when it is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

#: Work smaller than this finishes before a progress line would help.
MIN_TOTAL = 256 << 20
_INTERVAL = 0.2


class Progress:
    """Call with the bytes just done; prints ``label: 42% (430/1024 MiB)`` at most five times a second."""

    def __init__(self, label: str, total: int, out: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.out = out if out is not None else sys.stderr
        self.enabled = total >= MIN_TOTAL and self.out.isatty()
        self._last = 0.0

    def __call__(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last >= _INTERVAL:
            self._last = now
            pct = 100 * self.done // max(self.total, 1)
            self.out.write(f"\r{self.label}: {pct:3d}% ({self.done >> 20}/{self.total >> 20} MiB)")
            self.out.flush()

    def close(self) -> None:
        if self.enabled:
            self.out.write("\r" + " " * 60 + "\r")
            self.out.flush()
