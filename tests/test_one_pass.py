"""Streams read once from a pipe or a decompressor give what the same stream read as a file gives.

The oracle is the file reading of the same bytes: ``info`` (text and JSON),
the device state document and the registers must be identical for every
corpus stream, whether the bytes come through a pipe or straight out of the
corpus's xz files.  Memory stays bounded by the look-ahead, and an endless
or hostile pipe stops.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
from builder import RamBlock, StreamBuilder
from conftest import CORPUS, CorpusCache, stream_ids

import migstream
from migstream.arch import format_cpus
from migstream.errors import MigstreamError, UsageError
from migstream.outputs.info import info_json, info_text
from migstream.outputs.state_json import state_document

PAGE = bytes(range(256)) * 16


def _ram_stream(ram_size: int, *, footers: bool = True, part: bool = True) -> StreamBuilder:
    """Header, configuration, the RAM block list of one ``pc.ram`` block; with ``part``, a RAM
    part opened with page 0 of data."""
    b = StreamBuilder(footers=footers)
    b.header()
    b.configuration("pc-i440fx-10.0")
    b.ram_start(1, [RamBlock("pc.ram", ram_size)])
    if part:
        b.section_part(1)
        b.ram_page("pc.ram", 0, PAGE)
    return b


@contextmanager
def pipe_of(data: bytes | Path) -> Iterator[IO[bytes]]:
    """A pipe whose other end a thread fills with ``data`` (bytes, or a file's content)."""
    rfd, wfd = os.pipe()

    def feed() -> None:
        try:
            if isinstance(data, Path):
                with open(data, "rb") as f:
                    while chunk := f.read(1 << 20):
                        os.write(wfd, chunk)
            else:
                view = memoryview(data)
                while view:
                    view = view[os.write(wfd, view[: 1 << 20]) :]
        except BrokenPipeError:
            pass
        finally:
            os.close(wfd)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    reader = os.fdopen(rfd, "rb", buffering=0)
    try:
        yield reader
    finally:
        reader.close()
        thread.join()


def _views(stream: migstream.Stream) -> dict[str, Any]:
    """What info, state and cpus print, less the input's name."""
    text = info_text(stream, all_records=True).split("\n", 1)[1]
    doc = info_json(stream)
    doc["source"].pop("name")
    out: dict[str, Any] = {"text": text, "json": doc}
    if stream.vmdesc is not None:
        out["state"] = state_document(stream, offsets=True)
    try:
        out["cpus"] = format_cpus(stream.cpus())
    except MigstreamError as exc:
        out["cpus"] = f"error: {exc.message}"
    return out


@pytest.mark.parametrize("stream_id", stream_ids())
def test_pipe_and_xz_read_once_match_the_file(corpus: CorpusCache, stream_id: str) -> None:
    raw = corpus.raw(stream_id)
    with migstream.open(str(raw)) as s:
        want = _views(s)
    with pipe_of(raw) as pipe, migstream.open(pipe, pages=False) as s:
        assert s.source.window is not None
        assert s.source.container == "raw"
        assert _views(s) == want
    with migstream.open(str(CORPUS / stream_id / "stream.mig.xz"), pages=False) as s:
        assert s.source.window is not None
        got = _views(s)
    # The container (named in the first line and in "source") is the only difference.
    assert got["json"].pop("source")["container"] == "xz"
    want["json"].pop("source")
    assert got == want


def test_one_pass_stream_refuses_guest_memory(corpus: CorpusCache) -> None:
    raw = corpus.raw("qemu-7.2/pc-paused-min")
    with pipe_of(raw) as pipe, migstream.open(pipe, pages=False) as s:
        with pytest.raises(UsageError, match="one pass"):
            s.pagemap()
        with pytest.raises(UsageError, match="one pass"):
            s.block("pc.ram")


def _rss_anon_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def test_pipe_memory_stays_bounded() -> None:
    """A 768 MiB stream of data pages through a pipe: resident memory stays near the look-ahead."""
    b = _ram_stream(1 << 30)
    b.ram_pattern("pc.ram", 1, 3 * 65536 - 1, 1, PAGE)
    b.ram_eos()
    b.section_end(1)
    b.ram_eos()
    b.eof()
    data = b.data()
    assert len(data) > 700 << 20
    probe = (
        "import migstream\n"
        "s = migstream.open('-', pages=False)\n"
        "assert s.source.window is not None\n"
        "print(s.parsed.ram.stats.pages)\n"
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('RssAnon')][0])\n"
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], input=data, capture_output=True, check=True)
    pages, anon, hwm = proc.stdout.split()
    assert int(pages) == 3 * 65536
    assert int(anon) < 100 << 10, f"anon RSS {int(anon) >> 10} MiB after the parse"
    assert int(hwm) < 160 << 10, f"peak RSS {int(hwm) >> 10} MiB"


def test_endless_zeros_after_eof_stop() -> None:
    """A header, EOF, then zeros without end: the tail is read to a bound, not to the end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "migstream", "info", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    try:
        proc.stdin.write(b"QEVM\0\0\0\3\0")
        zeros = bytes(1 << 20)
        for _ in range(1024):
            if proc.poll() is not None:
                break
            try:
                proc.stdin.write(zeros)
            except BrokenPipeError:
                break
        with_timeout = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, with_timeout[1]
    assert b"EOF" in with_timeout[0]


def test_undecodable_pipe_is_refused_at_once() -> None:
    with pipe_of(b"junk" * 1000) as pipe, pytest.raises(MigstreamError, match="not a QEMU migration stream"):
        migstream.open(pipe, pages=False)


@pytest.mark.parametrize("footers", [True, False])
@pytest.mark.parametrize("padding", [0, 3 << 20])
def test_builder_streams_with_and_without_footers(footers: bool, padding: int) -> None:
    """Without footers nothing can be dropped before the description: the stream is kept and read again."""
    desc = {
        "vmsd_name": "dev",
        "version": 3,
        "fields": [{"name": "a", "type": "uint32"}, {"name": "b", "type": "buffer", "size": 6}],
    }
    b = _ram_stream(64 << 20, footers=footers)
    b.ram_zero("pc.ram", 4096)
    b.ram_zero("pc.ram", 8192)
    b.ram_pattern("pc.ram", 3, 12000, 3, PAGE)
    b.ram_eos()
    b.device(2, "dev", 0, desc, {"a": 7, "b": b"abcdef"})
    b.device(3, "dev", 1, desc, {"a": 9, "b": b"ghijkl"})
    b.section_end(1)
    b.ram_eos()
    b.eof()
    b.vmdescription(padding=padding)
    data = b.data()
    with migstream.open(io.BytesIO(data)) as s:
        want = _views(s)
        assert s.device("dev", 1).state is not None
    with pipe_of(data) as pipe, migstream.open(pipe, pages=False) as s:
        assert s.source.window is not None
        assert _views(s) == want


def _same_pages(a: migstream.Stream, b: migstream.Stream) -> None:
    """Every page of every block reads the same in both (holes read as zeros)."""
    pa, pb = a.pagemap(), b.pagemap()
    assert [blk.name for blk in a.ram_blocks] == [blk.name for blk in b.ram_blocks]
    chunk = 16384
    for blk in a.ram_blocks:
        assert pa.present(blk.index) == pb.present(blk.index), blk.name
        pages = -(-blk.size // pa.page_size)
        for first in range(0, pages, chunk):
            n = min(chunk, pages - first)
            da, _ = pa.gather(blk.index, first, n)
            db, _ = pb.gather(blk.index, first, n)
            if not (da == db).all():
                bad = int(np.flatnonzero((da != db).any(axis=1))[0]) + first
                raise AssertionError(f"{blk.name}: page {bad} differs")


@pytest.mark.parametrize("stream_id", [i for i in stream_ids() if "multifd" not in i])
def test_pages_staged_from_a_pipe_match_the_file(corpus: CorpusCache, stream_id: str, tmp_path: Path) -> None:
    """Read once from a pipe, the pages go to a staging file as they arrive: the same final pages."""
    raw = corpus.raw(stream_id)
    with (
        migstream.open(str(raw)) as want,
        pipe_of(raw) as pipe,
        migstream.open(pipe, stage_dir=tmp_path) as got,
    ):
        assert got.stage is not None
        _same_pages(want, got)
    assert not list(tmp_path.iterdir())  # the staging file was never visible


def test_pages_zeroed_or_discarded_after_their_data(tmp_path: Path) -> None:
    """Data, then a zero page, a filled page and a discard for the same pages: the last word wins."""
    ps = 4096
    b = _ram_stream(32 << 20)
    b.ram_pattern("pc.ram", 1, 3000, 1, PAGE)  # pages 0..3000 hold data, well over a batch
    b.ram_eos()
    b.section_part(1)
    b.ram_zero("pc.ram", 0)
    b.ram_zero("pc.ram", 5 * ps, fill=0xAB)
    b.ram_zero("pc.ram", 7 * ps)
    b.ram_page("pc.ram", 7 * ps, PAGE[::-1])
    b.ram_eos()
    b.postcopy_ram_discard("pc.ram", [(10 * ps, 2 * ps)])
    b.section_end(1)
    b.ram_eos()
    b.eof()
    data = b.data()
    with (
        migstream.open(io.BytesIO(data)) as want,
        pipe_of(data) as pipe,
        migstream.open(pipe, stage_dir=tmp_path) as got,
    ):
        assert got.stage is not None
        pm = got.pagemap()
        assert pm.page_bytes(0, 0) == bytes(ps)
        assert pm.page_bytes(0, 5) == b"\xab" * ps
        assert pm.page_bytes(0, 7) == PAGE[::-1]
        assert pm.page_bytes(0, 10) == pm.page_bytes(0, 11) == bytes(ps) != pm.page_bytes(0, 12)
        _same_pages(want, got)


@pytest.mark.parametrize("stream_id", ["qemu-7.2/pc-paused-devs-smp2", "qemu-10.0/aarch64-virt-paused"])
def test_cli_memory_and_extract_from_a_pipe(corpus: CorpusCache, stream_id: str, tmp_path: Path) -> None:
    """``cat S | migstream memory -`` and ``extract -`` write what the file gives, with no temporary file."""
    raw = corpus.raw(stream_id)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir), "MIGSTREAM_MAX_TEMP": "1"}
    cases = (
        ["memory", "-o", "{out}"],
        ["memory", "--format", "elf", "-o", "{out}"],
        ["extract", "-o", "{out}"],
    )
    for args in cases:
        outs = []
        for how in ("file", "pipe"):
            out = tmp_path / f"{args[-3] if len(args) > 3 else args[0]}-{how}"
            argv = [sys.executable, "-m", "migstream", args[0], str(raw) if how == "file" else "-"]
            argv += [a.format(out=out) for a in args[1:]]
            cat = subprocess.Popen(["cat", str(raw)], stdout=subprocess.PIPE) if how == "pipe" else None
            proc = subprocess.run(argv, stdin=cat.stdout if cat else None, capture_output=True, env=env)
            if cat is not None:
                cat.wait()
            assert proc.returncode == 0, proc.stderr
            if how == "pipe":
                assert b"read once" in proc.stderr
            outs.append(out)
        a, b = outs
        if a.is_dir():
            files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
            assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
            for rel in files:
                assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
        else:
            assert a.read_bytes() == b.read_bytes()
    assert not list(tmpdir.iterdir())


def test_reserved_range_goes_with_the_stream() -> None:
    """Each one-pass input reserves a large address range: it must go as soon as the stream goes,
    not when the garbage collector finds a cycle (cut streams, errors included)."""
    import gc

    from fuzz_target import _Once

    b = _ram_stream(1 << 20, part=False)
    b.eof()
    whole = b.data()

    def vm_size() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) << 10

    gc.disable()
    try:
        before = vm_size()
        for cut in range(8, len(whole), max(1, len(whole) // 40)):
            try:
                with migstream.open(_Once(whole[:cut]), pages=False) as s:
                    info_json(s)
            except MigstreamError:
                pass
        assert vm_size() - before < 1 << 30
    finally:
        gc.enable()


def test_compressed_pipe_of_a_container_is_spooled_whole(corpus: CorpusCache) -> None:
    """gzip around a libvirt save image, through a pipe: the bytes the decompressor read while
    looking inside are spooled first, and the stream within reads as from the file."""
    import gzip

    from test_containers import libvirt_image

    raw = corpus.raw("qemu-7.2/pc-paused-min")
    with migstream.open(str(raw)) as s:
        want = _views(s)["text"]
    wrapped = gzip.compress(libvirt_image(raw.read_bytes(), 0))
    with pipe_of(wrapped) as pipe, migstream.open(pipe, pages=False) as s:
        assert s.source.window is None and s.source.container.endswith("libvirt-save")
        assert _views(s)["text"].endswith(want)  # after the line the libvirt header gives
