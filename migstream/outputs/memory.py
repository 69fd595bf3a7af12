"""Guest memory out of a stream: block files, the guest-physical image, an ELF core.

Pages are written block range by block range with
:func:`migstream.ram.writer.write_block_range`.  Zero and absent pages are
never written: output files are sparse.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from migstream.errors import MigstreamError, UsageError
from migstream.outputs.info import multifd_hint
from migstream.ram.layout import MemoryMap, Placement
from migstream.ram.pagemap import PageMap
from migstream.ram.writer import Staging, write_block_range

if TYPE_CHECKING:
    from migstream.api import Stream

def data_bytes(pm: PageMap, placements: Sequence[Placement]) -> int:
    """Bytes of page data the placements will copy (for progress reports)."""
    by_name = {b.name: b.index for b in pm.blocks}
    ps = pm.page_size
    return sum(pm.data_bytes(by_name[p.block], p.block_offset // ps, p.size // ps) for p in placements)


OFF_T_MAX = (1 << 63) - 1
"""Largest file size (and offset) a 64-bit ``off_t`` holds."""


def open_output(
    path: str, force: bool, *, dir_fd: int | None = None, nofollow: bool = False, shown: str | None = None
) -> tuple[int, bool]:
    """Open ``path`` to write: ``(fd, created)``; only ever a regular file.

    A FIFO, a device, a socket or a directory is refused before anything is
    written or truncated (FIFOs are opened non-blocking, so none can hang).
    An existing regular file is emptied only with ``force``.  ``created`` says
    whether the file is new (only such files may be removed on error).
    ``nofollow`` refuses a symbolic link as the last component.
    """
    shown = shown or path
    base = os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | (os.O_NOFOLLOW if nofollow else 0)
    created = True
    try:
        try:
            fd = os.open(path, base | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
        except FileExistsError:
            if not force:
                with contextlib.suppress(OSError):
                    mode = os.stat(path, dir_fd=dir_fd, follow_symlinks=not nofollow).st_mode
                    if not stat.S_ISREG(mode):
                        raise UsageError(
                            f"{shown} is not a regular file ({_kind(mode)}); refusing to write it"
                        ) from None
                raise UsageError(f"{shown} exists (use --force to overwrite)") from None
            created = False
            fd = os.open(path, base, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise UsageError(f"{shown} is not a regular file (a FIFO or socket); refusing it") from None
        if exc.errno == errno.ELOOP and nofollow:
            raise UsageError(f"refusing to write through the symbolic link {shown}") from None
        raise UsageError(f"cannot open {shown} for writing: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UsageError(f"{shown} is not a regular file ({_kind(mode)}); refusing to write it")
    try:
        os.set_blocking(fd, True)
        if not created:
            os.ftruncate(fd, 0)
    except OSError as exc:
        os.close(fd)
        raise UsageError(f"cannot empty {shown}: {exc.strerror}") from None
    return fd, created


def create_output(path: str, force: bool) -> int:
    """A regular file to write (see :func:`open_output`)."""
    return open_output(path, force)[0]


def remove_created(path: str, fd: int, *, dir_fd: int | None = None) -> None:
    """Unlink ``path`` if it is still the regular file open as ``fd`` (one this run created)."""
    with contextlib.suppress(OSError):
        mine = os.fstat(fd)
        there = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISREG(there.st_mode) and (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino):
            os.unlink(path, dir_fd=dir_fd)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return name
    return "not a plain file"


def write_placements(
    pm: PageMap,
    placements: Sequence[Placement],
    out_fd: int,
    dest_of: Mapping[int, int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Copy every placed block range to its ``gpa`` in the file (or to ``dest_of[gpa]``)."""
    ps = pm.page_size
    by_name = {b.name: b.index for b in pm.blocks}
    staging = Staging(ps)
    for p in placements:
        if p.block_offset % ps or p.size % ps:
            raise UsageError(f"placement of {p.block} is not page aligned")
        dest = p.gpa if dest_of is None else dest_of[p.gpa]
        write_block_range(
            pm, by_name[p.block], p.block_offset // ps, p.size // ps, out_fd, dest, progress, staging
        )


def _merged(placements: Sequence[Placement]) -> list[tuple[int, int]]:
    """``(gpa, size)`` ranges of the placements, adjacent ones merged."""
    out: list[list[int]] = []
    for p in placements:
        if out and out[-1][0] + out[-1][1] == p.gpa:
            out[-1][1] += p.size
        else:
            out.append([p.gpa, p.size])
    return [(a, b) for a, b in out]


def absent_blocks(stream: Stream, pm: PageMap) -> set[str]:
    """Blocks that x-ignore-shared left out of the stream (their pages stay in shared memory)."""
    if not stream.parsed.ram.ignore_shared:
        return set()
    return {b.name for b in stream.ram_blocks if not pm.present(b.index)}


def _notes(stream: Stream, pm: PageMap, mmap_: MemoryMap) -> list[str]:
    notes = list(pm.warnings)
    hint = multifd_hint(stream)
    if hint:
        notes.append(hint)
    for b in stream.ram_blocks:
        if mmap_.placements_of(b.name) and not pm.present(b.index):
            if stream.parsed.ram.ignore_shared:
                notes.append(
                    f"RAM block {b.name} is not in the stream (x-ignore-shared: its pages stay in the "
                    "shared backing file); its range is left empty"
                )
            elif not hint:
                notes.append(f"RAM block {b.name}: no page of it is in the stream")
    if mmap_.unplaced:
        notes.append(
            "not placed (no fixed guest-physical address; use --map BLOCK=GPA): " + ", ".join(mmap_.unplaced)
        )
    return notes


def _write_elf(
    stream: Stream,
    pm: PageMap,
    placements: Sequence[Placement],
    fd: int,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Write the ELF core; returns notes for the user."""
    from migstream.outputs.elf import build_elf_core

    notes = []
    arch = stream.arch
    if arch is None:
        raise UsageError("cannot tell the guest architecture for the ELF header")
    try:
        cpus = stream.cpus()
    except MigstreamError as exc:
        notes.append(f"no vCPU notes in the core: {exc}")
        cpus = []
    layout = build_elf_core(_merged(placements), cpus, arch, page_size=stream.page_size)
    layout.write_header(fd)
    # Adjacent placements share one segment: find each placement's file offset.
    dest_of: dict[int, int] = {}
    for p in placements:
        for seg in layout.segments:
            if seg.gpa <= p.gpa < seg.gpa + seg.size:
                dest_of[p.gpa] = seg.file_offset + (p.gpa - seg.gpa)
                break
    write_placements(pm, placements, fd, dest_of, progress)
    return notes


def write_memory(
    stream: Stream,
    output: str | None,
    *,
    fmt: str = "raw",
    overrides: Mapping[str, int] | None = None,
    print_map: bool = False,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[str, list[str]]:
    """``migstream memory``: returns what to print on standard output, and notes for the user."""
    mmap_ = stream.memory_map(overrides)
    if print_map and not output:
        return mmap_.describe() + "\n", []
    if not output:
        raise UsageError("memory needs -o OUT (or --print-map)")
    pm = stream.pagemap()
    absent = absent_blocks(stream, pm)
    placements = [p for p in mmap_.placements if p.block not in absent]
    image_size = max((p.gpa_end for p in mmap_.placements), default=0)
    if fmt == "raw" and image_size > OFF_T_MAX:
        raise UsageError(
            f"the guest-physical image would end at {image_size:#x}, past the largest file offset "
            f"({OFF_T_MAX:#x}); use --format elf or --map to place the blocks lower"
        )
    fd, created = open_output(output, force)
    notes: list[str] = []
    try:
        if fmt == "raw":
            os.ftruncate(fd, image_size)
            write_placements(pm, placements, fd, progress=progress)
        else:
            notes += _write_elf(stream, pm, placements, fd, progress)
    except BaseException as exc:
        if created:
            remove_created(output, fd)
        os.close(fd)
        if isinstance(exc, OSError):
            raise UsageError(f"cannot write {output}: {exc.strerror or exc}") from None
        raise
    os.close(fd)
    notes += _notes(stream, pm, mmap_)
    return (mmap_.describe() + "\n" if print_map else ""), notes
