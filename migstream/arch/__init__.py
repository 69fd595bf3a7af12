"""Guest architectures: which one a stream is, and what each one knows.

Per architecture: registers, monitor text, ELF notes, memory layout.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: Main RAM block name -> architecture.
_ARCH_BY_BLOCK = {
    "pc.ram": "x86_64",
    "mach-virt.ram": "aarch64",
    "ppc_spapr.ram": "ppc64",
    "s390.ram": "s390x",
}
_ARCH_BY_MACHINE = (
    (re.compile(r"^(pc|q35|microvm|isapc|xenfv)"), "x86_64"),
    (re.compile(r"^virt|^sbsa|^raspi"), "aarch64"),
    (re.compile(r"^pseries|^powernv"), "ppc64"),
    (re.compile(r"^s390"), "s390x"),
)
#: Section idstrs that only one architecture has.
_ARCH_BY_SECTION = {
    "apic": "x86_64",
    "kvm-tpr-opt": "x86_64",
    "s390-skeys": "s390x",
    "spapr": "ppc64",
    "spapr/htab": "ppc64",
}


def detect_arch(machine: str | None, block_names: Iterable[str], section_names: Iterable[str]) -> str | None:
    """The guest architecture, from the machine type, then the RAM block names, then the sections."""
    if machine:
        for pattern, arch in _ARCH_BY_MACHINE:
            if pattern.search(machine):
                return arch
    for name in block_names:
        if name in _ARCH_BY_BLOCK:
            return _ARCH_BY_BLOCK[name]
    found = {_ARCH_BY_SECTION[n] for n in section_names if n in _ARCH_BY_SECTION}
    for arch in ("x86_64", "s390x", "ppc64"):
        if arch in found:
            return arch
    return None
