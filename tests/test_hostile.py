"""Hostile input that cannot hurt: each attack as a user would run it, and the safe outcome.

Every test runs the CLI in a subprocess (or calls the API) on a crafted input
and checks a clear one-line error, bounded time, bounded memory and temporary
disk, and that nothing outside the requested output is touched.
"""

from __future__ import annotations

import bz2
import gzip
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from builder import RamBlock, StreamBuilder
from test_containers import libvirt_image
from test_records_cli import PS, finish, pg, precopy_stream

import migstream
from migstream.errors import MigstreamError

ROOT = Path(__file__).resolve().parents[1]
# MIGSTREAM_TEST_CLI runs another build's CLI (e.g. to see that these tests fail without the fixes).
CLI = (
    os.environ["MIGSTREAM_TEST_CLI"].split()
    if os.environ.get("MIGSTREAM_TEST_CLI")
    else [
        sys.executable,
        "-m",
        "migstream.cli.main",
    ]
)
LIMIT_AS = 2 << 30
TIMEOUT = 60.0  # hang guard; each test asserts its own, tighter bound


def run_cli(
    args: Sequence[str | os.PathLike[str]],
    *,
    stdin: Any = None,
    env: dict[str, str] | None = None,
    limit_as: int = LIMIT_AS,
    fsize: int | None = None,
    timeout: float = TIMEOUT,
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``migstream ARGS`` under an address-space limit; returns the result and the seconds taken."""

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    full_env = {**os.environ, **(env or {})}
    if not os.environ.get("MIGSTREAM_TEST_CLI"):
        full_env["PYTHONPATH"] = str(ROOT)
    start = time.monotonic()
    proc = subprocess.run(
        [*CLI, *map(str, args)],
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        preexec_fn=limits,
        cwd=ROOT,
    )
    return proc, time.monotonic() - start


def one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    """The run failed with exactly one stderr line, no traceback, mentioning every word."""
    assert proc.returncode not in (0, None) and proc.returncode > 0, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------
# 1. description bombs


def _bomb_stream(levels: int, width: int) -> bytes:
    """A device whose description nests ``levels`` arrays of ``width`` empty structs; no payload."""
    inner: dict[str, Any] = {"vmsd_name": "leaf", "version": 1, "fields": []}
    for level in range(levels):
        inner = {
            "vmsd_name": f"level{level}",
            "version": 1,
            "fields": [
                {"name": f"a{level}", "type": "struct", "size": 0, "array_len": width, "struct": inner}
            ],
        }
    b = StreamBuilder()
    b.header()
    b.configuration("pc-i440fx-10.0")
    b.section_full(5, "bomb", 0, 1, b"", describe={"name": "bomb", "instance_id": 0, **inner})
    b.eof()
    b.vmdescription()
    return b.data()


@pytest.mark.parametrize("command", ["info", "state"])
def test_description_bomb_is_refused_quickly(tmp_path: Path, command: str) -> None:
    path = tmp_path / "bomb.mig"
    path.write_bytes(_bomb_stream(4, 4096))
    assert path.stat().st_size < 2048
    proc, took = run_cli([command, path], limit_as=1 << 30)
    line = one_line_error(proc, "bomb", "a3.a2.a1.a0", "no bytes")
    assert took < 10, took
    assert "memory" not in line


def test_real_arrays_of_empty_structs_still_decode(tmp_path: Path) -> None:
    """A few hundred empty elements (as real devices have) are fine."""
    path = tmp_path / "ok.mig"
    path.write_bytes(_bomb_stream(1, 300))
    proc, _took = run_cli(["state", path, "--json"])
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------
# 2. temporary disk


def test_bzip2_of_zeros_is_refused_before_expanding(tmp_path: Path) -> None:
    """64 MiB of zeros in 200 bytes of bzip2: refused from the first decompressed bytes."""
    bomb = tmp_path / "bomb.bin"
    bomb.write_bytes(bz2.compress(bytes(64 << 20), 9))
    assert bomb.stat().st_size < 1024
    # The file-size limit also binds temporary files: expanding even 64 KiB would fail with EFBIG.
    proc, took = run_cli(["info", bomb], fsize=64 << 10)
    one_line_error(proc, "no QEMU migration stream inside the bzip2 container", "00 00 00 00")
    assert took < 5, took


def _qcow2_with_shared_clusters(tmp_path: Path, vm_state_size: int) -> Path:
    from test_containers import Qcow2Writer

    writer = Qcow2Writer(cluster_bits=16, disk_size=1 << 20)
    writer.add_snapshot(precopy_stream().data(), vm_state_size=vm_state_size)
    image = bytearray(writer.build())
    (snapshots,) = struct.unpack_from(">Q", image, 64)
    l1_offset, _l1_size = struct.unpack_from(">QI", image, snapshots)
    per_l1 = writer.cluster * (writer.cluster // 8)
    first = -(-writer.disk_size // per_l1)
    (l1_entry,) = struct.unpack_from(">Q", image, l1_offset + 8 * first)
    l2 = l1_entry & 0x00FF_FFFF_FFFF_FE00
    (data_entry,) = struct.unpack_from(">Q", image, l2)
    assert data_entry & 0x00FF_FFFF_FFFF_FE00
    # Every entry of the L2 table maps the same host cluster.
    struct.pack_into(f">{writer.cluster // 8}Q", image, l2, *[data_entry] * (writer.cluster // 8))
    path = tmp_path / "shared.qcow2"
    path.write_bytes(bytes(image))
    return path


def test_qcow2_with_shared_clusters_is_refused(tmp_path: Path) -> None:
    path = _qcow2_with_shared_clusters(tmp_path, 256 << 20)
    assert path.stat().st_size < 1 << 20
    proc, took = run_cli(["info", path], fsize=8 << 20)
    one_line_error(proc, "qcow2", "already used")
    assert took < 5, took


def _pipe(shell: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sh", "-c", shell], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def test_pipe_of_junk_is_refused_before_spooling() -> None:
    producer = _pipe("printf 'junk, not a stream'; cat /dev/zero")
    try:
        proc, took = run_cli(["info", "-"], stdin=producer.stdout, fsize=1 << 20, timeout=30)
    finally:
        producer.kill()
        producer.wait()
    one_line_error(proc, "<stdin>", "not a QEMU migration stream", "6a 75 6e 6b")
    assert took < 5, took


def test_pipe_spool_stops_at_max_temp(tmp_path: Path) -> None:
    """A libvirt save image needs random access: its pipe is spooled, within the temporary-file cap."""
    head = tmp_path / "head.bin"
    head.write_bytes(libvirt_image(b"QEVM\0\0\0\3", 0))
    producer = _pipe(f"cat {head}; cat /dev/zero")
    try:
        proc, took = run_cli(
            ["info", "-"],
            stdin=producer.stdout,
            env={"MIGSTREAM_MAX_TEMP": "2M"},
            fsize=16 << 20,
            timeout=30,
        )
    finally:
        producer.kill()
        producer.wait()
    one_line_error(proc, "<stdin>", "MIGSTREAM_MAX_TEMP=2M", str(2 << 20))
    assert took < 10, took


@pytest.mark.parametrize("tail", ["", "\\0\\0\\0\\3\\0"])
def test_pipe_read_once_needs_no_temp(tail: str) -> None:
    """``info`` reads a pipe once: endless zeros after a bad version or after EOF stop it at once."""
    producer = _pipe(f"printf 'QEVM{tail}'; cat /dev/zero")
    try:
        proc, took = run_cli(
            ["info", "-"], stdin=producer.stdout, env={"MIGSTREAM_MAX_TEMP": "1"}, fsize=0, timeout=60
        )
    finally:
        producer.kill()
        producer.wait()
    if tail:
        assert proc.returncode == 0, proc.stderr
        assert "EOF" in proc.stdout
    else:
        one_line_error(proc, "unknown stream version")
    assert took < 20, took


def test_decompression_stops_at_max_temp(tmp_path: Path) -> None:
    path = tmp_path / "big.gz"
    # A libvirt image inside gzip needs random access: decompressed into a temporary file.
    path.write_bytes(gzip.compress(libvirt_image(b"QEVM\0\0\0\3" + bytes(32 << 20), 0)))
    proc, _ = run_cli(["info", path], env={"MIGSTREAM_MAX_TEMP": "1M"}, fsize=8 << 20)
    one_line_error(proc, "gzip", "MIGSTREAM_MAX_TEMP=1M", str(1 << 20))
    # A plain stream inside gzip is read once: no temporary file at all, for any command.
    path.write_bytes(gzip.compress(b"QEVM" + bytes(32 << 20)))
    for args in (["info", path], ["memory", path, "-o", tmp_path / "out.raw"]):
        proc, _ = run_cli(args, env={"MIGSTREAM_MAX_TEMP": "1"}, fsize=0)
        one_line_error(proc, "unknown stream version")


def test_temp_files_keep_free_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A temporary file never takes the last free bytes of TMPDIR."""
    from migstream.containers import _io

    real = os.statvfs(tmp_path)

    class Small:
        f_frsize = 4096
        f_blocks = real.f_blocks
        f_bavail = (1 << 20) // 4096 + min(_io.TEMP_RESERVE_MAX, real.f_blocks * 4096 // 20) // 4096

    monkeypatch.setattr(os, "statvfs", lambda _path: Small)
    monkeypatch.delenv("MIGSTREAM_MAX_TEMP", raising=False)
    path = tmp_path / "big.gz"
    path.write_bytes(gzip.compress(b"QEVM" + bytes(4 << 20)))
    with pytest.raises(MigstreamError, match="free space") as info:
        migstream.open(path)
    assert "TMPDIR" in str(info.value)


# ---------------------------------------------------------------------------
# 5. silent wrong output


def test_mapped_ram_page_size_mismatch_is_an_error(tmp_path: Path) -> None:
    from test_records_cli import mapped_ram_stream

    b = mapped_ram_stream()
    data = bytearray(b.data())
    header = b.mapped_ram["pc.ram"].bitmap_offset - 28  # be32 version, be64 page size, two be64 offsets
    assert struct.unpack_from(">Q", data, header + 4)[0] == PS
    struct.pack_into(">Q", data, header + 4, 2 * PS)
    path = tmp_path / "mapped.mig"
    path.write_bytes(bytes(data))
    out = tmp_path / "mem.raw"
    proc, _ = run_cli(["memory", path, "-o", out])
    one_line_error(proc, "page size", "pc.ram", f"expected {PS:#x}", f"found {2 * PS:#x}")
    assert not out.exists()


# ---------------------------------------------------------------------------
# 6. only MigstreamError escapes the API


def _api_misuses(path: Path, tmp: Path) -> list[tuple[str, Callable[[], object]]]:
    closed = open(path, "rb")  # noqa: SIM115
    closed.close()
    text = open(path, encoding="latin-1")  # noqa: SIM115

    def after_close(action: Callable[[migstream.Stream], object]) -> Callable[[], object]:
        def call() -> object:
            s = migstream.open(path)
            s.close()
            return action(s)

        return call

    def with_stream(action: Callable[[migstream.Stream], object]) -> Callable[[], object]:
        def call() -> object:
            with migstream.open(path) as s:
                return action(s)

        return call

    def reader_after_close(make: Callable[[migstream.Stream], Any]) -> Callable[[], object]:
        def call() -> object:
            s = migstream.open(path)
            reader = make(s)
            s.close()
            return reader.read(16)

        return call

    def closed_reader() -> object:
        with migstream.open(path) as s:
            reader = s.block("pc.ram")
            reader.close()
            return reader.read(16)

    return [
        ("read on a closed reader", closed_reader),
        ("open(bytes path)", lambda: migstream.open(os.fsencode(path))),  # type: ignore[arg-type]
        ("open(3)", lambda: migstream.open(3)),  # type: ignore[arg-type]
        ("open(None)", lambda: migstream.open(None)),  # type: ignore[arg-type]
        ("open(1.5)", lambda: migstream.open(1.5)),  # type: ignore[arg-type]
        ("open(closed file)", lambda: migstream.open(closed)),
        ("open(text file)", lambda: migstream.open(text)),  # type: ignore[arg-type]
        ("open(missing)", lambda: migstream.open(tmp / "missing.mig")),
        ("open(dir)", lambda: migstream.open(tmp)),
        ("desc=5", lambda: migstream.open(path, desc=5)),  # type: ignore[arg-type]
        ("desc=b'x'", lambda: migstream.open(path, desc=b"{}")),  # type: ignore[arg-type]
        ("desc=[]", lambda: migstream.open(path, desc=[])),  # type: ignore[arg-type]
        ("desc={}", lambda: migstream.open(path, desc={})),
        ("desc={'devices': 3}", lambda: migstream.open(path, desc={"devices": 3})),
        ("channels='ab'", lambda: migstream.open(path, channels="ab")),
        ("channels=3", lambda: migstream.open(path, channels=3)),  # type: ignore[arg-type]
        ("channels=[None]", lambda: migstream.open(path, channels=[None])),  # type: ignore[list-item]
        ("snapshot=3", lambda: migstream.open(path, snapshot=3)),  # type: ignore[arg-type]
        ("block('nope')", with_stream(lambda s: s.block("nope"))),
        ("block(None)", with_stream(lambda s: s.block(None))),  # type: ignore[arg-type]
        ("device('nope')", with_stream(lambda s: s.device("nope"))),
        ("device(None, 'x')", with_stream(lambda s: s.device(None, "x"))),  # type: ignore[arg-type]
        ("device('timer', -1)", with_stream(lambda s: s.device("timer", -1))),
        ("physical().pread(-1, 5)", with_stream(lambda s: s.physical().pread(-1, 5))),
        ("physical().pread(0, -5)", with_stream(lambda s: s.physical().pread(0, -5))),
        ("physical().pread('0', 5)", with_stream(lambda s: s.physical().pread("0", 5))),  # type: ignore[arg-type]
        ("physical().seek(-1)", with_stream(lambda s: s.physical().seek(-1))),
        ("physical().seek(0, 7)", with_stream(lambda s: s.physical().seek(0, 7))),
        ("block().pread(1 << 70, 5)", with_stream(lambda s: s.block("pc.ram").pread(1 << 70, 5))),
        ("block().pread(-4096, 8192)", with_stream(lambda s: s.block("pc.ram").pread(-4096, 8192))),
        ("physical({'pc.ram': -1})", with_stream(lambda s: s.physical({"pc.ram": -1}))),
        ("physical({'pc.ram': 2**64})", with_stream(lambda s: s.physical({"pc.ram": 1 << 64}))),
        ("physical({'pc.ram': 'x'})", with_stream(lambda s: s.physical({"pc.ram": "x"}))),  # type: ignore[dict-item]
        ("memory_map({'nope': 0})", with_stream(lambda s: s.memory_map({"nope": 0}))),
        ("block() after close", after_close(lambda s: s.block("pc.ram").read(16))),
        ("physical() after close", after_close(lambda s: s.physical().read(16))),
        ("cpus() after close", after_close(lambda s: s.cpus())),
        ("block reader after close", reader_after_close(lambda s: s.block("pc.ram"))),
        ("physical reader after close", reader_after_close(lambda s: s.physical())),
    ]


def test_api_misuse_raises_only_migstream_errors(tmp_path: Path) -> None:
    path = tmp_path / "s.mig"
    path.write_bytes(precopy_stream().data())
    may_succeed = {"block().pread(1 << 70, 5)", "cpus() after close"}
    escaped = []
    for label, call in _api_misuses(path, tmp_path):
        try:
            result = call()
        except MigstreamError:
            continue
        except Exception as exc:  # noqa: BLE001 - that is what the test looks for
            escaped.append(f"{label}: {type(exc).__name__}: {exc}")
            continue
        if hasattr(result, "close"):
            result.close()
        if label not in may_succeed:
            escaped.append(f"{label}: accepted")
    assert not escaped, "\n".join(escaped)


@pytest.mark.parametrize(
    ("size", "extra"),
    [
        ((1 << 63) + 4 * PS, []),  # block larger than any guest-physical space
        (32 * PS, ["--map", "pc.ram=0xfffffffffffff000"]),  # ends past 2^64
        (32 * PS, ["--map", "pc.ram=0x10000000000000000"]),  # address over 64 bits
        (32 * PS, ["--map", "pc.ram=0x8000000000000000"]),  # a raw image past the largest file offset
    ],
)
@pytest.mark.parametrize("command", ["memory", "extract"])
def test_sizes_and_addresses_near_2_64(tmp_path: Path, size: int, extra: list[str], command: str) -> None:
    b = StreamBuilder()
    b.header()
    b.configuration("pc-i440fx-10.0")
    b.ram_start(1, [RamBlock("pc.ram", size), RamBlock("pc.bios", 4 * PS)])
    b.section_part(1)
    b.ram_page("pc.ram", 0, pg(1))
    b.ram_eos()
    finish(b)
    path = b.write(tmp_path / "big.mig")
    if command == "extract" and extra:
        pytest.skip("extract takes no --map")
    out = tmp_path / "out"
    proc, _ = run_cli([command, path, "-o", out, *extra])
    line = one_line_error(proc, "pc.ram" if extra[-1:] != ["pc.ram=0x8000000000000000"] else "--format elf")
    assert "internal error" not in line
    assert not out.exists()


# ---------------------------------------------------------------------------
# 3. linear scans


def _fake_footers_stream(section_id: int, size: int, vmdesc: bool) -> bytes:
    """A device section of ``size`` bytes made of its own footer followed by bytes no record starts with."""
    fake = b"".join(
        bytes([0x7E]) + section_id.to_bytes(4, "big") + tail
        for tail in (b"\x99", b"\x02\xff\xff\xff\xff", b"\x01" + bytes(4) + b"\xff", b"\x08\xff\xff")
    )
    b = StreamBuilder()
    b.header()
    b.configuration("pc-i440fx-10.0")
    b.section_full(section_id, "opaque", 0, 1, fake * (size // len(fake)))
    b.eof()
    if vmdesc:
        b.vmdescription()
    return b.data()


@pytest.mark.parametrize("vmdesc", [False, True])
def test_section_full_of_fake_footers_is_read_in_linear_time(tmp_path: Path, vmdesc: bool) -> None:
    path = tmp_path / "fake-footers.mig"
    path.write_bytes(_fake_footers_stream(7, 3 << 20, vmdesc))
    proc, took = run_cli(["info", path, "--json"])
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert [r["type"] for r in info["records"]][-1 - vmdesc] == "EOF"
    assert took < 5, took


# ---------------------------------------------------------------------------
# 4. outputs that destroy things


@pytest.fixture
def small_stream(tmp_path: Path) -> Path:
    return precopy_stream().write(tmp_path / "s.mig")


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_memory_never_removes_a_device(tmp_path: Path, small_stream: Path) -> None:
    node = tmp_path / "null"
    os.mknod(node, 0o20666, os.makedev(1, 3))  # a private copy of /dev/null
    proc, _ = run_cli(["memory", small_stream, "-o", node, "--force"])
    one_line_error(proc, str(node), "not a regular file")
    assert node.exists() and node.is_char_device()


def test_memory_refuses_a_fifo_without_hanging(tmp_path: Path, small_stream: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for force in ([], ["--force"]):
        try:
            proc, took = run_cli(["memory", small_stream, "-o", fifo, *force], timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail("writing to a FIFO hangs")
        one_line_error(proc, str(fifo), "not a regular file")
        assert took < 10
        assert fifo.is_fifo()


def test_memory_error_keeps_an_existing_file(tmp_path: Path, small_stream: Path) -> None:
    """--force on a file, then a failure: the file is not unlinked (it was not created by this run)."""
    out = tmp_path / "keep.raw"
    out.write_bytes(b"x")
    proc, _ = run_cli(["memory", small_stream, "-o", out, "--force"], fsize=4096)
    one_line_error(proc, str(out))
    assert out.exists()


def test_memory_error_removes_what_it_created(tmp_path: Path, small_stream: Path) -> None:
    out = tmp_path / "new.raw"
    proc, _ = run_cli(["memory", small_stream, "-o", out], fsize=4096)
    one_line_error(proc, str(out), "too large")
    assert not out.exists()


def _named_blocks_stream(names: Sequence[str]) -> StreamBuilder:
    b = StreamBuilder()
    b.header()
    b.configuration("pc-i440fx-10.0")
    b.ram_start(1, [RamBlock(name, 2 * PS) for name in names])
    b.section_part(1)
    for i, name in enumerate(names):
        b.ram_page(name, 0, pg(100 + i))
    b.ram_eos()
    return finish(b)


def test_extract_block_files_never_collide_with_its_own(tmp_path: Path) -> None:
    names = ["desc.json", "index.json", "state.json", "ram", "pc.ram"]
    b = _named_blocks_stream(names)
    path = b.write(tmp_path / "named.mig")
    out = tmp_path / "x"
    proc, _ = run_cli(["extract", path, "-o", out])
    assert proc.returncode == 0, proc.stderr
    index = json.loads((out / "index.json").read_text())
    desc = json.loads((out / "desc.json").read_text())
    assert isinstance(desc.get("devices"), list)
    assert "devices" in json.loads((out / "state.json").read_text()) or (out / "state.json").stat().st_size
    files = {entry["block"]: entry["file"] for entry in index["blocks"]}
    assert set(files) == set(names)
    assert len(set(files.values())) == len(names)
    for i, name in enumerate(names):
        data = (out / files[name]).read_bytes()
        assert data[:PS] == pg(100 + i), name
        assert files[name] not in ("desc.json", "index.json", "state.json")


def test_extract_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    b = _named_blocks_stream(["sub/dir/blk", "pc.ram"])
    path = b.write(tmp_path / "named.mig")
    out = tmp_path / "x"
    outside = tmp_path / "outside"
    outside.mkdir()
    out.mkdir()
    (out / "ram").symlink_to(outside)
    proc, _ = run_cli(["extract", path, "-o", out])
    one_line_error(proc, "symbolic link")
    assert list(outside.iterdir()) == []
    # one level down too
    (out / "ram").unlink()
    (out / "ram").mkdir()
    (out / "ram" / "sub").symlink_to(outside)
    proc, _ = run_cli(["extract", path, "-o", out])
    one_line_error(proc, "symbolic link")
    assert list(outside.iterdir()) == []


def test_extract_removes_its_files_when_the_disk_fills(tmp_path: Path) -> None:
    b = _named_blocks_stream(["pc.ram"])
    path = b.write(tmp_path / "s.mig")
    out = tmp_path / "x"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    # The block file (2 pages) is larger than the file-size limit: the write fails with EFBIG.
    proc, _ = run_cli(["extract", path, "-o", out], fsize=PS)
    one_line_error(proc, "too large")
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert left == ["mine.txt"], left


def test_integer_field_wider_than_any_integer_stays_bytes() -> None:
    """A description giving an integer field 3000 bytes: its value is shown as hex, and JSON still works."""
    b = StreamBuilder()
    b.header()
    b.configuration("pc-i440fx-10.0")
    body = bytes(range(256)) * 12  # 3072 bytes
    described = {
        "vmsd_name": "wide",
        "version": 1,
        "fields": [{"name": "w", "type": "uint32", "size": 3000}, {"name": "n", "type": "uint8", "size": 72}],
    }
    b.section_full(2, "wide", 0, 1, body, describe={"name": "wide", "instance_id": 0, **described})
    b.eof()
    b.vmdescription()
    with migstream.open(__import__("io").BytesIO(b.data())) as s:
        from migstream.outputs.state_json import state_document

        doc = json.loads(json.dumps(state_document(s)))
    state = doc["devices"][0]["state"]
    assert state["w"] == body[:3000].hex()
    assert state["n"] == int.from_bytes(body[3000:3072], "big") or state["n"] == body[3000:3072].hex()
