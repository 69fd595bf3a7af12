"""`migstream extract`: desc.json, state.json, index.json and, under ``ram/``, one sparse file per RAM block.

Block names come from the stream: they are turned into safe relative paths
(no absolute paths, no ``..``, no control characters) below ``ram/``, so they
can never collide with the files extract writes itself.  Every directory and
file is created relative to an open descriptor of the output directory, one
component at a time, refusing symbolic links (``O_NOFOLLOW``) and anything
that is not a directory or a regular file: a link planted inside the output
directory cannot lead outside it, whatever races.  On error, the files this
run created are removed (files it overwrote with ``--force`` stay).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from migstream.errors import MigstreamError, UsageError
from migstream.outputs.memory import absent_blocks, open_output
from migstream.ram.writer import write_block_range

if TYPE_CHECKING:
    from migstream.api import Stream

_UNSAFE = re.compile(r"[^A-Za-z0-9._@:+=,-]")

RAM_DIR = "ram"
"""Subdirectory of the output directory that holds the block files."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def safe_relpath(name: str) -> str:
    """A block name as a relative path of harmless components."""
    parts = []
    for comp in name.split("/"):
        comp = _UNSAFE.sub("_", comp)[:200]
        if comp in ("", ".", ".."):
            continue
        parts.append(comp)
    return "/".join(parts) or "_"


class _OutputDir:
    """Creates files below one directory, walking each path with ``dir_fd`` and no symbolic links."""

    def __init__(self, root: str, force: bool) -> None:
        self.root = root
        self.force = force
        self._made_root = not os.path.lexists(root)
        try:
            os.makedirs(root, exist_ok=True)
            self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise UsageError(f"cannot use {root} as the output directory: {exc.strerror}") from None
        self._files: list[tuple[int, str, tuple[int, int]]] = []  # (dir fd, name, (dev, inode)) created
        self._dirs: list[tuple[int, str]] = []  # directories this run created, parents first
        self._dir_fds: dict[str, int] = {"": self.fd}

    def _directory(self, rel: str) -> int:
        """An open descriptor of directory ``rel`` (created as needed), proven to be inside the root."""
        if rel in self._dir_fds:
            return self._dir_fds[rel]
        parent_rel, _, name = rel.rpartition("/")
        parent = self._directory(parent_rel)
        try:
            os.mkdir(name, 0o755, dir_fd=parent)
            self._dirs.append((parent, name))
        except FileExistsError:
            pass
        except OSError as exc:
            raise UsageError(f"cannot create {self.shown(rel)}: {exc.strerror}") from None
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            raise UsageError(
                f"refusing to write below {self.shown(rel)}: it is not a plain directory "
                f"(a symbolic link or a file): {exc.strerror}"
            ) from None
        self._dir_fds[rel] = fd
        return fd

    def shown(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def create(self, rel: str) -> int:
        """Open ``rel`` for writing (new, or emptied with ``force``); the caller closes the descriptor."""
        parent_rel, _, name = rel.rpartition("/")
        parent = self._directory(parent_rel)
        fd, created = open_output(name, self.force, dir_fd=parent, nofollow=True, shown=self.shown(rel))
        if created:
            info = os.fstat(fd)
            self._files.append((parent, name, (info.st_dev, info.st_ino)))
        return fd

    def write_text(self, rel: str, text: str) -> None:
        fd = self.create(rel)
        try:
            with os.fdopen(fd, "w", closefd=False) as f:
                f.write(text)
        finally:
            os.close(fd)

    def remove_created(self) -> None:
        """Remove what this run created (files, then the directories if left empty)."""
        for parent, name, ident in self._files:
            with contextlib.suppress(OSError):
                there = os.stat(name, dir_fd=parent, follow_symlinks=False)
                if stat.S_ISREG(there.st_mode) and (there.st_dev, there.st_ino) == ident:
                    os.unlink(name, dir_fd=parent)
        for parent, name in reversed(self._dirs):
            with contextlib.suppress(OSError):
                os.rmdir(name, dir_fd=parent)
        if self._made_root:
            with contextlib.suppress(OSError):
                os.rmdir(self.root)  # only if still empty

    def close(self) -> None:
        self._files.clear()
        for fd in self._dir_fds.values():
            os.close(fd)
        self._dir_fds.clear()


def _block_files(
    stream: Stream,
    out: _OutputDir,
    subdir: str,
    reserved: set[str],
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[str, str | None, int]]:
    """Write one sparse file per RAM block; yields (block, file or None when not in the stream, size)."""
    pm = stream.pagemap()
    absent = absent_blocks(stream, pm)
    used = set(reserved)
    for b in stream.ram_blocks:
        if b.name in absent:
            yield b.name, None, b.size
            continue
        base = safe_relpath(b.name)
        if subdir:
            base = f"{subdir}/{base}"
        rel = base
        n = 1
        while rel in used:
            n += 1
            rel = f"{base}.{n}"
        used.add(rel)
        fd = out.create(rel)
        try:
            os.ftruncate(fd, b.size)
            write_block_range(pm, b.index, 0, -(-b.size // pm.page_size), fd, 0, progress)
        except OSError as exc:
            raise UsageError(f"cannot write {out.shown(rel)}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        yield b.name, rel, b.size


@contextlib.contextmanager
def _output_dir(root: str, force: bool) -> Iterator[_OutputDir]:
    out = _OutputDir(root, force)
    try:
        yield out
    except GeneratorExit:
        raise
    except (MigstreamError, OSError, MemoryError, KeyboardInterrupt):
        out.remove_created()
        raise
    finally:
        out.close()


def extract(
    stream: Stream, root: str, *, force: bool = False, progress: Callable[[int], None] | None = None
) -> Iterator[str]:
    """Write desc.json, state.json, the block files (under ``ram/``) and index.json; yields the files."""
    from migstream.outputs.state_json import state_document

    with _output_dir(root, force) as out:
        if stream.vmdesc is not None:
            out.write_text("desc.json", json.dumps(stream.vmdesc, indent=2) + "\n")
            yield "desc.json"
            state = state_document(stream)
            out.write_text("state.json", json.dumps(state, indent=2) + "\n")
            yield "state.json"
        index: list[dict[str, Any]] = []
        for name, rel, size in _block_files(stream, out, RAM_DIR, set(), progress):
            entry: dict[str, Any] = {"block": name, "file": rel, "size": size}
            if rel is None:
                entry["note"] = (
                    "not in the stream (x-ignore-shared: the pages stay in the shared backing memory)"
                )
            index.append(entry)
            if rel is not None:
                yield rel
        out.write_text("index.json", json.dumps({"blocks": index}, indent=2) + "\n")
        yield "index.json"


def extract_compat(stream: Stream, root: str) -> Iterator[str]:
    """``analyze-migration -x``: desc.json, the block files (named as the blocks), state.json."""
    from migstream.outputs.analyze_migration import render_desc, render_state

    enc = json.JSONEncoder(indent=4, separators=(",", ": "))
    stream.require_state()
    with _output_dir(root, True) as out:
        yield "desc.json"
        out.write_text("desc.json", enc.encode(render_desc(stream)))
        # The script names block files as the blocks; a block named like its own files gets a suffix.
        for _name, rel, _size in _block_files(stream, out, "", {"desc.json", "state.json"}):
            if rel is not None:
                yield rel
        yield "state.json"
        out.write_text("state.json", enc.encode(render_state(stream)))
