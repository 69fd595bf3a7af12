"""Memory use of `memory` and `info` is bounded by what the stream holds, whatever RAM it names.

Each stream is built here (the builder knows what it wrote: that is the oracle
for the output bytes); the CLI runs in a child process whose peak anonymous
RSS is read from /proc/PID/status while it runs.
"""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import time
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from builder import (
    RamBlock,
    StreamBuilder,
    pattern_pages,
    ram_compressed,
    ram_xbzrle_delta,
    sparse_ram_records,
    uleb128_2,
)
from qemu_harness import rss_anon

import migstream

CLI = [sys.executable, "-m", "migstream"]
MIB = 1 << 20
#: What the interpreter, numpy and migstream take before any stream is read (generous).
BASELINE = 60 * MIB

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")


def run_measured(args: list[str], tmp: Path) -> tuple[int, int, str]:
    """Run the CLI; returns (exit status, peak anonymous RSS in bytes, stderr)."""
    out, err = tmp / "cli.out", tmp / "cli.err"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen([*CLI, *args], stdout=fo, stderr=fe, stdin=subprocess.DEVNULL)
        peak = 0
        while True:
            peak = max(peak, rss_anon(proc.pid))
            pid, status, _usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.005)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, peak, err.read_text()


def _start(b: StreamBuilder, blocks: list[RamBlock], *, target_page_bits: int | None = None) -> None:
    b.header()
    b.configuration("pc-i440fx-10.0", target_page_bits=target_page_bits)
    b.ram_start(1, blocks)
    b.section_part(1)


def _end(b: StreamBuilder) -> None:
    b.ram_eos()
    b.eof()


def _write(path: Path, head: StreamBuilder, chunks: Iterable[bytes]) -> None:
    """The builder's bytes so far, then ``chunks``, then the end of the stream (written by ``head`` anew)."""
    with open(path, "wb") as f:
        f.write(head.buf)
        for c in chunks:
            f.write(c)
        head.buf = bytearray()
        _end(head)
        f.write(head.data())


def _placement(stream: Path, block: str) -> list[tuple[int, int, int]]:
    """(gpa, block offset, size) of each placement of ``block`` in the raw image."""
    with migstream.open(str(stream)) as s:
        return [(p.gpa, p.block_offset, p.size) for p in s.memory_map().placements if p.block == block]


def _pages_at(
    image: Path, places: list[tuple[int, int, int]], page_size: int, pages: np.ndarray
) -> np.ndarray:
    """The bytes of block pages ``pages`` in the raw image (one row per page)."""
    out = np.zeros((len(pages), page_size), dtype=np.uint8)
    with open(image, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        try:
            img = np.frombuffer(mm, dtype=np.uint8)
            for gpa, boff, size in places:
                sel = np.flatnonzero((pages * page_size >= boff) & (pages * page_size < boff + size))
                at = gpa + pages[sel] * page_size - boff
                if page_size <= 1 << 16:
                    out[sel] = img[at[:, None] + np.arange(page_size)]
                else:
                    for i, a in zip(sel.tolist(), at.tolist()):
                        out[i] = img[a : a + page_size]
            del img
        finally:
            mm.close()
    return out


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


# -- one zero page at the end of a 4 TiB block ------------------------------------------------


@pytest.mark.parametrize("fill", [0, 0x5A])
def test_one_page_at_the_end_of_a_4tib_block(tmp_path: Path, fill: int) -> None:
    size = 4 << 40
    b = StreamBuilder()
    _start(b, [RamBlock("pc.ram", size)])
    b.ram_zero("pc.ram", size - 4096, fill)
    _end(b)
    stream = b.write(tmp_path / "s.mig")
    assert stream.stat().st_size < 200
    for args in (["info", str(stream)], ["memory", str(stream), "-o", str(tmp_path / "m.raw")]):
        rc, peak, err = run_measured(args, tmp_path)
        assert rc == 0, err
        assert peak < BASELINE, (args[0], peak)
    image = tmp_path / "m.raw"
    got = _pages_at(image, _placement(stream, "pc.ram"), 4096, np.array([size // 4096 - 1]))
    assert (got == fill).all()
    assert _allocated(image) <= (64 << 10 if fill else 0)


# -- many built pages: XBZRLE and compressed ---------------------------------------------------


def _xbzrle_literal(at: int, lit: bytes) -> bytes:
    """A delta that changes ``lit`` at ``at`` (< 16384) and keeps the rest of the page."""
    return uleb128_2(at) + uleb128_2(len(lit)) + lit


def _built_stream(path: Path, page_bits: int, n: int) -> dict[int, bytes]:
    """``n`` XBZRLE pages (against pages not in the stream), ``n`` compressed pages and a few
    XBZRLE chains on a plain page; returns the expected non-zero parts {page: first bytes}."""
    ps = 1 << page_bits
    b = StreamBuilder(page_size=ps)
    _start(b, [RamBlock("pc.ram", (3 * n + 8) * ps)], target_page_bits=page_bits)
    expect: dict[int, bytes] = {}
    for i in range(n):
        lit = f"x{i:07d}".encode()
        ram_xbzrle_delta(b, "pc.ram", i * ps, _xbzrle_literal(i % 1000, lit))
        expect[i] = bytes(i % 1000) + lit
    comp = zlib.compressobj(9)
    for i in range(n, 2 * n):
        head = f"c{i:07d}".encode()
        c = zlib.compressobj(9)
        data = c.compress(head) + c.compress(bytes(ps - len(head))) + c.flush()
        ram_compressed(b, "pc.ram", i * ps, data)
        expect[i] = head
    del comp
    # A chain: a plain page, then two XBZRLE records on it; a compressed page then XBZRLE on it.
    base = 2 * n
    plain = bytes([7]) * 64 + bytes(ps - 64)
    b.ram_page("pc.ram", base * ps, plain)
    ram_xbzrle_delta(b, "pc.ram", base * ps, _xbzrle_literal(0, b"AB"))
    ram_xbzrle_delta(b, "pc.ram", base * ps, _xbzrle_literal(1, b"CD"))
    expect[base] = b"ACD" + bytes([7]) * 61
    c = zlib.compressobj(9)
    ram_compressed(b, "pc.ram", (base + 1) * ps, c.compress(b"zz") + c.compress(bytes(ps - 2)) + c.flush())
    ram_xbzrle_delta(b, "pc.ram", (base + 1) * ps, _xbzrle_literal(1, b"y"))
    expect[base + 1] = b"zy"
    _end(b)
    b.write(path)
    return expect


@pytest.mark.parametrize(("page_bits", "n"), [(24, 24), (12, 20000)])
def test_built_pages_are_decoded_on_demand(tmp_path: Path, page_bits: int, n: int) -> None:
    ps = 1 << page_bits
    stream = tmp_path / "s.mig"
    expect = _built_stream(stream, page_bits, n)
    size = stream.stat().st_size
    image = tmp_path / "m.raw"
    for args in (["info", str(stream)], ["memory", str(stream), "-o", str(image)]):
        rc, peak, err = run_measured(args, tmp_path)
        assert rc == 0, err
        # a few pages at a time, and a small multiple of the input
        assert peak < BASELINE + 8 * ps + 20 * size, (args[0], peak, size)
    assert "encoded against a copy that is not in the stream" in err
    assert err.count("\n") < 40  # warnings are capped
    pages = np.array(sorted(expect), dtype=np.int64)
    places = _placement(stream, "pc.ram")
    step = max(1, (16 << 20) // ps)
    for k in range(0, len(pages), step):
        part = pages[k : k + step]
        got = _pages_at(image, places, ps, part)
        for row, p in zip(got, part.tolist()):
            head = expect[p]
            assert row[: len(head)].tobytes() == head, p
            assert not row[len(head) :].any(), p


# -- a sparse guest streamed as QEMU does ------------------------------------------------------


def sparse_stream(path: Path, size: int, every: int) -> int:
    """A guest of ``size`` bytes with one data page in ``every`` (ZERO/PAGE records with CONTINUE,
    page i data when ``i % every == every - 1``); returns the page count."""
    npages = size // 4096
    b = StreamBuilder()
    _start(b, [RamBlock("pc.ram", size)])
    b.ram_zero("pc.ram", 0, cont=False)
    _write(path, b, sparse_ram_records(1, npages - 1, every))
    return npages


def _check_sparse_image(image: Path, stream: Path, npages: int, every: int) -> None:
    """Data pages hold their pattern, a sample of the others reads as zeros, and only data takes room."""
    ps = 4096
    ndata = 0
    with open(image, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        mm.madvise(mmap.MADV_RANDOM)  # pages far apart: no read-ahead
        try:
            for gpa, boff, size in _placement(stream, "pc.ram"):
                lo, hi = boff // ps, (boff + size) // ps
                for phase, want_data in ((every - 1, True), (every // 2, False)):
                    p0 = lo + (phase - lo) % every
                    count = len(range(p0, hi, every))
                    view = np.ndarray(
                        (count, ps), np.uint8, buffer=mm, offset=gpa + (p0 - lo) * ps, strides=(every * ps, 1)
                    )
                    for k in range(0, count, 4096):
                        rows = view[k : k + 4096]
                        if want_data:
                            idx = p0 + every * np.arange(k, k + len(rows), dtype=np.int64)
                            assert (rows == pattern_pages(idx)).all()
                        else:
                            assert not rows.any()
                    ndata += count if want_data else 0
                    del view
        finally:
            mm.close()
    assert ndata == npages // every
    # Only data pages take room (holes are never written); a little slack for file system metadata.
    assert _allocated(image) <= ndata * ps * 1.05


@pytest.mark.slow
@pytest.mark.parametrize(("size", "every", "bound"), [(64 << 30, 64, 100 * MIB), (1 << 30, 4, 100 * MIB)])
def test_sparse_guest(tmp_path: Path, size: int, every: int, bound: int) -> None:
    stream = tmp_path / "s.mig"
    npages = sparse_stream(stream, size, every)
    image = tmp_path / "m.raw"
    for args in (["info", str(stream)], ["memory", str(stream), "-o", str(image)]):
        rc, peak, err = run_measured(args, tmp_path)
        assert rc == 0, err
        assert peak < bound, (args[0], peak)
    _check_sparse_image(image, stream, npages, every)


# -- last copy wins, however the runs overlap ---------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_overlapping_runs_resolve_to_the_last_copy(tmp_path: Path, seed: int) -> None:
    """Random iterations of plain, zero, filled, XBZRLE and compressed pages over a few pages (runs
    overlap in every way): the block reads as the builder last wrote it, and `memory` writes it."""
    rng = np.random.default_rng(seed)
    ps, npages = 4096, 48
    b = StreamBuilder()
    _start(b, [RamBlock("pc.ram", npages * ps)])
    b.ram_eos()
    for _ in range(4):
        b.section_part(1)
        p = int(rng.integers(0, 8))
        while p < npages:
            kind = int(rng.integers(0, 5))
            page = rng.integers(1, 255, ps, dtype=np.uint8).tobytes()
            if kind == 0:
                b.ram_page("pc.ram", p * ps, page)
            elif kind == 1:
                b.ram_zero("pc.ram", p * ps, int(rng.choice([0, 0, 0x11])))
            elif kind == 2:
                old = bytearray(b.page_of("pc.ram", p * ps))
                at = int(rng.integers(0, ps - 8))
                old[at : at + 8] = b"changed!"
                if bytes(old) != b.page_of("pc.ram", p * ps):
                    b.ram_xbzrle("pc.ram", p * ps, bytes(old))
            else:
                b.ram_compress_page("pc.ram", p * ps, page[: ps // 2] + bytes(ps // 2))
            p += int(rng.integers(1, 3))
        b.ram_eos()
    b.section_end(1)
    _end(b)
    stream = b.write(tmp_path / "s.mig")
    want = b"".join(b.page_of("pc.ram", i * ps) for i in range(npages))
    with migstream.open(str(stream)) as s:
        assert s.block("pc.ram").read() == want
        assert s.block("pc.ram").pread(ps - 3, 10) == want[ps - 3 : ps + 7]
    image = tmp_path / "m.raw"
    rc, _peak, err = run_measured(["memory", str(stream), "-o", str(image)], tmp_path)
    assert rc == 0, err
    got = _pages_at(image, _placement(stream, "pc.ram"), ps, np.arange(npages, dtype=np.int64))
    assert got.tobytes() == want
