"""The CONFIGURATION record: machine type, then the ``configuration/...`` subsections.

QEMU: migration/savevm.c (vmstate_configuration: target-page-bits, capabilities, uuid).
A subsection this reader does not know is decoded from the stream's description
when that has it (QEMU 7.2 writes some), and is an error otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from migstream.errors import LimitError, StreamFormatError, UnsupportedError
from migstream.stream.records import Configuration
from migstream.vmstate.decoder import VmstateDecoder
from migstream.wire.constants import RecordType
from migstream.wire.reader import Reader, decode_name

#: Longest machine type name accepted.
MAX_MACHINE_NAME = 256
#: Most capabilities accepted.
MAX_CAPABILITIES = 256
_PREFIX = b"configuration/"


def _described_subsections(desc: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    cdesc = desc.get("configuration") if desc is not None else None
    if isinstance(cdesc, Mapping):
        subs = cdesc.get("subsections")
        for sd in subs if isinstance(subs, list) else []:
            if isinstance(sd, Mapping) and isinstance(sd.get("vmsd_name"), str):
                out[sd["vmsd_name"]] = sd
    return out


def read_configuration(r: Reader, start: int, desc: Mapping[str, Any] | None) -> Configuration:
    """The configuration whose type byte was at ``start`` (``r`` moves past it)."""
    r.context = "configuration"
    n = r.be32("the machine name length")
    r.bounded_length(n, MAX_MACHINE_NAME, "the machine name")
    machine = decode_name(r.take(n))
    page_bits = None
    caps: list[str] = []
    uuid = None
    subs: list[str] = []
    described = _described_subsections(desc)
    while r.peek_u8() == RecordType.SUBSECTION:
        save = r.pos
        r.u8()
        ln = r.u8("a subsection name length")
        if ln < len(_PREFIX) or r.remaining < ln or bytes(r.buf[r.pos : r.pos + len(_PREFIX)]) != _PREFIX:
            r.pos = save
            break
        name = decode_name(r.take(ln))
        r.be32("a subsection version")
        subs.append(name)
        if name == "configuration/target-page-bits":
            page_bits = r.be32("target page bits")
            if not 8 <= page_bits <= 24:
                raise StreamFormatError(
                    "implausible target page bits",
                    offset=r.pos - 4,
                    section="configuration",
                    expected="8..24",
                    found=page_bits,
                )
        elif name == "configuration/capabilities":
            count = r.be32("the capability count")
            if count > MAX_CAPABILITIES:
                raise LimitError(
                    "too many capabilities",
                    offset=r.pos - 4,
                    section="configuration",
                    expected=f"<= {MAX_CAPABILITIES}",
                    found=count,
                )
            caps.extend(r.cstr8("a capability name") for _ in range(count))
        elif name == "configuration/uuid":
            h = bytes(r.take(16, "the VM UUID")).hex()
            uuid = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        elif name in described:
            VmstateDecoder("configuration").decode_vmsd(r, described[name], name)
        else:
            raise UnsupportedError(
                "unknown configuration subsection and no description of it",
                offset=save,
                section="configuration",
                found=name,
            )
    return Configuration(start, machine, page_bits, tuple(caps), uuid, tuple(subs))
