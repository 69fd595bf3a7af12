"""vCPU register state, as decoded from the CPU device sections."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

#: A register is an integer, or a small record of integers (x86 segments:
#: selector/base/limit/flags; descriptor tables: base/limit).
RegisterValue = int | Mapping[str, int]

ARCHES = ("x86_64", "aarch64", "ppc64", "s390x")


@dataclass(frozen=True)
class CpuState:
    """The registers of one vCPU.

    ``registers`` uses lower-case architecture names (``rax``, ``x0``, ``nip``,
    ``psw_addr``...) as in the command-line contract; values are unsigned.
    ``extra`` holds architecture state that is not a register proper but that
    outputs may want (e.g. x86 ``hflags`` to tell the 32-bit view).
    """

    index: int
    arch: str
    registers: Mapping[str, RegisterValue]
    extra: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "arch": self.arch,
            "registers": {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in self.registers.items()},
        }
