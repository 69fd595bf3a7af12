"""Device sections (SECTION_FULL): decoded with the VM description, or sized by their footer.

QEMU: migration/savevm.c (vmstate_load, qemu_loadvm_section_start_full) and
migration/vmstate.c (vmstate_load_state).  A description from elsewhere
(``--desc``) may not match the stream; then the footer says where the section
ends and the section is skipped with a warning.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from typing import Any

from migstream.errors import DescriptionError, MigstreamError, StreamFormatError
from migstream.sections import blob_decoder
from migstream.stream.headers import next_section_header
from migstream.stream.model import DeviceState
from migstream.stream.records import SECTION_FULL, Diagnostic
from migstream.vmstate.decoder import NeedsSectionEnd, VmstateDecoder
from migstream.vmstate.values import Struct
from migstream.wire.constants import RecordType
from migstream.wire.reader import Reader


class UnsizableSection(DescriptionError):
    """A device section whose end nothing tells (no description entry, no footer, no next header)."""


@dataclass
class SectionEntry:
    """What the record loop knows of one section id."""

    section_id: int
    name: str
    instance_id: int
    version_id: int
    summaries: list[tuple[str, int, Mapping[str, Any]]] = field(default_factory=list)
    decoded: bool = True


def index_descriptions(desc: Mapping[str, Any]) -> dict[tuple[str, int], Mapping[str, Any]]:
    """The description's device entries by (idstr, instance id); malformed entries are an error."""
    devices = desc.get("devices")
    if not isinstance(devices, list):
        raise DescriptionError("the VM description has no 'devices' list")
    out: dict[tuple[str, int], Mapping[str, Any]] = {}
    for dev in devices:
        if not isinstance(dev, Mapping) or not isinstance(dev.get("name"), str):
            raise DescriptionError("a device entry of the VM description has no name")
        inst = dev.get("instance_id", 0)
        if not isinstance(inst, int) or isinstance(inst, bool):
            raise DescriptionError("a device entry has a non-integer instance_id", field=dev["name"])
        out[(dev["name"], inst)] = dev
    return out


class DeviceSections:
    """Reads the payload of each FULL section; keeps the diagnostics it has to tell."""

    def __init__(
        self,
        descs: Mapping[tuple[str, int], Mapping[str, Any]],
        *,
        have_desc: bool,
        foreign_desc: bool,
        scan_to_footer: Callable[[Reader, SectionEntry], None],
        diagnostics: list[Diagnostic],
        known_sections: Container[int] = (),
    ) -> None:
        self.descs = descs
        self.have_desc = have_desc
        self.foreign_desc = foreign_desc
        self.scan_to_footer = scan_to_footer
        self.diagnostics = diagnostics
        self.known_sections = known_sections

    def read(self, r: Reader, start: int, sec: SectionEntry, depth: int, footers: bool | None) -> DeviceState:
        desc = self.descs.get((sec.name, sec.instance_id))
        payload = r.pos
        state: Struct | None
        if desc is not None and self.foreign_desc and footers:
            state = self._foreign(r, start, sec, desc)
        elif desc is not None:
            state = self._described(r, sec, desc, footers)
        else:
            self._undescribed(r, start, sec, footers)
            state = None
        if state is not None:
            state.version = sec.version_id
        return DeviceState(
            sec.section_id,
            sec.name,
            sec.instance_id,
            sec.version_id,
            start,
            payload,
            r.pos - payload,
            _vmsd_name(desc),
            state,
            depth,
            _blob_summary(sec.name, Reader(r.buf, payload, r.pos), r.context),
        )

    def _foreign(self, r: Reader, start: int, sec: SectionEntry, desc: Mapping[str, Any]) -> Struct | None:
        """A description from elsewhere: use it if it accounts for the section, else skip to the footer."""
        payload = r.pos
        try:
            state = VmstateDecoder(r.context).decode_vmsd(r, desc)
            if r.peek_u8() != RecordType.SECTION_FOOTER:
                raise StreamFormatError(
                    "the given description does not account for this section's bytes",
                    offset=r.pos,
                    section=r.context,
                )
            return state
        except MigstreamError as exc:
            r.pos = payload
            self.scan_to_footer(r, sec)
            sec.decoded = False
            self.diagnostics.append(
                Diagnostic(
                    "warning",
                    f"{sec.name} (instance {sec.instance_id}): the given description does not fit "
                    f"this section ({exc.message}); skipped to its footer",
                    start,
                )
            )
            return None

    def _described(
        self, r: Reader, sec: SectionEntry, desc: Mapping[str, Any], footers: bool | None
    ) -> Struct:
        payload = r.pos
        try:
            return VmstateDecoder(r.context).decode_vmsd(r, desc)
        except NeedsSectionEnd:
            if not footers:
                raise
        r.pos = payload
        self.scan_to_footer(r, sec)
        end = r.pos
        r.pos = payload
        state = VmstateDecoder(r.context, end_hint=end).decode_vmsd(r, desc)
        self.diagnostics.append(
            Diagnostic(
                "note",
                f"{sec.name}: a non-NULL pointer slot the description (QEMU < 10.0) describes as "
                "NULL was sized from the section footer",
                payload,
            )
        )
        return state

    def _undescribed(self, r: Reader, start: int, sec: SectionEntry, footers: bool | None) -> None:
        """A device section the description does not cover: find its end by its footer, and say so."""
        if not (footers or (footers is None and self._footer_ahead(r, sec))):
            if self.have_desc:
                problem = "the VM description has no entry for this device section, and there is no footer"
            elif footers is False:
                problem = (
                    "device section cannot be sized: the stream has neither a VM description nor footers"
                )
            else:
                problem = "device section cannot be read without a VM description (pass one with --desc)"
            nxt = next_section_header(r, sec.section_id, self.known_sections)
            if nxt is None:
                raise UnsizableSection(problem, offset=start, section=r.context)
            self.diagnostics.append(
                Diagnostic(
                    "note",
                    f"{sec.name} (instance {sec.instance_id}): no description and no footer; "
                    f"{nxt - r.pos} bytes sized by the record that follows at {nxt:#x}",
                    start,
                )
            )
            r.pos = nxt
            sec.decoded = False
            return
        payload = r.pos
        self.scan_to_footer(r, sec)
        sec.decoded = False
        if self.have_desc:
            self.diagnostics.append(
                Diagnostic(
                    "warning",
                    f"{sec.name} (instance {sec.instance_id}): not in the VM description; "
                    f"{r.pos - payload} bytes skipped to its footer",
                    start,
                )
            )
        return None

    def _footer_ahead(self, r: Reader, sec: SectionEntry) -> bool:
        """Whether a footer for ``sec`` can be found ahead (while footers are not yet known)."""
        save = r.pos
        try:
            self.scan_to_footer(r, sec)
            return True
        except MigstreamError:
            return False
        finally:
            r.pos = save


def _blob_summary(name: str, r: Reader, context: str | None) -> Mapping[str, Any] | None:
    """What an old-style (opaque) device section holds, for the few whose layout is known."""
    decoder = blob_decoder(name)
    if decoder is None:
        return None
    r.context = context
    try:
        return decoder(r, SECTION_FULL)
    except MigstreamError as exc:
        return {"error": str(exc)}


def _vmsd_name(desc: Mapping[str, Any] | None) -> str | None:
    v = desc.get("vmsd_name") if desc is not None else None
    return v if isinstance(v, str) else None
