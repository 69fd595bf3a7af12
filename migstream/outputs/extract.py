"""`migstream extract`: desc.json, state.json and one sparse file per RAM block, with an index.

Block names come from the stream: they are turned into safe relative paths
(no absolute paths, no ``..``, no control characters) and every file is
created inside the output directory, never through a symbolic link.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from migstream.errors import UsageError
from migstream.outputs.memory import absent_blocks, create_output, write_block_range

if TYPE_CHECKING:
    from migstream.api import Stream

_UNSAFE = re.compile(r"[^A-Za-z0-9._@:+=,-]")


def safe_relpath(name: str) -> str:
    """A block name as a relative path of harmless components."""
    parts = []
    for comp in name.split("/"):
        comp = _UNSAFE.sub("_", comp)[:200]
        if comp in ("", ".", ".."):
            continue
        parts.append(comp)
    return "/".join(parts) or "_"


def _open_inside(root: str, rel: str, force: bool) -> int:
    """Create ``root/rel`` without following links out of ``root``."""
    real_root = os.path.realpath(root)
    path = os.path.join(real_root, rel)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    if os.path.commonpath([os.path.realpath(parent), real_root]) != real_root:
        raise UsageError(f"refusing to write {rel}: it would land outside {root}")
    if os.path.islink(path):
        raise UsageError(f"refusing to write through the symbolic link {path}")
    return create_output(path, force)


def _write_text(root: str, rel: str, text: str, force: bool) -> None:
    fd = _open_inside(root, rel, force)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _block_files(
    stream: Stream, root: str, force: bool, progress: Callable[[int], None] | None = None
) -> Iterator[tuple[str, str | None, int]]:
    """Write one sparse file per RAM block; yields (block, file or None when not in the stream, size)."""
    pm = stream.pagemap()
    absent = absent_blocks(stream, pm)
    used: set[str] = set()
    for b in stream.ram_blocks:
        if b.name in absent:
            yield b.name, None, b.size
            continue
        rel = base = safe_relpath(b.name)
        n = 1
        while rel in used:
            n += 1
            rel = f"{base}.{n}"
        used.add(rel)
        fd = _open_inside(root, rel, force)
        try:
            os.ftruncate(fd, b.size)
            write_block_range(pm, b.index, 0, -(-b.size // pm.page_size), fd, 0, progress)
        finally:
            os.close(fd)
        yield b.name, rel, b.size


def extract(
    stream: Stream, root: str, *, force: bool = False, progress: Callable[[int], None] | None = None
) -> Iterator[str]:
    """Write desc.json, state.json, the block files and index.json; yields the files written."""
    from migstream.outputs.state_json import state_document

    os.makedirs(root, exist_ok=True)
    if stream.vmdesc is not None:
        _write_text(root, "desc.json", json.dumps(stream.vmdesc, indent=2) + "\n", force)
        yield "desc.json"
        state = state_document(stream)
        _write_text(root, "state.json", json.dumps(state, indent=2) + "\n", force)
        yield "state.json"
    index: list[dict[str, Any]] = []
    for name, rel, size in _block_files(stream, root, force, progress):
        entry: dict[str, Any] = {"block": name, "file": rel, "size": size}
        if rel is None:
            entry["note"] = "not in the stream (x-ignore-shared: the pages stay in the shared backing memory)"
        index.append(entry)
        if rel is not None:
            yield rel
    _write_text(root, "index.json", json.dumps({"blocks": index}, indent=2) + "\n", force)
    yield "index.json"


def extract_compat(stream: Stream, root: str) -> Iterator[str]:
    """``analyze-migration -x``: desc.json, the block files (named as the blocks), state.json."""
    from migstream.outputs.analyze_migration import render_desc, render_state

    enc = json.JSONEncoder(indent=4, separators=(",", ": "))
    stream.require_state()
    yield "desc.json"
    _write_text(root, "desc.json", enc.encode(render_desc(stream)), True)
    for _name, rel, _size in _block_files(stream, root, True):
        if rel is not None:
            yield rel
    yield "state.json"
    _write_text(root, "state.json", enc.encode(render_state(stream)), True)
