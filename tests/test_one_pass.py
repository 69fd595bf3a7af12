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

import pytest
from builder import RamBlock, StreamBuilder
from conftest import CORPUS, CorpusCache, stream_ids

import migstream
from migstream.arch import format_cpus
from migstream.errors import MigstreamError, UsageError
from migstream.outputs.info import info_json, info_text
from migstream.outputs.state_json import state_document


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
    ps = 4096
    page = bytes(range(256)) * 16
    b = StreamBuilder(page_size=ps)
    b.header()
    b.configuration("pc-i440fx-10.0")
    b.ram_start(1, [RamBlock("pc.ram", 1 << 30)])
    b.section_part(1)
    b.ram_page("pc.ram", 0, page)
    b.ram_pattern("pc.ram", 1, 3 * 65536 - 1, 1, page)
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
    page = bytes(range(256)) * 16
    b = StreamBuilder(footers=footers)
    b.header()
    b.configuration("pc-i440fx-10.0")
    b.ram_start(1, [RamBlock("pc.ram", 64 << 20)])
    b.section_part(1)
    b.ram_page("pc.ram", 0, page)
    b.ram_zero("pc.ram", 4096)
    b.ram_zero("pc.ram", 8192)
    b.ram_pattern("pc.ram", 3, 12000, 3, page)
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
