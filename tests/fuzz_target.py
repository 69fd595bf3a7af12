"""The hostile-input target shared by the in-process sweeps and the fuzzer.

:func:`exercise` drives one input through everything a user of the package
can reach without writing files: ``migstream.open`` -> ``records`` -> device
state walk -> ``cpus()`` -> ``sections`` -> ``pagemap`` -> ``block(name)``
reads -> ``physical().pread`` -> the JSON builders of ``migstream.outputs``
(``info_json``, ``state_document``, ``render_state``), each serialised with
``json.dumps``.  Every step may succeed or raise a ``MigstreamError``; anything
else escapes :func:`exercise` with a note naming the step.

:func:`slim_stream` makes small fuzz seeds out of real streams: it keeps every
top-level record and drops the RAM page records of each block after its
first few, using the package's own record and page-run offsets.

Run as a script it is an atheris (libFuzzer) target::

    python tests/fuzz_target.py CORPUS_DIR [SEED_DIR...] -max_total_time=60 -artifact_prefix=DIR/

and with ``--random`` first, a pure-Python mutation loop with the same options
and output (no coverage) for where atheris is not installed.  ``bench/fuzz.py``
drives it (seeds, restarts after a finding, summary).
"""

from __future__ import annotations

import io
import json
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

#: Bytes read per block or physical read (a few pages: reads stay cheap on any input).
READ_SIZE = 3 * 4096
#: ``render_state(memory=True)`` lists every page record in hex: only for inputs up to this size.
MEMORY_LISTING_LIMIT = 1 << 20


class Hang(BaseException):
    """Raised by the SIGALRM handler of :func:`time_limit` (no ``except Exception`` catches it)."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`Hang` in the running code when it has used ``seconds`` of CPU time.

    CPU time (``ITIMER_PROF``, SIGPROF), not wall time: a loaded machine does not
    make a fast input look hung, and libFuzzer's own SIGALRM timer stays untouched.
    """

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"no result within {seconds:g} s of CPU time")

    old = signal.signal(signal.SIGPROF, on_alarm)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, old)


@dataclass
class Outcome:
    """What :func:`exercise` saw: steps that completed and the MigstreamErrors of those that did not."""

    done: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


def _read_points(size: int, page: int) -> list[int]:
    """A few offsets of a ``size``-byte space: start, a page in, middle, the last pages, past the end."""
    points = {0, page, size // 2, max(0, size - page), max(0, size - 1), size, size + page}
    return sorted(points)


def exercise(data: bytes, *, channels: Sequence[bytes] = (), memory_listing: bool | None = None) -> Outcome:
    """Run ``data`` (and multifd ``channels``) through the package; raise anything but a MigstreamError.

    An exception that escapes carries a note ``in step <name>``.
    """
    import migstream
    from migstream.errors import MigstreamError
    from migstream.outputs.analyze_migration import render_state
    from migstream.outputs.info import info_json
    from migstream.outputs.state_json import state_document

    out = Outcome()
    if memory_listing is None:
        memory_listing = len(data) <= MEMORY_LISTING_LIMIT

    def step(name: str, fn: Callable[[], Any]) -> Any:
        try:
            result = fn()
        except MigstreamError as exc:
            out.errors[name] = f"{type(exc).__name__}: {exc}"
            return None
        except BaseException as exc:
            exc.add_note(f"in step {name}")
            raise
        out.done.append(name)
        return result

    stream = step(
        "open", lambda: migstream.open(io.BytesIO(data), channels=[io.BytesIO(c) for c in channels])
    )
    if stream is None:
        return out
    with stream:
        step("records", lambda: json.dumps([r.to_json() for r in stream.records]))
        step("devices", lambda: [list(d.walk()) for d in stream.devices])
        step("cpus", lambda: [c.to_json() for c in stream.cpus()])
        step("sections", lambda: json.dumps([s.to_json() for s in stream.sections]))
        pm = step("pagemap", stream.pagemap)
        if pm is not None:
            page = stream.page_size
            for b in stream.ram_blocks:

                def read_block(name: str = b.name) -> None:
                    reader = stream.block(name)
                    for at in _read_points(reader.size, page):
                        reader.pread(at, READ_SIZE)
                    reader.seek(0)
                    reader.read(page)

                step(f"block {b.name!r}", read_block)

            def read_physical() -> None:
                phys = stream.physical()
                starts = {p.gpa for p in phys.memory_map.placements[:8]}
                for at in sorted({*starts, *_read_points(phys.size, page)}):
                    phys.pread(at, READ_SIZE)

            step("physical", read_physical)
        step("info_json", lambda: json.dumps(info_json(stream)))
        step("state_document", lambda: json.dumps(state_document(stream)))
        step("render_state", lambda: json.dumps(render_state(stream, memory=memory_listing)))
    if not channels and len(data) <= ONE_PASS_LIMIT:
        step("one_pass", lambda: _one_pass(data))
    return out


#: Largest input also read once (as from a pipe) by :func:`exercise`: the same parse again, with
#: the one-pass reader and the page staging.
ONE_PASS_LIMIT = 1 << 20


class _Once(io.RawIOBase):
    """The bytes as a pipe gives them: read once, no descriptor, no seeking."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._data.readinto(buffer)


def _one_pass(data: bytes) -> None:
    """The same bytes read once: records and state without pages, then with pages staged."""
    import tempfile

    import migstream
    from migstream.outputs.info import info_json
    from migstream.outputs.state_json import state_document

    with migstream.open(_Once(data), pages=False) as s:
        json.dumps(info_json(s))
        json.dumps(state_document(s))
    with tempfile.TemporaryDirectory() as d, migstream.open(_Once(data), stage_dir=d) as s:
        pm = s.pagemap()
        for b in s.ram_blocks:
            pm.read(b.index, 0, min(b.size, 1 << 16))


# -- seeds ---------------------------------------------------------------------------------------------


def page_record_ranges(stream: Any) -> list[tuple[int, int, int]]:
    """``(start, end, block)`` of every RAM page record in the main stream, in stream order."""
    from migstream.ram.model import PageKind

    out: list[tuple[int, int, int]] = []
    for run in stream.parsed.ram.runs:
        if run.channel != 0 or run.kind in (PageKind.MAPPED, PageKind.MULTIFD, PageKind.MULTIFD_ZERO):
            continue
        if run.kind in (PageKind.PAGE, PageKind.ZERO):
            out.extend(
                (run.stream_offset + k * run.stride, run.stream_offset + (k + 1) * run.stride, run.block)
                for k in range(run.count)
            )
        else:  # XBZRLE, COMPRESS: one record, aux bytes of data after data_skip
            out.append((run.stream_offset, run.stream_offset + run.data_skip + run.aux, run.block))
    out.sort()
    return out


#: Corpus streams that seed the sweeps and the fuzzer (slimmed): one of each transport and shape.
SEED_STREAMS = (
    "qemu-10.0/pc-tcp-multifd",
    "qemu-7.2/pc-x-ignore-shared",
    "qemu-7.2/pc-old-machine",
    "qemu-10.0/pc-postcopy",
    "qemu-7.2/pc-running-xbzrle",
    "qemu-7.2/pc-compress",
    "qemu-10.0/aarch64-virt-paused",
    "qemu-7.2/s390x-ccw-paused",
)


def slim_stream(data: bytes, keep_per_block: int = 4) -> bytes:
    """``data`` with all but the first ``keep_per_block`` page records of each RAM block dropped.

    Every top-level record (header, configuration, device sections, commands,
    EOF, description) is kept.  A record that continues a block (CONTINUE flag)
    is only kept when the page record before it is, so the result is a valid
    stream.  Page records inside a PACKAGED payload are kept (its length would
    change).
    """
    import migstream

    with migstream.open(io.BytesIO(data)) as s:
        packaged = [
            (r.payload_offset, r.end)
            for r in s.records
            if r.command == "PACKAGED" and r.payload_offset is not None
        ]
        pages = page_record_ranges(s)
    seen: dict[int, int] = {}
    drop: list[tuple[int, int]] = []
    for start, end, block in pages:
        n = seen[block] = seen.get(block, 0) + 1
        if n <= keep_per_block or any(lo <= start < hi for lo, hi in packaged):
            continue
        if drop and drop[-1][1] == start:
            drop[-1] = (drop[-1][0], end)
        else:
            drop.append((start, end))
    parts: list[bytes] = []
    pos = 0
    for start, end in drop:
        parts.append(data[pos:start])
        pos = end
    parts.append(data[pos:])
    return b"".join(parts)


def channel_packets(data: bytes, page_size: int) -> list[tuple[int, int]]:
    """``(start, end)`` of the packets of an uncompressed multifd channel capture, as far as they parse."""
    from migstream.wire import constants as c

    header = c.MULTIFD_PACKET_HEADER_SIZE + 8 * (c.MULTIFD_PACKET_BYTES // page_size)
    out: list[tuple[int, int]] = []
    pos = c.MULTIFD_INITIAL_PACKET_SIZE
    while pos + header <= len(data):
        normal = int.from_bytes(data[pos + 16 : pos + 20], "big")
        end = pos + header + normal * page_size
        if end > len(data):
            break
        out.append((pos, end))
        pos = end
    return out


def slim_channel(data: bytes, page_size: int, packets: int = 8, pages: int = 4) -> bytes:
    """The initial packet and the first ``packets`` packets of an uncompressed multifd channel
    capture, each cut to its first ``pages`` normal pages (count, size and offset list rewritten)."""
    import struct

    from migstream.wire import constants as c

    slots = c.MULTIFD_PACKET_BYTES // page_size
    header = c.MULTIFD_PACKET_HEADER_SIZE + 8 * slots
    out = bytearray(data[: c.MULTIFD_INITIAL_PACKET_SIZE])
    for start, _end in channel_packets(data, page_size)[:packets]:
        head = bytearray(data[start : start + header])
        normal, zero = struct.unpack_from(">I", head, 16)[0], struct.unpack_from(">I", head, 32)[0]
        keep = min(normal, pages)
        offsets = head[c.MULTIFD_PACKET_HEADER_SIZE :]
        listed = offsets[: 8 * keep] + offsets[8 * normal : 8 * (normal + zero)]
        head[c.MULTIFD_PACKET_HEADER_SIZE :] = listed + bytes(8 * slots - len(listed))
        struct.pack_into(">I", head, 16, keep)
        if normal:
            struct.pack_into(">I", head, 20, keep * page_size)
        out += head + data[start + header : start + header + keep * page_size]
    return bytes(out)


# -- fuzzer entry point ---------------------------------------------------------------------------------

#: Per-input time limit inside the fuzzer (libFuzzer's own -timeout is the backstop).
FUZZ_INPUT_SECONDS = 5.0
#: Address space the fuzzing process may add to what it had at start (a MemoryError is a finding).
FUZZ_HEADROOM = 2 << 30


def fuzz_one(data: bytes) -> None:
    """The libFuzzer callback: any exception that is not a MigstreamError is a finding."""
    with time_limit(FUZZ_INPUT_SECONDS):
        exercise(data, memory_listing=len(data) <= 1 << 16)


def _limit_memory() -> None:
    import resource

    with open("/proc/self/status") as f:
        vm = next((int(x.split()[1]) * 1024 for x in f if x.startswith("VmSize:")), 0)
    if vm:
        resource.setrlimit(resource.RLIMIT_AS, (vm + FUZZ_HEADROOM, vm + FUZZ_HEADROOM))


def _instrumented_imports() -> None:
    import atheris

    with atheris.instrument_imports(include=["migstream"]):
        import importlib
        import pkgutil

        import migstream

        for mod in pkgutil.walk_packages(migstream.__path__, "migstream."):
            if not mod.name.startswith(("migstream.cli", "migstream.__main__")):
                importlib.import_module(mod.name)


# The pure-Python engine: same command line and output conventions as libFuzzer (for the
# options bench/fuzz.py passes), random mutations of the corpus, no coverage feedback.

_INTERESTING = [
    b"\xff",
    b"\xff\xff",
    b"\xff\xff\xff\xff",
    b"\x7f\xff\xff\xff",
    b"\x80\x00\x00\x00",
    b"\0" * 4,
    b"\xff" * 8,
    b"\x7f" + b"\xff" * 7,
    b"\x00\x00\x01\x00\x00\x00\x00\x00",
]


def _mutate(rng: Any, data: bytes, pool: list[bytes], max_len: int) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        op = rng.randrange(7)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:  # flip a bit
            pos = min(pos, len(b) - 1)
            b[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # random byte
            b[min(pos, len(b) - 1)] = rng.randrange(256)
        elif op == 2:  # an interesting integer
            v = rng.choice(_INTERESTING)
            b[pos : pos + len(v)] = v
        elif op == 3:  # erase
            del b[pos : pos + rng.randrange(1, 64)]
        elif op == 4:  # insert random bytes
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        elif op == 5 and b:  # copy a part of itself
            src = rng.randrange(len(b))
            b[pos:pos] = b[src : src + rng.randrange(1, 512)]
        elif op == 6 and pool:  # cross over with another input
            other = rng.choice(pool)
            cut = rng.randrange(len(other) + 1)
            b[pos:] = other[cut:]
    return bytes(b[:max_len])


def random_engine(argv: list[str]) -> int:
    """``fuzz_target.py --random DIR... -max_total_time=N -artifact_prefix=P [-max_len=N] [-seed=N]``."""
    import hashlib
    import random
    import time
    import traceback

    opts = {a[1:].split("=", 1)[0]: a.split("=", 1)[1] for a in argv if a.startswith("-") and "=" in a}
    dirs = [Path(a) for a in argv if not a.startswith("-")]
    pool = [p.read_bytes() for d in dirs if d.is_dir() for p in sorted(d.iterdir()) if p.is_file()]
    if not pool:
        pool = [b"QEVM\0\0\0\3"]
    max_len = int(opts.get("max_len", max(len(x) for x in pool)))
    rng = random.Random(int(opts.get("seed", "0")))
    stop = time.monotonic() + float(opts.get("max_total_time", "60"))
    prefix = opts.get("artifact_prefix", "./")
    _limit_memory()
    print(f"INFO: pure-Python engine, {len(pool)} inputs, max_len {max_len}", flush=True)
    runs = 0
    started = time.monotonic()
    code = 0
    while time.monotonic() < stop:
        data = pool[runs % len(pool)] if runs < len(pool) else _mutate(rng, rng.choice(pool), pool, max_len)
        runs += 1
        try:
            fuzz_one(data)
        except (Exception, Hang) as exc:  # noqa: BLE001 - every other exception is a finding
            print("\n=== Uncaught Python exception: ===", flush=True)
            traceback.print_exception(exc, file=sys.stdout)
            path = f"{prefix}crash-{hashlib.sha1(data).hexdigest()}"
            Path(path).write_bytes(data)
            print(f"artifact_prefix='{prefix}'; Test unit written to {path}", flush=True)
            code = 1
            break
    took = max(time.monotonic() - started, 1e-9)
    print(f"Done {runs} runs in {took:.0f} second(s)")
    print(f"stat::number_of_executed_units: {runs}")
    print(f"stat::average_exec_per_sec:     {int(runs / took)}")
    return code


def main(argv: list[str]) -> None:
    if "--random" in argv:
        sys.exit(random_engine([a for a in argv[1:] if a != "--random"]))
    import atheris

    _instrumented_imports()
    _limit_memory()
    atheris.Setup(argv, fuzz_one)
    atheris.Fuzz()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main(sys.argv)
