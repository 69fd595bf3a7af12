"""The compiled RAM record scanner against the pure Python decoder (the oracle).

Both must build identical run tables and counters on every corpus stream, on
builder streams of every record shape, and on seeded truncations and
corruptions of them: same runs before an error, same error type, offset and
message.  The tests skip when the extension is not built, except the one that
checks that ``MIGSTREAM_PURE_PYTHON=1`` switches it off.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import zlib
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from builder import (
    RAM_SAVE_FLAG_COMPRESS_PAGE,
    RAM_SAVE_FLAG_CONTINUE,
    RAM_SAVE_FLAG_FULL,
    RAM_SAVE_FLAG_PAGE,
    RAM_SAVE_FLAG_XBZRLE,
    RAM_SAVE_FLAG_ZERO,
    RamBlock,
    StreamBuilder,
    be16,
    be32,
    be64,
    cstr8,
)
from conftest import CorpusCache, stream_ids

import migstream
from migstream.errors import MigstreamError
from migstream.ram import records
from migstream.ram.model import RunTable
from migstream.ram.records import RamDecoder, RamOptions, RamState
from migstream.wire.reader import Reader

try:
    from migstream.ram import _scan
except ImportError:  # pragma: no cover - depends on the build
    _scan = None  # type: ignore[assignment]

needs_ext = pytest.mark.skipif(_scan is None, reason="the compiled scanner is not built")
pytestmark = needs_ext

PS = 4096
COLUMNS = ("block", "addr", "count", "kind", "offset", "stride", "skip", "aux", "channel")


@contextmanager
def scanner(compiled: bool) -> Iterator[None]:
    saved = records.compiled_scanner
    records.compiled_scanner = _scan.scan if compiled else None
    try:
        yield
    finally:
        records.compiled_scanner = saved


def table(runs: RunTable) -> dict[str, list[int]]:
    return {c: list(getattr(runs, c)) for c in COLUMNS}


def error_key(exc: BaseException | None) -> Any:
    if exc is None:
        return None
    if isinstance(exc, MigstreamError):
        return (type(exc).__name__, exc.offset, exc.message, str(exc.expected), str(exc.found))
    return (type(exc).__name__, str(exc))


# -- the decoder alone, over a RAM payload -----------------------------------------------------


def decode(payload: bytes, page_size: int = PS, compiled: bool = True) -> dict[str, Any]:
    """Read RAM sections (each up to EOS) until the payload ends or an error is raised."""
    state = RamState(RamOptions(page_size=page_size))
    r = Reader(memoryview(payload))
    err: BaseException | None = None
    sections = 0
    with scanner(compiled):
        try:
            while r.pos < r.end:
                RamDecoder(state).read_section(r)
                sections += 1
        except Exception as exc:  # both sides must fail alike, whatever the failure
            err = exc
    return {
        "runs": table(state.runs),
        "counters": dict(+state.counters),
        "current": state.current_block,
        "pos": r.pos if err is None else None,
        "sections": sections,
        "error": error_key(err),
    }


def same(payload: bytes, page_size: int = PS) -> dict[str, Any]:
    pure = decode(payload, page_size, compiled=False)
    fast = decode(payload, page_size, compiled=True)
    assert fast == pure
    return pure


def blocks_builder(page_size: int = PS) -> StreamBuilder:
    b = StreamBuilder(page_size=page_size)
    b.ram_mem_size(
        [
            RamBlock("pc.ram", 64 * page_size),
            RamBlock("/rom@etc/acpi/tables", 4 * page_size + 100),  # partial last page
            RamBlock("pc.bios", 8 * page_size),
            RamBlock("pad", page_size - 100),  # the announced total is a word with no flag bits
        ]
    )
    return b


def _page(n: int, page_size: int) -> bytes:
    body = (bytes([n & 0xFF, (n >> 8) & 0xFF]) + bytes(range(254))) * (page_size // 256 + 1)
    return body[:page_size]


def shapes(page_size: int = PS) -> dict[str, bytes]:
    """RAM payloads (MEM_SIZE, records, EOS) of every record shape."""
    ps = page_size
    out: dict[str, bytes] = {}

    def make(name: str, fill: Callable[[StreamBuilder], None]) -> None:
        b = blocks_builder(ps)
        fill(b)
        b.ram_eos()
        out[name] = bytes(b.buf)

    def contiguous(b: StreamBuilder) -> None:
        for i in range(20):
            b.ram_page("pc.ram", i * ps, _page(i, ps))
        for i in range(20, 40):
            b.ram_zero("pc.ram", i * ps)

    def scattered(b: StreamBuilder) -> None:
        for i in range(64):
            if i % 4 == 3:
                b.ram_page("pc.ram", i * ps, _page(i, ps))
            else:
                b.ram_zero("pc.ram", i * ps)

    def fills(b: StreamBuilder) -> None:
        for i, f in enumerate([0, 0, 7, 7, 7, 0, 255, 255, 0]):
            b.ram_zero("pc.ram", i * ps, f)

    def gaps(b: StreamBuilder) -> None:
        for i in (0, 1, 2, 5, 6, 9, 8, 7, 7, 20, 21):
            b.ram_page("pc.ram", i * ps, _page(i, ps))
        for i in (30, 31, 33, 34, 35, 34):
            b.ram_zero("pc.ram", i * ps)

    def switching(b: StreamBuilder) -> None:
        for rnd in range(3):
            b.ram_page("pc.ram", rnd * ps, _page(rnd, ps))
            b.ram_page("pc.ram", (rnd + 1) * ps, _page(rnd + 1, ps))
            b.ram_zero("pc.bios", rnd * ps)
            b.ram_zero("pc.bios", (rnd + 1) * ps)
            b.ram_page("/rom@etc/acpi/tables", 3 * ps, _page(9, ps))
            b.ram_page("/rom@etc/acpi/tables", 4 * ps, _page(9, ps))  # the partial last page
            b.ram_zero("/rom@etc/acpi/tables", 4 * ps, cont=False)
        b.ram_page("pc.ram", 10 * ps, _page(1, ps), cont=False)
        b.ram_page("pc.ram", 11 * ps, _page(1, ps), cont=False)
        b.ram_page("pc.ram", 12 * ps, _page(1, ps), cont=True)
        b.ram_page("pc.ram", 13 * ps, _page(1, ps), cont=True)

    def last_pages(b: StreamBuilder) -> None:
        for i in range(60, 64):
            b.ram_page("pc.ram", i * ps, _page(i, ps))
        for i in range(0, 5):
            b.ram_zero("/rom@etc/acpi/tables", i * ps, 3)
        for i in range(0, 5):
            b.ram_page("/rom@etc/acpi/tables", i * ps, _page(i, ps))

    def deltas(b: StreamBuilder) -> None:
        b.ram_page("pc.ram", 0, _page(1, ps))
        new = bytearray(_page(1, ps))
        xbzrle = ps <= 16384  # longer unchanged runs do not fit its two-byte lengths
        new[10:20] = b"0123456789"
        if xbzrle:
            b.ram_xbzrle("pc.ram", 0, bytes(new))
        b.ram_zero("pc.ram", ps)
        new[100:110] = b"abcdefghij"
        if xbzrle:
            b.ram_xbzrle("pc.ram", 0, bytes(new))
            b.ram_xbzrle("pc.bios", 0, bytes(new), prev=bytes(new[:-1]) + b"?")
        b.ram_compress_page("pc.ram", 2 * ps, _page(2, ps))
        b.ram_compress_page("pc.ram", 3 * ps, _page(3, ps))
        b.ram_compress_page("pc.bios", 3 * ps, _page(3, ps), cont=False)
        b.ram_zero("pc.ram", 4 * ps, cont=False)
        b.ram_zero("pc.ram", 5 * ps)

    def control(b: StreamBuilder) -> None:
        b.ram_page("pc.ram", 0, _page(1, ps))
        b.ram_multifd_flush()
        b.ram_page("pc.ram", ps, _page(2, ps))
        b.ram_eos()
        b.ram_zero("pc.ram", 2 * ps)
        b.ram_zero("pc.ram", 3 * ps)
        b.ram_eos()
        # a later block list: it keeps the blocks pages were sent for and adds one
        b.ram_mem_size(
            [
                RamBlock("pc.ram", 64 * ps),
                RamBlock("/rom@etc/acpi/tables", 4 * ps + 100),
                RamBlock("pc.bios", 8 * ps),
                RamBlock("pad", ps - 100),
                RamBlock("extra", 2 * ps),
            ]
        )
        b.ram_page("pc.ram", 0, _page(5, ps), cont=False)
        b.ram_page("pc.ram", ps, _page(6, ps))
        b.ram_zero("extra", ps)

    def odd_names(b: StreamBuilder) -> None:
        b.ram_mem_size([RamBlock("\xe9t\xe9", 4 * ps), RamBlock("", 4 * ps), RamBlock("x" * 255, 4 * ps)])
        b.ram_page("\xe9t\xe9", 0, _page(1, ps))
        b.ram_zero("", ps)
        b.ram_zero("", 2 * ps)
        b.ram_page("x" * 255, 3 * ps, _page(1, ps))

    def hostile_tail(b: StreamBuilder, tail: bytes) -> None:
        for i in range(6):
            b.ram_zero("pc.ram", i * ps)
        b.raw(tail)

    for name, fn in [
        ("contiguous", contiguous),
        ("scattered", scattered),
        ("fills", fills),
        ("gaps", gaps),
        ("switching", switching),
        ("last_pages", last_pages),
        ("deltas", deltas),
        ("control", control),
        ("odd_names", odd_names),
    ]:
        make(name, fn)
    c = RAM_SAVE_FLAG_CONTINUE
    tails = {
        "hook": be64(0x80),
        "full_flag": be64(6 * ps | RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_FULL | c) + b"\0",
        "unknown_flags": be64(6 * ps | RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_PAGE | c) + bytes(ps),
        "unknown_block": be64(RAM_SAVE_FLAG_ZERO) + cstr8("nope") + b"\0",
        "non_utf8_block": be64(RAM_SAVE_FLAG_ZERO) + cstr8(b"pc.ra\xff") + b"\0",
        "beyond_block": be64(64 * ps | RAM_SAVE_FLAG_ZERO | c) + b"\0",
        "far_beyond": be64(0xFFFF_FFFF_FFFF_F000 & ~(ps - 1) | RAM_SAVE_FLAG_PAGE | c) + bytes(ps),
        "xbzrle_bad_flag": be64(6 * ps | RAM_SAVE_FLAG_XBZRLE | c) + b"\x02" + be16(2) + b"\x01\x01",
        "xbzrle_too_long": be64(6 * ps | RAM_SAVE_FLAG_XBZRLE | c) + b"\x01" + be16(ps + 1) + bytes(ps + 1),
        "xbzrle_cut": be64(6 * ps | RAM_SAVE_FLAG_XBZRLE | c) + b"\x01" + be16(50) + bytes(10),
        "compress_too_long": be64(6 * ps | RAM_SAVE_FLAG_COMPRESS_PAGE | c) + be32((1 << 20) + 1),
        "compress_cut": be64(6 * ps | RAM_SAVE_FLAG_COMPRESS_PAGE | c) + be32(100) + bytes(99),
        "compress_ok": be64(6 * ps | RAM_SAVE_FLAG_COMPRESS_PAGE | c) + be32(4) + zlib.compress(b"")[:4],
        "page_cut": be64(6 * ps | RAM_SAVE_FLAG_PAGE | c) + bytes(ps - 1),
        "zero_cut": be64(6 * ps | RAM_SAVE_FLAG_ZERO | c),
        "word_cut": be64(6 * ps | RAM_SAVE_FLAG_ZERO | c)[:5],
        "name_cut": be64(6 * ps | RAM_SAVE_FLAG_ZERO) + b"\x10pc.r",
        "no_eos": b"",
    }
    for name, tail in tails.items():
        b = blocks_builder(ps)
        hostile_tail(b, tail)
        out[f"tail_{name}"] = bytes(b.buf)
    # CONTINUE before any block was named
    b = StreamBuilder(page_size=ps)
    b.ram_mem_size([RamBlock("pc.ram", 8 * ps)])
    b.ram_zero("pc.ram", 0, cont=True)
    b.ram_eos()
    out["tail_continue_first"] = bytes(b.buf)
    return out


SHAPES = shapes()


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_record_shape(name: str) -> None:
    got = same(SHAPES[name])
    if not name.startswith("tail_"):
        assert got["error"] is None and got["runs"]["count"], "the shape holds page records"


@pytest.mark.parametrize("page_size", [512, 1024, 16384, 65536])
def test_other_page_sizes(page_size: int) -> None:
    for name, payload in shapes(page_size).items():
        pure = decode(payload, page_size, compiled=False)
        assert decode(payload, page_size, compiled=True) == pure, name


def test_runs_are_merged_like_the_python_code() -> None:
    """An oracle of its own: the expected run boundaries of the scattered layout, written out."""
    got = same(SHAPES["scattered"])
    runs = got["runs"]
    # page 0 names the block (a run of 1), then ZERO x2, PAGE, ZERO x3, PAGE, ...
    assert runs["count"][:5] == [1, 2, 1, 3, 1]
    assert runs["kind"][:5] == [2, 2, 1, 2, 1]
    assert runs["addr"][:5] == [0, PS, 3 * PS, 4 * PS, 7 * PS]
    assert got["counters"] == {"zero": 48, "pages": 16, "eos": 1}
    assert sum(runs["count"]) == 64


def test_errors_stop_before_the_record() -> None:
    """The compiled scanner hands back the bad record: the error names its offset."""
    payload = SHAPES["tail_unknown_block"]
    bad = payload.rindex(cstr8("nope")) - 8
    got = same(payload)
    assert got["error"][0] == "StreamFormatError" and got["error"][1] == bad
    assert sum(got["runs"]["count"]) == 6


def test_scanner_direct_bounds() -> None:
    """The extension alone: positions outside the buffer, odd page sizes, short size tables."""
    payload = SHAPES["contiguous"]
    start = len(blocks_builder().buf)
    sizes = array("Q", [64 * PS, 4 * PS + 100, 8 * PS, PS - 100])
    names = {"pc.ram": 0, "/rom@etc/acpi/tables": 1, "pc.bios": 2, "pad": 3}
    mv = memoryview(payload)
    eos = len(payload) - 8
    full = _scan.scan(mv, start, len(payload), PS, sizes, names, -1)
    assert full[:2] == (eos, 0) and full[3:] == (20, 20, 0, 0, 0)
    assert _scan.scan(mv, start, len(payload) + 10**9, PS, sizes, names, -1) == full
    second = start + 8 + 7 + PS  # the second record, a CONTINUE one
    for pos, end, ps, sz, cur in [
        (-5, len(payload), PS, sizes, -1),  # before the buffer
        (len(payload) + 3, len(payload), PS, sizes, -1),  # after it
        (start, start + 100, PS, sizes, -1),  # the first record crosses the end
        (start, len(payload), 3000, sizes, -1),  # not a power of two
        (start, len(payload), 1 << 40, sizes, -1),  # larger than the scanner takes
        (start, len(payload), 1, sizes, -1),
        (start, len(payload), PS, array("Q"), -1),  # no block sizes
        (second, len(payload), PS, sizes, 7),  # a current block that is not in the table
        (second, len(payload), PS, sizes, -1),  # CONTINUE with no current block
    ]:
        got = _scan.scan(mv, pos, end, ps, sz, names, cur)
        assert got == (pos, cur, b"", 0, 0, 0, 0, 0)
    with pytest.raises(TypeError):
        _scan.scan("text", 0, 1, PS, sizes, names, -1)  # type: ignore[arg-type]


def test_run_table_bulk_and_single_appends_keep_their_order() -> None:
    t = RunTable()
    t.add(1, 0, 1, 1, 100, 0, 0, 0, 0)
    cols = array("q", [2, 3, 10, 20, 5, 6, 2, 1, 200, 300, 9, 9, 8, 8, 0, 7])  # 2 runs, column by column
    assert t.extend_columns(cols.tobytes(), channel=4) == 2
    assert t.extend_columns(b"") == 0
    t.add(9, 9, 9, 2, 9, 9, 9, 9, 1)
    assert t.extend_columns(array("q", range(8)).tobytes(), channel=5) == 1
    assert len(t) == 5
    assert list(t.block) == [1, 2, 3, 9, 0]
    assert list(t.offset) == [100, 200, 300, 9, 4]
    assert list(t.aux) == [0, 0, 7, 9, 7]
    assert list(t.channel) == [0, 4, 4, 1, 5]
    assert t[2].count == 6 and t[2].kind == 1
    with pytest.raises(ValueError):
        t.extend_columns(b"x" * 63)


def test_page_totals_compiled_and_pure() -> None:
    t = RunTable()
    rng = random.Random(3)
    for _ in range(500):
        t.add(rng.randrange(-1, 5), 0, rng.randrange(0, 1000), rng.randrange(1, 8), 0, 0, 0, 0)
    got = {}
    for compiled in (True, False):
        saved = records.compiled_totals
        records.compiled_totals = _scan.page_totals if compiled else None
        try:
            got[compiled] = records.page_totals(t, 3)
        finally:
            records.compiled_totals = saved
    assert got[True] == got[False]
    expect: dict[tuple[int, int], int] = {}
    for b, k, c in zip(t.block, t.kind, t.count):
        if 0 <= b < 3:
            expect[b, k] = expect.get((b, k), 0) + c
    assert got[True] == [(b, k, c) for (b, k), c in expect.items()]
    # kinds outside the table and sums past int64: the pure code answers
    t.add(0, 0, (1 << 63) - 1, 1, 0, 0, 0, 0)
    assert _scan.page_totals(t.block, t.kind, t.count, 3) is None
    assert _scan.page_totals(array("q", [0]), array("q", [9]), array("q", [1]), 1) is None


@pytest.mark.slow
def test_more_runs_than_one_call_returns() -> None:
    """Over 2^20 runs in one section (zero pages whose fill alternates): several calls, same table."""
    import numpy as np

    n = (1 << 20) + 4097
    b = StreamBuilder(page_size=PS)
    b.ram_mem_size([RamBlock("pc.ram", n * PS)])
    first = b.ram_zero("pc.ram", 0)
    recs = np.zeros((n - 1, 9), dtype=np.uint8)
    flags = np.uint64(RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_CONTINUE)
    words = (np.arange(1, n, dtype=np.uint64) * np.uint64(PS)) | flags
    recs[:, :8] = words.astype(">u8").view(np.uint8).reshape(-1, 8)
    recs[:, 8] = np.arange(1, n) % 2
    b.raw(recs.tobytes())
    b.ram_eos()
    payload = bytes(b.buf)
    got = same(payload)
    assert got["error"] is None and len(got["runs"]["count"]) == n
    one = _scan.scan(payload, first, len(payload), PS, array("Q", [n * PS]), {"pc.ram": 0}, -1)
    assert len(one[2]) // 64 == 1 << 20 and one[0] < len(payload) - 8  # one call stops at its cap
    assert got["counters"] == {"zero": n, "zero_nonzero_fill": n // 2, "eos": 1}


# -- seeded truncations and corruptions -------------------------------------------------------


def mutations(payload: bytes, seed: int, n: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    for _ in range(n):
        op = rng.randrange(4)
        if op == 0:  # cut anywhere
            yield payload[: rng.randrange(len(payload))]
        elif op == 1:  # flip a byte
            data = bytearray(payload)
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
            yield bytes(data)
        elif op == 2:  # a random record word flag / offset
            data = bytearray(payload)
            i = rng.randrange(max(1, len(data) - 8))
            data[i + 6 : i + 8] = rng.randrange(1 << 16).to_bytes(2, "big")
            yield bytes(data)
        else:  # a random length byte
            data = bytearray(payload)
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.choice([0, 1, 2, 0x20, 0x22, 0x28, 0xFF])
            yield bytes(data)


@pytest.mark.parametrize("name", sorted(n for n in SHAPES if not n.startswith("tail_")))
def test_mutated_shapes(name: str) -> None:
    payload = SHAPES[name]
    errors = 0
    for i, data in enumerate(mutations(payload, seed=zlib.crc32(name.encode()), n=150)):
        pure = decode(data, compiled=False)
        fast = decode(data, compiled=True)
        assert fast == pure, (name, i)
        errors += pure["error"] is not None
    assert errors, "the mutations hit something"


# -- whole streams ------------------------------------------------------------------------------


def open_both(path: Path) -> tuple[Any, Any]:
    out = []
    for compiled in (False, True):
        with scanner(compiled):
            try:
                with migstream.open(path) as s:
                    ram = s.parsed.ram
                    out.append(
                        {
                            "runs": table(ram.runs),
                            "stats": ram.stats,
                            "blocks": ram.blocks,
                            "records": [(r.offset, r.type, r.end) for r in s.records],
                            "truncated": error_key(s.truncated),
                        }
                    )
            except MigstreamError as exc:
                out.append({"error": error_key(exc)})
    return out[0], out[1]


def whole_stream(b: StreamBuilder) -> bytes:
    b.header()
    b.configuration("pc-i440fx-10.0")
    blocks = [RamBlock("pc.ram", 256 * PS), RamBlock("pc.bios", 16 * PS)]
    b.ram_start(2, blocks)
    for part in range(3):
        b.section_part(2)
        for i in range(part * 64, part * 64 + 64):
            if i % (part + 2) == 0:
                b.ram_page("pc.ram", i * PS, _page(i, PS))
            else:
                b.ram_zero("pc.ram", i * PS)
        b.ram_zero("pc.bios", part * PS)
        b.ram_eos()
    b.section_end(2)
    b.ram_page("pc.ram", 0, _page(7, PS), cont=True)
    b.ram_eos()
    b.eof()
    return b.data()


def test_whole_stream_and_its_cuts(tmp_path: Path) -> None:
    data = whole_stream(StreamBuilder())
    path = tmp_path / "s.mig"
    path.write_bytes(data)
    pure, fast = open_both(path)
    assert fast == pure and sum(pure["runs"]["count"]) > 190
    rng = random.Random(5)
    for cut in [rng.randrange(len(data)) for _ in range(25)]:
        path.write_bytes(data[:cut])
        pure, fast = open_both(path)
        assert fast == pure, cut


@pytest.mark.parametrize("stream_id", stream_ids())
def test_corpus_streams(corpus: CorpusCache, stream_id: str) -> None:
    pure, fast = open_both(corpus.raw(stream_id))
    assert fast == pure
    assert "error" in pure or len(pure["runs"]["count"]) > 0 or pure["stats"].mapped == 0


# -- switching it off ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, missing, compiled",
    [("1", False, False), ("", False, True), ("0", False, True), ("", True, False)],
)
def test_pure_python_switch(value: str, missing: bool, compiled: bool) -> None:
    env = {**os.environ, "MIGSTREAM_PURE_PYTHON": value}
    code = "from migstream.ram import records; print(records.compiled_scanner is not None)"
    if missing:  # as if the extension was not built
        code = "import sys; sys.modules['migstream.ram._scan'] = None; " + code
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(compiled)


@pytest.mark.parametrize("args", [["info", "--json"], ["info"]])
def test_cli_output_is_the_same(tmp_path: Path, args: list[str]) -> None:
    path = tmp_path / "s.mig"
    path.write_bytes(whole_stream(StreamBuilder()))
    outs = []
    for value in ("1", ""):
        env = {**os.environ, "MIGSTREAM_PURE_PYTHON": value}
        cmd = [sys.executable, "-m", "migstream.cli.main", args[0], str(path), *args[1:]]
        outs.append(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)
    assert outs[0] == outs[1]
    assert "zero" in outs[0]
