"""The compiled page writer against the Python copy loop, and against what the builder wrote.

Oracles: the pure Python path (interval by interval, as before the compiled
writer) must give the same bytes and the same data/hole layout on every
stream; the builder's record of each page it wrote gives the expected bytes;
for the writer alone, numpy gathers of the same columns.
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import numpy as np
import pytest
from builder import RamBlock, StreamBuilder, pattern_pages
from conftest import CorpusCache

import migstream
from migstream.errors import StreamFormatError
from migstream.outputs.extract import extract
from migstream.outputs.memory import write_memory
from migstream.ram import writer

pytestmark = pytest.mark.skipif(writer.compiled_writer is None, reason="the compiled module is not built")

PS = 4096
CORPUS_IDS = [
    "qemu-10.0/pc-tcp-precopy",
    "qemu-10.0/pc-tcp-multifd",
    "qemu-10.0/pc-mapped-ram",
    "qemu-10.0/pc-mapped-ram-multifd",
    "qemu-10.0/pc-running-xbzrle",
    "qemu-7.2/pc-compress",
]


def _layout(path: Path) -> list[tuple[int, int]]:
    """The data ranges of a file by SEEK_DATA / SEEK_HOLE (the whole file where they are not supported)."""
    size = path.stat().st_size
    out: list[tuple[int, int]] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        at = 0
        while at < size:
            try:
                start = os.lseek(fd, at, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break
                return [(0, size)]
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end))
            at = end
    finally:
        os.close(fd)
    return out


def _both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stream: Path, fmt: str) -> tuple[Path, Path]:
    """The image written by the compiled writer and by the Python loop."""
    outs = []
    for name, on in (("compiled", True), ("python", False)):
        out = tmp_path / f"{name}.{fmt}"
        with monkeypatch.context() as m:
            if not on:
                m.setattr(writer, "compiled_writer", None)
            with migstream.open(str(stream)) as s:
                write_memory(s, str(out), fmt=fmt)
        outs.append(out)
    return outs[0], outs[1]


def _same_files(a: Path, b: Path) -> None:
    """Same size, same data ranges, same bytes in them (holes read as zeros)."""
    assert a.stat().st_size == b.stat().st_size
    layout = _layout(a)
    assert layout == _layout(b)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for start, end in layout:
            for at in range(start, end, 16 << 20):
                n = min(16 << 20, end - at)
                assert os.pread(fa.fileno(), n, at) == os.pread(fb.fileno(), n, at), at


# -- streams from the builder: scattered pages, fill pages, built pages --------------------------


def _scattered_stream(path: Path, seed: int) -> tuple[StreamBuilder, list[RamBlock]]:
    rng = random.Random(seed)
    blocks = [RamBlock("pc.ram", 4096 * PS), RamBlock("/rom@etc/acpi/tables", 64 * PS)]
    b = StreamBuilder()
    b.header()
    b.configuration("pc-i440fx-10.0")
    b.ram_start(1, blocks)
    b.section_part(1)
    for rnd in range(3):  # later rounds overwrite: the last copy wins, intervals split
        page = rng.randrange(64)
        while page < 4096:
            run = rng.choice([1, 1, 1, 2, 3, 700, 1100])  # isolated pages and runs over IOV_MAX
            for p in range(page, min(page + run, 4096)):
                what = rng.random()
                if what < 0.7:
                    b.ram_page("pc.ram", p * PS, bytes(pattern_pages([p * 10 + rnd])[0]))
                elif what < 0.8:
                    b.ram_zero("pc.ram", p * PS, rng.choice([0, 0x5A, 0xFF]))
                elif what < 0.9 and rnd:
                    page_now = bytearray(b.page_of("pc.ram", p * PS))
                    lit = f"x{p}.{rnd}".encode()
                    page_now[p % 3000 : p % 3000 + len(lit)] = lit
                    b.ram_xbzrle("pc.ram", p * PS, bytes(page_now))
                else:
                    b.ram_page("pc.ram", p * PS, bytes(PS))  # an all-zero page sent as data
            page += run + rng.choice([1, 2, 5, 40, 300]) * (rnd + 1)
        for p in range(0, 64, 3):
            b.ram_page("/rom@etc/acpi/tables", p * PS, bytes([p + 1]) * PS)
        head = b"compressed page %d" % rnd
        b.ram_compress_page("pc.ram", (4000 + rnd) * PS, head + bytes(PS - len(head)))
        b.ram_eos()
        if rnd < 2:
            b.section_part(1)
    b.eof()
    b.write(path)
    return b, blocks


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("fmt", ["raw", "elf"])
def test_builder_streams_same_with_both_writers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, fmt: str
) -> None:
    stream = tmp_path / "s.mig"
    _scattered_stream(stream, seed)
    a, b = _both(tmp_path, monkeypatch, stream, fmt)
    _same_files(a, b)


def test_builder_stream_pages_are_what_was_sent(tmp_path: Path) -> None:
    stream = tmp_path / "s.mig"
    b, _ = _scattered_stream(stream, 3)
    out = tmp_path / "m.raw"
    with migstream.open(str(stream)) as s:
        write_memory(s, str(out))
        places = [p for p in s.memory_map().placements if p.block == "pc.ram"]
    want = {p: b.page_of("pc.ram", p * PS) for p in range(4096)}
    image = out.read_bytes()
    seen = 0
    for pl in places:
        for p in range(pl.block_offset // PS, (pl.block_offset + pl.size) // PS):
            at = pl.gpa + p * PS - pl.block_offset
            assert image[at : at + PS] == want[p], p
            seen += 1
    assert seen == 4096
    holes = _layout(out)
    assert holes and sum(e - s for s, e in holes) < len(image)  # zero pages stay holes


def test_builder_stream_extract_same_with_both_writers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = tmp_path / "s.mig"
    _scattered_stream(stream, 4)
    for name, on in (("compiled", True), ("python", False)):
        with monkeypatch.context() as m:
            if not on:
                m.setattr(writer, "compiled_writer", None)
            with migstream.open(str(stream)) as s:
                list(extract(s, str(tmp_path / name)))
    files = sorted(
        p.relative_to(tmp_path / "compiled") for p in (tmp_path / "compiled").rglob("*") if p.is_file()
    )
    assert any(str(f).startswith("ram/") for f in files)
    for f in files:
        _same_files(tmp_path / "compiled" / f, tmp_path / "python" / f)


# -- corpus streams -------------------------------------------------------------------------------


@pytest.mark.parametrize("stream_id", CORPUS_IDS)
def test_corpus_streams_same_with_both_writers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corpus: CorpusCache, stream_id: str
) -> None:
    stream = corpus.raw(stream_id)
    a, b = _both(tmp_path, monkeypatch, stream, "raw")
    _same_files(a, b)


def test_corpus_elf_same_with_both_writers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corpus: CorpusCache
) -> None:
    a, b = _both(tmp_path, monkeypatch, corpus.raw("qemu-10.0/pc-tcp-multifd"), "elf")
    _same_files(a, b)


# -- the writer alone -----------------------------------------------------------------------------


def _cols(*rows: tuple[int, int, int, int]) -> tuple[np.ndarray, ...]:
    return tuple(np.array(c, dtype=np.int64) for c in zip(*rows))


def test_writer_matches_a_gather(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    buf = rng.integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
    rows = []
    dst = 0
    for _ in range(400):
        count = int(rng.choice([1, 1, 2, 9, 1500]))
        stride = int(rng.choice([PS, PS + 13, 2 * PS]))
        room = len(buf) - (count - 1) * stride - PS
        if room < 0:
            continue
        src = int(rng.integers(0, room + 1))
        dst += int(rng.choice([0, 0, PS, 7 * PS]))  # adjacent destinations share a call
        rows.append((dst, src, stride, count))
        dst += count * PS
    out = tmp_path / "o"
    fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        d, s, t, c = _cols(*rows)
        assert writer.write_pages(memoryview(buf), fd, d, s, t, c, PS) == int(c.sum()) * PS
    finally:
        os.close(fd)
    got = np.frombuffer(out.read_bytes(), dtype=np.uint8)
    want = np.zeros(dst, dtype=np.uint8)
    src_arr = np.frombuffer(buf, dtype=np.uint8)
    for dd, ss, tt, cc in rows:
        for k in range(cc):
            want[dd + k * PS : dd + (k + 1) * PS] = src_arr[ss + k * tt : ss + k * tt + PS]
    assert len(got) == rows[-1][0] + rows[-1][3] * PS
    assert (got == want[: len(got)]).all()


@pytest.mark.parametrize(
    "row",
    [
        (0, 8 * PS - PS + 1, PS, 1),  # one byte past the end
        (0, 0, PS, 9),  # the ninth page past the end
        (0, PS, 2 * PS, 5),  # strided past the end
        (0, -1, PS, 1),
        (-PS, 0, PS, 1),
        (0, 0, -PS, 2),
        (0, 0, PS, -1),
        (0, 0, 1 << 62, 3),  # the stride overflows
        ((1 << 63) - PS, 0, PS, 2),  # the destination overflows
    ],
)
def test_writer_refuses_ranges_outside_the_buffer(tmp_path: Path, row: tuple[int, int, int, int]) -> None:
    buf = memoryview(bytes(range(256)) * (8 * PS // 256))
    out = tmp_path / "o"
    fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        d, s, t, c = _cols((0, 0, PS, 2), row)  # a good row first: nothing is written before the check
        with pytest.raises(StreamFormatError):
            writer.write_pages(buf, fd, d, s, t, c, PS)
    finally:
        os.close(fd)
    assert out.stat().st_size == 0


def test_writer_error_is_an_oserror(tmp_path: Path) -> None:
    path = tmp_path / "ro"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        d, s, t, c = _cols((0, 0, PS, 1))
        with pytest.raises(OSError) as info:
            writer.write_pages(memoryview(bytes(PS)), fd, d, s, t, c, PS)
        assert info.value.errno == errno.EBADF
    finally:
        os.close(fd)


def test_pure_python_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGSTREAM_PURE_PYTHON", "1")
    assert writer._load_compiled() is None
    monkeypatch.setenv("MIGSTREAM_PURE_PYTHON", "0")
    assert writer._load_compiled() is not None


def test_writer_resumes_after_a_signal_check(tmp_path: Path) -> None:
    """Over 256 MiB in one call: the writer stops to see to signals and goes on with its batch."""
    ps = 1 << 20
    buf = bytes(range(256)) * (ps // 256) + b"\x01" * ps
    out = tmp_path / "o"
    fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        d, s, t, c = _cols((0, 0, 0, 300), (300 * ps, ps, ps, 1))  # stride 0: one page 300 times
        assert writer.write_pages(memoryview(buf), fd, d, s, t, c, ps) == 301 * ps
        assert os.fstat(fd).st_size == 301 * ps
        for p in (0, 255, 256, 257, 299):
            assert os.pread(fd, ps, p * ps) == buf[:ps], p
        assert os.pread(fd, ps, 300 * ps) == buf[ps:]
    finally:
        os.close(fd)
        out.unlink()
