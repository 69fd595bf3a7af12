"""In-process mutation sweeps: every call either succeeds or raises a MigstreamError.

For each input (builder streams of tests/test_records_cli.py, and small
corpus streams slimmed to their first few RAM pages per block), seeded
mutants: truncations at and near every top-level record start and at random
places, single- and multi-byte corruptions (half near record or page-record
starts), length fields set to huge values, numbers of the JSON description
set to hostile values, duplicated and swapped records.  Each mutant runs
through :func:`fuzz_target.exercise` (open -> records -> device walk -> cpus
-> sections -> pagemap -> block and physical reads -> info/state JSON).

A mutant fails the test when anything but a ``MigstreamError`` escapes, when
it takes longer than ``MUTANT_SECONDS`` (SIGALRM interrupts it), or when it
runs out of memory: each input's sweep runs in a forked child under an
address-space limit (``RLIMIT_AS``) of what the child had plus ``HEADROOM``.
The report names the input, the seed, the mutant (index and operation), the
reproducer file written for it, and the traceback.

``MIGSTREAM_SWEEP_MUTANTS`` sets the number of random mutants per input
(three times that for the small builder streams),
``MIGSTREAM_SWEEP_SEED`` the seed.  Regression inputs found by the sweeps or
the fuzzer are at the end (``REGRESSIONS``).
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import resource
import signal
import struct
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from builder import RamBlock, StreamBuilder
from conftest import CorpusCache
from fuzz_target import (
    SEED_STREAMS,
    Hang,
    Outcome,
    channel_packets,
    exercise,
    page_record_ranges,
    slim_channel,
    slim_stream,
    time_limit,
)
from test_records_cli import (
    BLOCKS,
    compress_stream,
    every_command_stream,
    finish,
    hugepage_postcopy_stream,
    ignore_shared_stream,
    mapped_ram_stream,
    multifd_flush_stream,
    pg,
    postcopy_stream,
    precopy_stream,
    special_sections_stream,
    xbzrle_stream,
)

import migstream
from migstream.wire.constants import (
    MULTIFD_INITIAL_PACKET_SIZE,
    MULTIFD_MAGIC,
    MULTIFD_PACKET_BYTES,
    MULTIFD_VERSION,
)

SEED = os.environ.get("MIGSTREAM_SWEEP_SEED", "0")
MUTANTS = int(os.environ.get("MIGSTREAM_SWEEP_MUTANTS", "200"))  # random mutants per input
MUTANT_SECONDS = 5.0  # one mutant through every step
HEADROOM = 2 << 30  # address space a sweep may add to what the child had at fork
SWEEP_SECONDS = 600.0  # wall-clock guard for one input's whole sweep
NEAR = 24  # "near a record start": within this many bytes after it

# ---------------------------------------------------------------------------
# mutations


@dataclass(frozen=True)
class Mutation:
    """One reproducible change of an input: ``kind`` and its integer arguments."""

    kind: str
    args: tuple[int, ...]

    def apply(self, data: bytes) -> bytes:
        k, a = self.kind, self.args
        if k == "truncate":
            return data[: a[0]]
        if k == "xor":  # xor bytes from a[0] on with the bytes of a[1] (a[2] long)
            pos, value, n = a
            mask = value.to_bytes(n, "big")
            chunk = bytes(x ^ y for x, y in zip(data[pos : pos + n], mask))
            return data[:pos] + chunk + data[pos + len(chunk) :]
        if k == "set":  # a[2] bytes at a[0] := a[1] (big-endian)
            pos, value, n = a
            return data[:pos] + value.to_bytes(n, "big") + data[pos + n :]
        if k == "duplicate":  # bytes [a[0], a[1]) twice
            s, e = a
            return data[:e] + data[s:e] + data[e:]
        if k == "swap":  # [a[0], a[1]) and [a[1], a[2]) change places
            s, m, e = a
            return data[:s] + data[m:e] + data[s:m] + data[e:]
        if k == "delete":
            s, e = a
            return data[:s] + data[e:]
        if k == "desc-number":  # the JSON number at a[1] in the description at a[0] := a[2]
            rec, pos, value = a
            return _replace_desc_number(data, rec, pos, value)
        if k == "desc-field":  # field object a[1] of the description at a[0]: apply DESC_CHANGES[a[2]]
            rec, index, change = a
            return _change_desc_field(data, rec, index, DESC_CHANGES[change])
        raise ValueError(f"unknown mutation {k}")

    def describe(self) -> str:
        return f"{self.kind}({', '.join(hex(x) if abs(x) > 9 else str(x) for x in self.args)})"


_NUMBER = re.compile(rb"-?\d+")


def _replace_desc_number(data: bytes, rec: int, pos: int, value: int) -> bytes:
    """Replace the number at ``pos`` of the VMDESCRIPTION record at ``rec``; fix its be32 length."""
    (length,) = struct.unpack_from(">I", data, rec + 1)
    m = _NUMBER.match(data, pos)
    if m is None:
        return data
    text = str(value).encode()
    out = data[:pos] + text + data[m.end() :]
    new_length = length + len(text) - (m.end() - pos)
    return out[: rec + 1] + struct.pack(">I", new_length & 0xFFFFFFFF) + out[rec + 5 :]


_DELETE = object()
#: Changes of one field object of the JSON description (key -> new value, or _DELETE).
DESC_CHANGES: list[dict[str, object]] = [
    *(
        {"type": t}
        for t in (
            "struct",
            "uint64",
            "int32 equal",
            "bool",
            "nullptr",
            "capability",
            "vstruct",
            "tmp",
            "buffer",
            "unused_buffer",
            "float64",
            "timer",
            "no-such-type",
            7,
        )
    ),
    *({"size": v} for v in (0, 1, 3, 9, 1 << 20, 1 << 40, -1, "4", None, True)),
    *({"array_len": v} for v in (0, 2, 1 << 20, 1 << 31, -1, "2", 2.5)),
    {"size": 0, "array_len": 1 << 20},
    {"size": 0, "array_len": 100_000, "type": "struct", "struct": {"fields": []}},
    {"type": "struct", "struct": {}},
    {"type": "struct", "struct": "x"},
    {"type": "struct", "struct": {"fields": [{}]}},
    {"type": "struct", "struct": {"fields": "x", "subsections": [{}]}},
    {"type": "struct", "size": 1, "array_len": 3, "struct": {"fields": []}},
    {"type": "vstruct", "fields": [{"name": "a", "type": "uint64", "size": 8}]},
    {"type": "vstruct", "fields": "x"},
    {"fields": [1, 2]},
    {"subsections": [{"vmsd_name": "x", "fields": []}]},
    {"name": _DELETE},
    {"type": _DELETE},
    {"size": _DELETE},
    {"name": 5},
]


def _field_objects(node: object, out: list[dict[str, object]]) -> list[dict[str, object]]:
    """Every object of the description that has a "name" or "type" key, depth first."""
    if isinstance(node, dict):
        if "name" in node or "type" in node:
            out.append(node)
        for v in node.values():
            _field_objects(v, out)
    elif isinstance(node, list):
        for v in node:
            _field_objects(v, out)
    return out


def _change_desc_field(data: bytes, rec: int, index: int, change: dict[str, object]) -> bytes:
    """Rewrite the VMDESCRIPTION record at ``rec`` with field object ``index`` changed."""
    (length,) = struct.unpack_from(">I", data, rec + 1)
    end = rec + 5 + length
    doc = json.loads(data[rec + 5 : end])
    fields = _field_objects(doc, [])
    if not fields:
        return data
    target = fields[index % len(fields)]
    for key, value in change.items():
        if value is _DELETE:
            target.pop(key, None)
        else:
            target[key] = value
    text = json.dumps(doc).encode()
    return data[: rec + 1] + struct.pack(">I", len(text)) + text + data[end:]


HUGE_VALUES = [
    (0xFF, 1),
    (0xFFFF, 2),
    (0xFFFFFFFF, 4),
    (0x7FFFFFFF, 4),
    (0x80000000, 4),
    (0xFFFFFFFFFFFFFFFF, 8),
    (0x7FFFFFFFFFFFF000, 8),
    (0x0000010000000000, 8),
]
DESC_VALUES = [0, -1, 1 << 31, 1 << 63, 10**12, 65536, 1 << 20, 3]


@dataclass
class Input:
    """An input to mutate, with what its unmutated parse says about its structure."""

    name: str
    data: bytes
    records: list[tuple[int, int]] = field(default_factory=list)  # top-level (start, end)
    pages: list[int] = field(default_factory=list)  # RAM page record and block list entry starts
    desc: tuple[int, int, int] | None = None  # VMDESCRIPTION (record, json start, json end)
    #: When ``data`` is multifd channel 1: the main stream and the other channels it goes with.
    main: bytes | None = None
    channels: tuple[bytes, ...] = ()

    def run(self, data: bytes) -> Outcome:
        """``exercise`` a mutant of ``data`` (with the main stream and channels it belongs to)."""
        if self.main is None:
            return exercise(data, channels=self.channels)
        return exercise(self.main, channels=(data, *self.channels))

    @classmethod
    def of(cls, name: str, data: bytes) -> Input:
        inp = cls(name, data)
        with _open(data) as s:
            inp.records = [(r.offset, r.end) for r in s.records if r.depth == 0 and r.end > r.offset]
            inp.pages = [start for start, _end, _b in page_record_ranges(s)]
            # RAM block list entries (name, length, page size, mapped-ram header) count as starts too.
            inp.pages += [b.offset + k for b in s.ram_blocks for k in (0, 16, 32)]
            for r in s.records:
                if r.type == "VMDESCRIPTION":
                    inp.desc = (r.offset, r.offset + 5, r.end)
        return inp

    @property
    def starts(self) -> list[int]:
        return sorted({s for s, _e in self.records} | set(self.pages))


def _open(data: bytes) -> migstream.Stream:
    return migstream.open(io.BytesIO(data))


def mutants(inp: Input, n: int = MUTANTS, seed: str = SEED) -> list[Mutation]:
    """The deterministic truncations, then ``n`` seeded random mutations of ``inp``."""
    data = inp.data
    size = len(data)
    out: list[Mutation] = []
    rng = random.Random(f"sweep:{inp.name}:{seed}")
    for s, _e in inp.records:  # at and near every record start
        out.append(Mutation("truncate", (s,)))
        out.append(Mutation("truncate", (min(size - 1, s + 1 + rng.randrange(NEAR)),)))
    starts = inp.starts

    def pos(near: bool) -> int:
        if near and starts:
            return min(size - 1, rng.choice(starts) + rng.randrange(NEAR))
        return rng.randrange(size)

    kinds = ["truncate", "xor1", "xorN", "huge", "huge", "duplicate", "swap", "delete"]
    if inp.desc is not None:
        kinds += ["desc-number", "desc-number", "desc-field", "desc-field", "desc-field"]
    for i in range(n):
        near = i % 2 == 0
        kind = rng.choice(kinds)
        if kind == "truncate":
            out.append(Mutation("truncate", (pos(near),)))
        elif kind == "xor1":
            out.append(Mutation("xor", (pos(near), rng.randrange(1, 256), 1)))
        elif kind == "xorN":
            n_bytes = rng.randrange(2, 9)
            p = min(pos(near), size - n_bytes)
            out.append(Mutation("xor", (p, rng.getrandbits(8 * n_bytes) | 1, n_bytes)))
        elif kind == "huge":
            value, width = rng.choice(HUGE_VALUES)
            p = min(pos(True), size - width)
            out.append(Mutation("set", (p, value, width)))
        elif kind in ("duplicate", "delete") and inp.records:
            s, e = rng.choice(inp.records)
            out.append(Mutation(kind, (s, e)))
        elif kind == "swap" and len(inp.records) > 1:
            j = rng.randrange(len(inp.records) - 1)
            (s, m), (m2, e) = inp.records[j], inp.records[j + 1]
            if m == m2:
                out.append(Mutation("swap", (s, m, e)))
            else:
                out.append(Mutation("duplicate", (s, m)))
        elif kind == "desc-field" and inp.desc is not None:
            out.append(
                Mutation(
                    "desc-field", (inp.desc[0], rng.randrange(1 << 16), rng.randrange(len(DESC_CHANGES)))
                )
            )
        elif kind == "desc-number" and inp.desc is not None:
            rec, lo, hi = inp.desc
            numbers = [m.start() for m in _NUMBER.finditer(data, lo, hi)]
            if numbers:
                out.append(Mutation("desc-number", (rec, rng.choice(numbers), rng.choice(DESC_VALUES))))
            else:
                out.append(Mutation("truncate", (pos(near),)))
        else:
            out.append(Mutation("truncate", (pos(near),)))
    return out


# ---------------------------------------------------------------------------
# running a sweep in a forked child


@dataclass
class Finding:
    label: str
    reproducer: str
    error: str


@dataclass
class SweepResult:
    mutants: int
    cpu_seconds: float
    max_rss_mb: float
    findings: list[Finding]
    outcomes: dict[str, int]  # "ok" / "MigstreamError in <step>" counts


def _address_space() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _run_child(inp: Input, muts: Sequence[Mutation], repro_dir: Path, report: int, progress: Path) -> None:
    limit = _address_space() + HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    findings: list[dict[str, str]] = []
    outcomes: dict[str, int] = {}
    for i, m in enumerate(muts):
        label = f"{inp.name} seed={SEED} mutant #{i} {m.describe()}"
        progress.write_text(label)
        data = m.apply(inp.data)
        try:
            with time_limit(MUTANT_SECONDS):
                o = inp.run(data)
            key = "ok" if not o.errors else "MigstreamError in " + next(iter(o.errors))
            outcomes[key] = outcomes.get(key, 0) + 1
        except (Exception, Hang) as exc:  # noqa: BLE001 - anything but a MigstreamError is a finding
            path = repro_dir / f"{re.sub(r'[^A-Za-z0-9.-]+', '_', inp.name)}-{i}.mig"
            path.write_bytes(data)
            tb = "".join(traceback.format_exception(exc))
            findings.append({"label": label, "reproducer": str(path), "error": tb})
    os.write(report, json.dumps({"findings": findings, "outcomes": outcomes}).encode())


def run_sweep(inp: Input, muts: Sequence[Mutation], repro_dir: Path) -> SweepResult:
    """Run ``muts`` of ``inp`` in a forked child (memory limit, hang guard); findings come back."""
    progress = repro_dir / f".progress-{os.getpid()}"
    rfd, wfd = os.pipe()
    t0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(rfd)
            _run_child(inp, muts, repro_dir, wfd, progress)
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + SWEEP_SECONDS
    os.set_blocking(rfd, False)
    status = None
    while status is None:
        try:
            chunk = os.read(rfd, 1 << 16)
            if chunk:
                chunks.append(chunk)
        except BlockingIOError:
            pass
        done, st, _ru = os.wait4(pid, os.WNOHANG)
        if done:
            status = st
        elif time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status, _ = os.wait4(pid, 0)
        else:
            time.sleep(0.01)
    while True:
        try:
            chunk = os.read(rfd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(rfd)
    t1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (t1.ru_utime - t0.ru_utime) + (t1.ru_stime - t0.ru_stime)
    last = progress.read_text() if progress.exists() else "(none)"
    progress.unlink(missing_ok=True)
    if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0) or not chunks:
        raise AssertionError(
            f"the sweep of {inp.name} did not finish (wait status {status:#x}); last mutant: {last}"
        )
    doc = json.loads(b"".join(chunks))
    return SweepResult(
        len(muts),
        cpu,
        t1.ru_maxrss / 1024,
        [Finding(**f) for f in doc["findings"]],
        doc["outcomes"],
    )


def assert_clean(result: SweepResult, name: str) -> None:
    if not result.findings:
        return
    lines = [f"{len(result.findings)} of {result.mutants} mutants of {name} escaped the error contract:"]
    for f in result.findings[:5]:
        lines += [f"--- {f.label}", f"reproducer: {f.reproducer}", f.error.rstrip()]
    raise AssertionError("\n".join(lines))


def sweep(inp: Input, repro_dir: Path, n: int = MUTANTS) -> SweepResult:
    result = run_sweep(inp, mutants(inp, n), repro_dir)
    print(
        f"{inp.name}: {result.mutants} mutants, {result.cpu_seconds:.1f} s CPU, "
        f"child max RSS {result.max_rss_mb:.0f} MB, outcomes {result.outcomes}"
    )
    assert_clean(result, inp.name)
    return result


# ---------------------------------------------------------------------------
# the harness itself can fail


def test_mutations_are_seeded_and_do_what_they_say() -> None:
    inp = Input.of("precopy", precopy_stream().data())
    a, b = mutants(inp, 40), mutants(inp, 40)
    assert a == b and len(a) == 2 * len(inp.records) + 40
    assert mutants(inp, 40, seed="other") != a
    data = bytes(range(16))
    assert Mutation("truncate", (3,)).apply(data) == data[:3]
    assert Mutation("xor", (2, 0x0101, 2)).apply(data) == data[:2] + bytes([3, 2]) + data[4:]
    assert Mutation("set", (14, 0xFFFFFFFF, 4)).apply(data) == data[:14] + b"\xff" * 4
    assert Mutation("duplicate", (1, 3)).apply(data) == data[:3] + data[1:3] + data[3:]
    assert Mutation("swap", (1, 3, 4)).apply(data) == data[:1] + data[3:4] + data[1:3] + data[4:]
    assert Mutation("delete", (1, 3)).apply(data) == data[:1] + data[3:]
    desc = inp.desc
    assert desc is not None
    data_pos = inp.data.index(b'"version": 2', desc[1]) + 11
    out = Mutation("desc-number", (desc[0], data_pos, 77)).apply(inp.data)
    assert out[data_pos : data_pos + 2] == b"77" and len(out) == len(inp.data) + 1
    with _open(out) as s:
        assert s.vmdesc is not None


def test_sweep_reports_escapes_and_hangs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A target that raises something else, or hangs, is reported with its reproducer."""

    def bad(data: bytes, **kw: object) -> Outcome:
        if len(data) % 3 == 0:
            raise IndexError("escaped")
        if len(data) % 3 == 1:
            while True:
                pass
        return Outcome()

    monkeypatch.setitem(globals(), "exercise", bad)
    inp = Input("toy", bytes(20), records=[(0, 20)])
    muts = [Mutation("truncate", (n,)) for n in (3, 4, 5)]
    monkeypatch.setitem(globals(), "MUTANT_SECONDS", 0.2)
    result = run_sweep(inp, muts, tmp_path)
    errors = sorted(f.error.splitlines()[-1] for f in result.findings)
    assert len(result.findings) == 2, result.findings
    assert any("IndexError: escaped" in e for e in errors)
    assert any("Hang" in f.error for f in result.findings)
    assert result.outcomes == {"ok": 1}
    for f in result.findings:
        assert Path(f.reproducer).read_bytes() in (bytes(3), bytes(4))
    with pytest.raises(AssertionError, match="escaped the error contract"):
        assert_clean(result, "toy")


def test_sweep_reports_memory_blowup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def greedy(data: bytes, **kw: object) -> object:
        return bytearray(HEADROOM + (1 << 30))

    monkeypatch.setitem(globals(), "exercise", greedy)
    result = run_sweep(Input("toy", bytes(8)), [Mutation("truncate", (4,))], tmp_path)
    assert len(result.findings) == 1 and "MemoryError" in result.findings[0].error


# ---------------------------------------------------------------------------
# builder streams

RECIPES: dict[str, Callable[[], StreamBuilder]] = {
    "precopy": precopy_stream,
    "precopy-nofooter-noconfig": lambda: precopy_stream(footers=False, config=False, padding=100),
    "postcopy": postcopy_stream,
    "every-command": every_command_stream,
    "special-sections": special_sections_stream,
    "xbzrle": xbzrle_stream,
    "mapped-ram": mapped_ram_stream,
    "compress": compress_stream,
    "multifd-flush": multifd_flush_stream,
    "ignore-shared": ignore_shared_stream,
    "hugepage-postcopy": hugepage_postcopy_stream,
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_builder_stream_sweep(name: str, tmp_path: Path) -> None:
    inp = Input.of(f"builder:{name}", RECIPES[name]().data())
    result = sweep(inp, tmp_path, 3 * MUTANTS)  # small streams: cheap mutants
    past_open = sum(n for k, n in result.outcomes.items() if k != "MigstreamError in open")
    assert past_open > result.mutants // 4  # most cuts and many corruptions still open


# ---------------------------------------------------------------------------
# corpus streams, slimmed to the first pages of each block

CORPUS_STREAMS = SEED_STREAMS


def _shape(data: bytes) -> tuple[list[tuple[object, ...]], list[str], dict[int, int]]:
    with _open(data) as s:
        assert s.truncated is None and s.parsed.eof_offset is not None
        records = [(r.type, r.section_id, r.name, r.command, r.depth) for r in s.records]
        per_block: dict[int, int] = {}
        for _start, _end, block in page_record_ranges(s):
            per_block[block] = per_block.get(block, 0) + 1
        return records, [b.name for b in s.ram_blocks], per_block


@pytest.mark.parametrize("stream_id", ["qemu-7.2/pc-running-xbzrle", "qemu-10.0/pc-postcopy"])
def test_slim_stream_keeps_every_record(stream_id: str, corpus: CorpusCache) -> None:
    """The seed slimmer drops only page records past the first few of each block."""
    full = corpus.raw(stream_id).read_bytes()
    slim = slim_stream(full, keep_per_block=2)
    assert len(slim) < len(full) // 4
    records, blocks, pages = _shape(full)
    slim_records, slim_blocks, slim_pages = _shape(slim)
    assert slim_records == records and slim_blocks == blocks
    assert set(slim_pages) == set(pages) and all(n <= 2 for n in slim_pages.values()), slim_pages
    assert not exercise(slim).errors.keys() - {"render_state", "cpus"}


@pytest.mark.parametrize("stream_id", CORPUS_STREAMS)
def test_corpus_stream_sweep(stream_id: str, corpus: CorpusCache, tmp_path: Path) -> None:
    data = slim_stream(corpus.raw(stream_id).read_bytes())
    inp = Input.of(f"corpus:{stream_id}", data)
    sweep(inp, tmp_path)


# ---------------------------------------------------------------------------
# multifd channel captures (the first few packets), mutated next to their main stream

MULTIFD_STREAMS = ["qemu-10.0/pc-tcp-multifd", "qemu-7.2/pc-tcp-multifd"]


@pytest.mark.parametrize("stream_id", MULTIFD_STREAMS)
def test_multifd_channel_sweep(stream_id: str, corpus: CorpusCache, tmp_path: Path) -> None:
    main = corpus.raw(stream_id).read_bytes()
    ps = 4096
    ch1, ch2 = (slim_channel(corpus.raw(stream_id, f"multifd-{i}.bin").read_bytes(), ps) for i in (1, 2))
    assert not exercise(main, channels=(ch1, ch2)).errors  # the slimmed captures read cleanly
    inp = Input(f"multifd:{stream_id}:channel-1", ch1, main=main, channels=(ch2,))
    inp.records = channel_packets(ch1, ps)
    assert len(inp.records) >= 3
    inp.records.insert(0, (0, inp.records[0][0]))  # the initial packet
    sweep(inp, tmp_path)


# ---------------------------------------------------------------------------
# the coverage-guided fuzzer, for a minute

FUZZ_SECONDS = int(os.environ.get("MIGSTREAM_FUZZ_SECONDS", "60"))


@pytest.mark.slow
def test_fuzz_for_a_minute(tmp_path: Path) -> None:
    """bench/fuzz.py (atheris, or the pure-Python engine without it) finds nothing in FUZZ_SECONDS."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, str(root / "bench" / "fuzz.py"), "--seconds", str(FUZZ_SECONDS)]
        + ["--workdir", str(tmp_path / "fuzz"), "--json"],
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS + 300,
        cwd=root,
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr[-2000:]
    summary = json.loads(lines[-1])
    print("\n".join(lines[:-1]))
    assert summary["seeds"] >= len(RECIPES) and summary["execs"] > 100, summary
    assert not summary["findings"], "\n".join(lines[:-1])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


# ---------------------------------------------------------------------------
# regressions: inputs the sweeps or the fuzzer once broke

REGRESSIONS: list[tuple[str, Mutation]] = [
    # Cut inside a section's first record: the section is named but has no record (IndexError).
    ("precopy", Mutation("truncate", (0x2C,))),
]


def many_names_stream(section: str, n: int) -> bytes:
    """A live section whose ``n`` records each name another block device or dirty bitmap."""
    b = StreamBuilder()
    b.header()
    b.configuration("pc-i440fx-7.2")
    b.section_start(1, section, 0, 1)
    for i in range(n):
        if section == "block":
            b.block_chunk(f"drive{i}", i, None)
        else:
            b.dirty_bitmap_complete("disk0", f"bitmap{i}")
    if section == "block":
        b.block_eos()
    else:
        b.dirty_bitmap_eos()
    b.eof()
    b.vmdescription()
    return b.data()


@pytest.mark.parametrize("section", ["block", "dirty-bitmap"])
def test_regression_many_distinct_names_stay_linear(section: str) -> None:
    """Each new name was looked up in a list: 100k names (1.5 MB) took about a minute."""
    data = many_names_stream(section, 100_000)
    with time_limit(MUTANT_SECONDS):
        out = exercise(data)
    assert not out.errors, out.errors
    with _open(data) as s:
        (live,) = s.parsed.live_sections
        names = live.summaries[0][2]["devices" if section == "block" else "bitmaps"]
        assert len(names) == 100_000 and names[:2] == (
            ["drive0", "drive1"] if section == "block" else ["bitmap0", "bitmap1"]
        )


def test_regression_many_undecoded_sections_stay_cheap() -> None:
    """Each skip to a footer copied and searched a 1 MiB chunk, however close the footer:
    100k small sections of an unknown live device followed by 4 MiB took over 6 s of CPU
    (now about 2 s: the per-record work)."""
    b = StreamBuilder()
    b.header()
    b.configuration("pc-i440fx-7.2")
    b.section_start(1, "mystery", 0, 1, b"abc")
    for _ in range(100_000):
        b.section_part(1, b"x")
    b.section_end(1)
    b.eof()
    b.vmdescription()
    b.padding(4 << 20)
    data = b.data()
    with time_limit(MUTANT_SECONDS):
        out = exercise(data)
    assert not out.errors, out.errors
    with _open(data) as s:
        assert len(s.records) == 100_000 + 6
        assert s.parsed.live_sections[0].summaries[-1][2] == {"skipped_bytes": 0}


def test_regression_deeply_nested_description_is_ignored() -> None:
    """JSON nested 50k deep after EOF was reported as "the stream nests records too deeply"."""
    b = precopy_stream(vmdesc=False)
    b.vmdescription(raw_json=b'{"a":' * 50_000 + b"1" + b"}" * 50_000)
    out = exercise(b.data())
    assert "open" not in out.errors, out.errors
    with _open(b.data()) as s:
        assert s.vmdesc is None and s.truncated is None
        assert any("does not check out" in d.message for d in s.diagnostics), s.diagnostics


def _later_block_list_stream(blocks: Sequence[Any], cut: int = 0) -> bytes:
    """Pages of pc.ram, then a second RAM block list (``blocks``) in a later part; ``cut``
    bytes cut off the end of it."""
    b = StreamBuilder()
    b.header()
    b.configuration("pc-i440fx-10.0")
    b.ram_start(1, BLOCKS)
    b.section_part(1)
    b.ram_page("pc.ram", 4096, pg(1))
    b.ram_eos()
    b.section_part(1)
    b.ram_mem_size(blocks)
    if cut:
        return b.data()[:-cut]
    b.ram_eos()
    return finish(b).data()


def test_regression_later_block_list() -> None:
    """A second block list replaced the first, also when cut short or missing blocks that
    pages were already indexed against: the page map then looked up blocks that were gone."""
    again = _later_block_list_stream(BLOCKS)
    with _open(again) as s:
        assert s.truncated is None and [b.name for b in s.ram_blocks] == [b.name for b in BLOCKS]
        assert s.block("pc.ram").pread(4096, 16) == pg(1)[:16]
    assert not exercise(again).errors.keys() - {"cpus"}
    grown = _later_block_list_stream([*BLOCKS, RamBlock("extra", 4096)])
    with _open(grown) as s:
        assert [b.name for b in s.ram_blocks][-1] == "extra"
    cut = _later_block_list_stream(BLOCKS, cut=55)  # inside the first entry
    out = exercise(cut)  # once an IndexError in the page map
    assert not out.errors.keys() - {"cpus", "render_state"}, out.errors
    with _open(cut) as s:
        assert s.truncated is not None and [b.name for b in s.ram_blocks] == [b.name for b in BLOCKS]
        assert s.block("pc.ram").pread(4096, 16) == pg(1)[:16]
    fewer = _later_block_list_stream(BLOCKS[1:])
    out = exercise(fewer)
    assert "drops or changes a block" in out.errors.get("open", ""), out.errors
    assert "drops or changes a block" in exercise(_later_block_list_stream([])).errors.get("open", "")


def multifd_channel(packets: Sequence[tuple[int, str, Sequence[int]]], ps: int = 4096) -> bytes:
    """A multifd channel capture: initial packet, then (packet_num, block, page offsets) packets."""
    slots = MULTIFD_PACKET_BYTES // ps
    out = bytearray(
        struct.pack(">II", MULTIFD_MAGIC, MULTIFD_VERSION).ljust(MULTIFD_INITIAL_PACKET_SIZE, b"\0")
    )
    for num, block, offsets in packets:
        n = len(offsets)
        head = struct.pack(">IIIIIIQI", MULTIFD_MAGIC, MULTIFD_VERSION, 0, slots, n, n * ps, num, 0)
        head = head.ljust(64, b"\0") + block.encode().ljust(256, b"\0")
        head += b"".join(struct.pack(">Q", o) for o in offsets).ljust(8 * slots, b"\0")
        out += head + bytes(range(256)) * (16 * n)
    return bytes(out)


@pytest.mark.parametrize(
    ("packets", "words"),
    [
        ([((1 << 64) - 1, "pc.ram", [0])], "packet number"),  # once an OverflowError in the run table
        ([(1, "pc.ram", [(1 << 64) - 4096])], "outside its block"),  # once read as a negative offset
    ],
    ids=["packet-num-2**64-1", "page-offset-2**64-4096"],
)
def test_regression_multifd_packet_fields(packets: list[tuple[int, str, list[int]]], words: str) -> None:
    main = precopy_stream().data()
    good = multifd_channel([(1, "pc.ram", [5 * 4096])])
    assert not exercise(main, channels=(good,)).errors  # the channel builder writes valid captures
    with _open(main) as s:
        assert s.block("pc.ram").pread(5 * 4096, 16) == bytes(16)
    with migstream.open(io.BytesIO(main), channels=[io.BytesIO(good)]) as s:
        assert s.block("pc.ram").pread(5 * 4096, 16) == bytes(range(16))
    out = exercise(main, channels=(multifd_channel(packets),))
    assert words in out.errors.get("open", ""), out.errors


@pytest.mark.parametrize(
    ("recipe", "mutation"), REGRESSIONS, ids=[f"{r}-{m.describe()}" for r, m in REGRESSIONS]
)
def test_regression(recipe: str, mutation: Mutation) -> None:
    exercise(mutation.apply(RECIPES[recipe]().data()))  # raises unless only MigstreamErrors
