"""A QEMU ``-dump-vmstate`` file: every device class's vmstate description, and the machine.

QEMU: migration/savevm.c (dump_vmstate_json_to_file, dump_vmstate_vmsd, dump_vmstate_vmsf)

The file maps each device class name to ``{"Name", "version_id", "minimum_version_id",
"Description"}``; a ``Description`` has ``name`` (the vmsd name, which is what a stream's
section is registered under), ``version_id``, ``minimum_version_id``, ``Fields`` (each
``field``, ``version_id``, ``field_exists``, ``size`` and, for structs, a nested
``Description``) and ``Subsections``.  The key ``vmschkmachine`` holds the machine name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from migstream.containers import open_source
from migstream.errors import DescriptionError

#: Largest dump accepted (decompressed); real dumps are a few MiB.
MAX_DUMP_SIZE = 256 << 20

JsonObj = Mapping[str, Any]


@dataclass(frozen=True)
class VmstateDump:
    """A parsed ``-dump-vmstate`` file."""

    name: str
    machine: str | None
    classes: Mapping[str, JsonObj]  # device class name -> its entry
    by_vmsd: Mapping[str, tuple[JsonObj, ...]]  # vmsd name -> the distinct Descriptions of that name

    def descriptions(self, vmsd_name: str) -> tuple[JsonObj, ...]:
        """Every description registered under ``vmsd_name`` (several classes may share a name)."""
        return self.by_vmsd.get(vmsd_name, ())


def parse_dump(data: Any, name: str = "<dump>") -> VmstateDump:
    """Check the shape of a decoded dump and index it by vmsd name."""
    if not isinstance(data, dict):
        raise DescriptionError(f"{name}: not a -dump-vmstate file (no JSON object)")
    machine = None
    classes: dict[str, JsonObj] = {}
    by_vmsd: dict[str, tuple[JsonObj, ...]] = {}
    for key, entry in data.items():
        if key == "vmschkmachine":
            if isinstance(entry, dict) and isinstance(entry.get("Name"), str):
                machine = entry["Name"]
            continue
        if not isinstance(entry, dict):
            continue
        classes[key] = entry
        desc = entry.get("Description")
        if isinstance(desc, dict) and isinstance(desc.get("name"), str):
            known = by_vmsd.get(desc["name"], ())
            if desc not in known:
                by_vmsd[desc["name"]] = (*known, desc)
    if machine is None and not classes:
        raise DescriptionError(f"{name}: not a -dump-vmstate file (no vmschkmachine, no device classes)")
    return VmstateDump(name, machine, classes, by_vmsd)


def load_dump(path: str | os.PathLike[str]) -> VmstateDump:
    """Read a dump file, plain or compressed (recognised by content like any input)."""
    name = os.fspath(path)
    with open_source(path, magic=b"{", max_size=MAX_DUMP_SIZE) as src:
        raw = bytes(src.buffer)
    try:
        data = json.loads(raw.decode("utf-8", "replace"))
    except (ValueError, RecursionError) as exc:
        raise DescriptionError(f"{name}: not JSON: {exc}") from None
    return parse_dump(data, name)
