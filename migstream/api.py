"""The Python entry point: ``migstream.open()`` and the :class:`Stream` it returns."""

from __future__ import annotations

import builtins
import dataclasses
import io
import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

from migstream.arch import decode_builtin, detect_arch
from migstream.containers import Source, open_source
from migstream.errors import DescriptionError, TruncatedError, UsageError
from migstream.ram.model import RamBlock
from migstream.stream.model import DeviceState, ParsedStream, SectionInfo
from migstream.stream.parser import parse_stream
from migstream.stream.records import Configuration, Diagnostic, Record
from migstream.vmstate.values import to_plain
from migstream.wire.constants import MULTIFD_MAGIC

if TYPE_CHECKING:
    from migstream.arch import CpuState
    from migstream.ram.layout import MemoryMap
    from migstream.ram.pagemap import PageMap
    from migstream.ram.readers import BlockReader, PhysicalReader
    from migstream.ram.stage import PageStage

PathOrFile = str | os.PathLike[str] | BinaryIO


class Stream:
    """A parsed QEMU stream; keeps its bytes mapped until :meth:`close`.

    ``channels`` are the multifd channel captures of the same migration, when
    pages travelled on them.
    """

    def __init__(
        self,
        source: Source,
        parsed: ParsedStream,
        channels: Sequence[Source] = (),
        *,
        staged: tuple[Source, PageMap] | None = None,
    ) -> None:
        self.source = source
        self.parsed = _with_builtin_layouts(parsed, source.buffer)
        self.channels = tuple(channels)
        self._cpus: list[CpuState] | None = None
        self._pagemap: PageMap | None = None
        #: The staging file of a one-pass stream's pages (see ``open(stage_dir=...)``).
        self.stage: Source | None = None
        if staged is not None:
            self.stage, self._pagemap = staged

    # -- what the stream holds --------------------------------------------------
    @property
    def records(self) -> tuple[Record, ...]:
        return self.parsed.records

    @property
    def configuration(self) -> Configuration | None:
        return self.parsed.configuration

    @property
    def machine(self) -> str | None:
        return self.parsed.configuration.machine if self.parsed.configuration else None

    @property
    def ram_blocks(self) -> tuple[RamBlock, ...]:
        return self.parsed.ram.blocks

    @property
    def devices(self) -> tuple[DeviceState, ...]:
        return self.parsed.devices

    @property
    def diagnostics(self) -> tuple[Diagnostic, ...]:
        return self.parsed.diagnostics

    @property
    def truncated(self) -> TruncatedError | None:
        """Why and where the stream ends early, when it does; everything before that offset was read."""
        return self.parsed.truncated

    @property
    def vmdesc(self) -> Mapping[str, Any] | None:
        return self.parsed.vmdesc

    @property
    def has_own_description(self) -> bool:
        return self.parsed.vmdesc_offset is not None

    @property
    def page_size(self) -> int:
        return self.parsed.page_size

    @property
    def sections(self) -> tuple[SectionInfo, ...]:
        """Every section id in order of first appearance, with its records' offsets and total size."""
        p = self.parsed
        by_id: dict[int, list[Record]] = {}
        for rec in p.records:
            if rec.section_id is not None:
                by_id.setdefault(rec.section_id, []).append(rec)
        out = []
        for sid in p.section_order:
            recs = by_id.get(sid, [])
            # A cut stream may end inside the first record of a section: no record, only the name.
            first = next((r for r in recs if r.instance_id is not None), recs[0] if recs else None)
            kinds = {r.type for r in recs}
            kind = "ram" if sid == p.ram.section_id else "device" if kinds == {"SECTION_FULL"} else "live"
            out.append(
                SectionInfo(
                    sid,
                    p.section_names[sid],
                    (first.instance_id or 0) if first else 0,
                    (first.version_id or 0) if first else 0,
                    kind,
                    tuple(r.offset for r in recs),
                    sum(r.size for r in recs),
                )
            )
        return tuple(out)

    @property
    def commands(self) -> tuple[Record, ...]:
        return tuple(r for r in self.parsed.records if r.command is not None)

    def device(self, name: str, instance_id: int = 0) -> DeviceState:
        if not isinstance(name, str) or not isinstance(instance_id, int):
            raise UsageError("device() takes a section name (str) and an instance id (int)")
        for dev in self.parsed.devices:
            if dev.name == name and dev.instance_id == instance_id:
                return dev
        raise UsageError(f"no device section {name!r} instance {instance_id}")

    def require_state(self) -> None:
        """Raise unless device state could be decoded (a description was at hand)."""
        if self.parsed.vmdesc is None:
            raise DescriptionError(
                "the stream has no VM description (JSON); device state cannot be decoded "
                "without one: pass --desc FILE (e.g. `migstream desc` of a stream from the "
                "same QEMU and machine)"
            )

    @property
    def arch(self) -> str | None:
        """The guest architecture (``x86_64``, ``aarch64``, ``ppc64``, ``s390x``), or None if unknown."""
        p = self.parsed
        return detect_arch(
            self.machine,
            [b.name for b in self.ram_blocks],
            [*(d.name for d in self.devices), *p.section_names.values()],
        )

    def cpus(self) -> list[CpuState]:
        """The vCPUs' registers (``CpuState`` objects)."""
        if self._cpus is None:
            from migstream.arch import CPU_COMMON_IDSTR, CPU_IDSTR, cpus_from_devices

            devs = [
                (d.name, d.instance_id, to_plain(d.state))
                for d in self.devices
                if d.state is not None and d.name in (CPU_IDSTR, CPU_COMMON_IDSTR)
            ]
            if not any(name == "cpu" for name, _i, _s in devs):
                self.require_state()
            self._cpus = list(cpus_from_devices(devs, self.arch))
        return self._cpus

    # -- guest memory ---------------------------------------------------------------
    def pagemap(self) -> PageMap:
        """The final source of every RAM page (resolved once, on first use)."""
        if self.source.closed:
            raise UsageError(f"{self.source.name}: the stream is closed")
        if self._pagemap is not None:
            return self._pagemap
        if self.source.window is not None:
            raise UsageError(
                f"{self.source.name}: the stream was read in one pass (opened with pages=False) "
                "and its page bytes were not kept; open it with pages=True for guest memory"
            )
        if self._pagemap is None:
            from migstream.ram.pagemap import PageMap

            discards = [
                (rec.offset, str(rec.details.get("block")), rec.details.get("ranges", []))
                for rec in self.parsed.records
                if rec.command == "POSTCOPY_RAM_DISCARD"
            ]
            self._pagemap = PageMap(self.parsed.ram, (self.source, *self.channels), discards)
        return self._pagemap

    def memory_map(self, overrides: Mapping[str, int] | None = None) -> MemoryMap:
        """How RAM blocks sit in guest-physical memory (``MemoryMap``)."""
        from migstream.arch import memory_map

        blocks = [(b.name, b.size) for b in self.ram_blocks]
        devices = [(d.name, d.instance_id, d.state) for d in self.devices if d.state is not None]
        return memory_map(
            blocks, machine=self.machine, arch=self.arch, overrides=dict(overrides or {}), devices=devices
        )

    def block(self, name: str) -> BlockReader:
        """One RAM block as a read-only, seekable file (``BlockReader``), at block offsets."""
        from migstream.ram.readers import BlockReader

        if not isinstance(name, str):
            raise UsageError(f"block() takes a RAM block name (str), not {type(name).__name__}")
        for b in self.ram_blocks:
            if b.name == name:
                return BlockReader(self.pagemap(), b.index)
        raise UsageError(f"no RAM block {name!r}", expected=", ".join(b.name for b in self.ram_blocks))

    def physical(self, overrides: Mapping[str, int] | None = None) -> PhysicalReader:
        """Guest-physical memory as a read-only, seekable file (``PhysicalReader``): ``pread(gpa, n)``."""
        from migstream.ram.readers import PhysicalReader

        return PhysicalReader(self.pagemap(), self.memory_map(overrides))

    # -- life cycle ---------------------------------------------------------------
    def close(self) -> None:
        self.source.close()
        for ch in self.channels:
            ch.close()
        if self.stage is not None:
            self.stage.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Stream {self.source.name!r} machine={self.machine!r} records={len(self.records)}>"


def load_description(path: str | os.PathLike[str]) -> Mapping[str, Any]:
    """A VM description from a JSON file (as `migstream desc` or QEMU's script `-d desc` print it)."""
    try:
        with builtins.open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8", "replace"), strict=False)
    except OSError as exc:
        raise UsageError(f"cannot read description {os.fspath(path)}: {exc.strerror}") from None
    except (ValueError, RecursionError) as exc:
        raise DescriptionError(f"description {os.fspath(path)} is not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("devices"), list):
        raise DescriptionError(f"description {os.fspath(path)} has no 'devices' list")
    return data


def open(  # noqa: A001 - the natural name for the entry point
    target: PathOrFile,
    *,
    desc: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    channels: Sequence[PathOrFile] = (),
    snapshot: str | None = None,
    pages: bool = True,
    stage_dir: str | os.PathLike[str] | None = None,
) -> Stream:
    """Open and parse a stream (path, ``"-"`` for standard input, or a binary file).

    ``desc`` is a VM description (mapping or JSON file) for streams that carry
    none; ``channels`` are multifd channel captures; ``snapshot`` selects a qcow2
    internal snapshot (default: the last one).  ``pages=False`` says guest
    memory will not be read (records, device state and registers only): a
    pipe or compressed input is then read once as it is parsed, with no
    temporary copy, and :meth:`Stream.pagemap` and the readers refuse.
    ``stage_dir``: a pipe or compressed input is read once and its pages are
    written, as they arrive, into an unlinked sparse file in that directory
    (a file's own bytes are used in place, as always).
    """
    _check_target(target, "the stream")
    if not (desc is None or isinstance(desc, Mapping) or _is_path(desc)):
        raise UsageError(
            f"desc= takes a VM description (a mapping) or the path of a JSON file, not {type(desc).__name__}"
        )
    try:
        if isinstance(channels, (str, bytes, os.PathLike)):
            raise TypeError
        channels = list(channels)
    except TypeError:
        raise UsageError(f"channels= takes a list of paths or files, not {type(channels).__name__}") from None
    for channel in channels:
        _check_target(channel, "a multifd channel")
    if snapshot is not None and not isinstance(snapshot, str):
        raise UsageError(f"snapshot= takes a snapshot name or id (str), not {type(snapshot).__name__}")
    if desc is not None and not isinstance(desc, Mapping):
        desc = load_description(desc)
    if not isinstance(pages, bool):
        raise UsageError(f"pages= takes True or False, not {type(pages).__name__}")
    if stage_dir is not None and not _is_path(stage_dir):
        raise UsageError(f"stage_dir= takes a directory path, not {type(stage_dir).__name__}")
    one_pass = not channels and (not pages or stage_dir is not None)
    source = open_source(target, snapshot=snapshot, one_pass=one_pass)
    opened: list[Source] = []
    stage = None
    try:
        if pages and source.window is not None:
            from migstream.ram.stage import PageStage

            stage = PageStage(_stage_file(os.fspath(stage_dir or ".")))
        parsed = parse_stream(source.buffer, desc, window=source.window, ram_sink=stage)
        source.seal(parsed.size)
        if stage is not None:
            return Stream(source, parsed, staged=_staged(source, parsed, stage))
        for channel in channels:
            opened.append(open_source(channel, magic=MULTIFD_MAGIC.to_bytes(4, "big")))
        if opened:
            from migstream.ram.multifd import index_channels

            opened[:] = index_channels(parsed.ram, opened)
        return Stream(source, parsed, opened)
    except BaseException:
        source.close()
        for src in opened:
            src.close()
        if stage is not None:
            os.close(stage.fd)
        raise


def _stage_file(directory: str) -> int:
    """An unlinked file in ``directory`` for staged pages."""
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except (OSError, AttributeError):
        pass
    import tempfile

    try:
        fd, path = tempfile.mkstemp(prefix=".migstream-stage-", dir=directory)
    except OSError as exc:
        raise UsageError(f"cannot create a staging file in {directory}: {exc.strerror}") from None
    os.unlink(path)
    return fd


def _staged(source: Source, parsed: ParsedStream, stage: PageStage) -> tuple[Source, PageMap]:
    """The pages of a one-pass stream, complete in their staging file, as a page map."""
    from migstream.ram.pagemap import PageMap

    stage.apply(parsed.page_size, parsed.ram.blocks, parsed.ram.runs, source.buffer)
    staged = Source(f"{source.name} (staged pages)", stage.fd, 0, stage.size)
    return staged, PageMap(parsed.ram, [staged], index=stage.intervals())


def _is_path(value: object) -> bool:
    return isinstance(value, str) or (isinstance(value, os.PathLike) and isinstance(os.fspath(value), str))


def _check_target(target: object, what: str) -> None:
    """A path (str or path-like), ``"-"``, or an open binary file object; anything else is misuse."""
    if _is_path(target):
        return
    if isinstance(target, (bytes, bytearray, os.PathLike)):
        raise UsageError(f"{what}: give paths as str, not {type(target).__name__}")
    if not callable(getattr(target, "read", None)):
        raise UsageError(f"{what}: expected a path or a binary file object, not {type(target).__name__}")
    mode = getattr(target, "mode", None)
    if isinstance(target, io.TextIOBase) or (isinstance(mode, str) and "b" not in mode):
        raise UsageError(f"{what}: the file is open in text mode; open it with 'rb'")
    if getattr(target, "closed", False):
        raise UsageError(f"{what}: the file object is closed")


def _with_builtin_layouts(parsed: ParsedStream, buf: memoryview) -> ParsedStream:
    """Decode the leading fields of undescribed sections that have a built-in layout (x86-64 CPUs)."""
    devices = list(parsed.devices)
    notes = []
    for i, dev in enumerate(devices):
        if dev.state is not None or dev.payload_size == 0:
            continue
        end = dev.payload_offset + dev.payload_size
        found = decode_builtin(
            buf, dev.name, dev.version_id, dev.payload_offset, end, f"{dev.name!r} (id {dev.section_id})"
        )
        if found is not None:
            state, note = found
            state.version = dev.version_id
            devices[i] = dataclasses.replace(dev, state=state)
            notes.append(
                Diagnostic("note", f"{dev.name} (instance {dev.instance_id}): {note}", dev.payload_offset)
            )
    if not notes:
        return parsed
    return dataclasses.replace(parsed, devices=tuple(devices), diagnostics=(*parsed.diagnostics, *notes))
