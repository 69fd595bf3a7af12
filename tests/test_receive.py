"""``migstream receive``: the target of a live migration.

Unit tests drive the receiver with fake connections (byte-exact captures, channel-id order,
junk, early closes, too many connections, time-outs, existing files).  The QEMU tests migrate a
guest with known blobs in RAM to ``migstream receive`` (system QEMU and, when unpacked, a newer
one; plain, multifd uncompressed, zlib and zstd; TCP and one unix socket), then ``migstream
memory`` over the captured files must put each blob at its guest-physical address.
"""

from __future__ import annotations

import hashlib
import os
import selectors
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from builder import StreamBuilder
from qemu_harness import Blob, QemuGuest, find_qemu, migstream_command, sha256_file

from migstream.cli.main import main as cli_main
from migstream.containers.receive import (
    ReceiveError,
    Receiver,
    ReceiveResult,
    parse_address,
    stream_complete,
)
from migstream.errors import TruncatedError, UsageError

MULTIFD_MAGIC = 0x11223344


def _init_packet(channel_id: int, version: int = 1) -> bytes:
    """A multifd initial packet: magic, version, uuid, id, reserved up to 64 bytes."""
    return struct.pack(">II16sB", MULTIFD_MAGIC, version, b"u" * 16, channel_id).ljust(64, b"\0")


def _main_stream(payload: int = 3 << 20, vmdesc: bool = True) -> bytes:
    b = StreamBuilder()
    b.header()
    b.padding(payload, byte=0x5A)
    b.eof()
    if vmdesc:
        b.vmdescription()
    return b.data()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as ex:
        yield ex


def _start(
    pool: ThreadPoolExecutor, directory: Path, address: str = "tcp:127.0.0.1:0", **kw: object
) -> tuple[Receiver, Future[ReceiveResult]]:
    rcv = Receiver(parse_address(address), directory, **kw)  # type: ignore[arg-type]
    return rcv, pool.submit(rcv.run)


def _send(rcv: Receiver, *parts: bytes, close: bool = True) -> socket.socket:
    sock = socket.create_connection((rcv.address.host, rcv.address.port), timeout=10)
    for part in parts:
        sock.sendall(part)
    if close:
        sock.close()
    return sock


# --------------------------------------------------------------------------- addresses


def test_parse_address() -> None:
    assert str(parse_address("tcp:127.0.0.1:4444")) == "tcp:127.0.0.1:4444"
    assert parse_address("tcp:[::1]:5").host == "::1"
    assert parse_address("unix:/tmp/x.sock").path == "/tmp/x.sock"
    for bad in (
        "127.0.0.1:4444",
        "tcp:host",
        "tcp::44",
        "tcp:h:99999",
        "tcp:h:-1",
        "unix:",
        "exec:cat",
        "file:/x",
    ):
        with pytest.raises(UsageError, match="bad address"):
            parse_address(bad)


def test_address_in_use(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(UsageError, match=f"cannot listen on tcp:127.0.0.1:{port}"):
            Receiver(parse_address(f"tcp:127.0.0.1:{port}"), tmp_path / "cap")


# --------------------------------------------------------------------------- fake migrations


def test_main_and_channels_byte_exact_in_channel_id_order(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    main = _main_stream()
    ch0 = _init_packet(0) + os.urandom(2 << 20)
    ch1 = _init_packet(1) + os.urandom(1 << 20)
    rcv, fut = _start(pool, tmp_path / "cap")
    # channel 1 first, sent in pieces smaller than the initial packet
    first = _send(rcv, ch1[:3], close=False)
    time.sleep(0.05)
    first.sendall(ch1[3:30])
    time.sleep(0.05)
    first.sendall(ch1[30:])
    first.close()
    _send(rcv, main)
    _send(rcv, ch0)
    result = fut.result(timeout=30)
    assert result.complete and result.stream == tmp_path / "cap" / "stream.mig"
    assert result.stream.read_bytes() == main
    assert [p.name for p in result.channels] == ["multifd-1.bin", "multifd-2.bin"]
    assert result.channels[0].read_bytes() == ch0 and result.channels[1].read_bytes() == ch1
    assert result.channel_bytes == [len(ch0), len(ch1)]


class _SlowAccept(Receiver):
    """Accepts the next connection only once every accepted one is closed: the main stream
    ends while a channel still waits in the listen queue."""

    def _accept(self, sel: selectors.BaseSelector, limit: int = 1) -> int:
        if not all(cn.closed for cn in self._conns):
            return 0
        return super()._accept(sel, 1)


def test_channel_still_in_the_listen_queue_is_received(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    rcv = _SlowAccept(parse_address("tcp:127.0.0.1:0"), tmp_path / "cap")
    _send(rcv, _main_stream(4096))
    _send(rcv, _init_packet(0) + b"late")
    result = pool.submit(rcv.run).result(timeout=30)
    assert [p.read_bytes()[64:] for p in result.channels] == [b"late"]


def test_channel_ids_with_gaps_are_numbered_from_one(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    rcv, fut = _start(pool, tmp_path / "cap")
    _send(rcv, _init_packet(7) + b"seven")
    _send(rcv, _init_packet(3) + b"three")
    _send(rcv, _main_stream(4096))
    result = fut.result(timeout=30)
    assert [p.read_bytes()[64:] for p in result.channels] == [b"three", b"seven"]
    assert sorted(p.name for p in (tmp_path / "cap").iterdir()) == [
        "multifd-1.bin",
        "multifd-2.bin",
        "stream.mig",
    ]


def test_plain_stream_without_description(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    rcv, fut = _start(pool, tmp_path / "cap")
    _send(rcv, _main_stream(1 << 16, vmdesc=False))
    result = fut.result(timeout=30)
    assert result.complete and result.channels == []


def test_empty_connection_is_not_a_channel(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    rcv, fut = _start(pool, tmp_path / "cap")
    _send(rcv)  # connects and closes: a port probe
    time.sleep(0.1)
    assert not fut.done()
    _send(rcv, _main_stream(4096))
    assert fut.result(timeout=30).complete


def test_idle_probe_does_not_hold_the_end(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    rcv, fut = _start(pool, tmp_path / "cap")
    probe = _send(rcv, close=False)
    try:
        _send(rcv, _main_stream(4096))
        assert fut.result(timeout=30).complete
    finally:
        probe.close()


def test_junk_connection_is_refused(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    rcv, fut = _start(pool, tmp_path / "cap")
    _send(rcv, b"GET / HTTP/1.0\r\n\r\n", close=False)
    with pytest.raises(ReceiveError, match="neither a migration stream nor a multifd channel.*47 45 54 20"):
        fut.result(timeout=30)


def test_connection_closing_before_its_magic(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    rcv, fut = _start(pool, tmp_path / "cap")
    _send(rcv, _init_packet(0)[:10])
    with pytest.raises(ReceiveError, match="closed after 10 bytes"):
        fut.result(timeout=30)


def test_bad_multifd_version_and_duplicate_id(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    rcv, fut = _start(pool, tmp_path / "a")
    _send(rcv, _init_packet(0, version=9), close=False)
    with pytest.raises(ReceiveError, match="version 9"):
        fut.result(timeout=30)
    rcv, fut = _start(pool, tmp_path / "b")
    held = [_send(rcv, _init_packet(2), close=False), _send(rcv, _init_packet(2), close=False)]
    with pytest.raises(ReceiveError, match="two multifd channels with id 2"):
        fut.result(timeout=30)
    for s in held:
        s.close()


def test_second_stream_is_refused(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    rcv, fut = _start(pool, tmp_path / "cap")
    held = [_send(rcv, b"QEVM\0\0\0\3", close=False)]
    time.sleep(0.05)
    held.append(_send(rcv, b"QEVM\0\0\0\3", close=False))
    with pytest.raises(ReceiveError, match="a second migration stream"):
        fut.result(timeout=30)
    for s in held:
        s.close()


def test_too_many_connections(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    rcv, fut = _start(pool, tmp_path / "cap", max_connections=4)
    socks = [_send(rcv, close=False) for _ in range(5)]
    try:
        with pytest.raises(ReceiveError, match="more than 4 connections"):
            fut.result(timeout=30)
    finally:
        for s in socks:
            s.close()


def test_source_closing_early_is_an_error(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    main = _main_stream()
    rcv, fut = _start(pool, tmp_path / "cap")
    _send(rcv, main[: len(main) // 2])
    with pytest.raises(TruncatedError, match="before the end of its stream"):
        fut.result(timeout=30)
    assert (tmp_path / "cap" / "stream.mig").read_bytes() == main[: len(main) // 2]


def test_timeouts(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    rcv, fut = _start(pool, tmp_path / "a", timeout=0.3)
    with pytest.raises(ReceiveError, match="no migration arrived"):
        fut.result(timeout=30)
    rcv, fut = _start(pool, tmp_path / "b", timeout=0.3)
    held = _send(rcv, b"QEVM\0\0\0\3", close=False)
    try:
        with pytest.raises(ReceiveError, match="sent nothing for 0.3 s"):
            fut.result(timeout=30)
    finally:
        held.close()


def test_existing_capture_is_kept_unless_force(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    cap = tmp_path / "cap"
    cap.mkdir()
    (cap / "multifd-3.bin").write_bytes(b"old")
    (cap / "notes.txt").write_bytes(b"mine")
    with pytest.raises(UsageError, match="multifd-3.bin exists"):
        Receiver(parse_address("tcp:127.0.0.1:0"), cap)
    rcv, fut = _start(pool, cap, force=True)
    _send(rcv, _main_stream(4096))
    fut.result(timeout=30)
    assert sorted(p.name for p in cap.iterdir()) == ["notes.txt", "stream.mig"]


def test_stream_complete(tmp_path: Path) -> None:
    path = tmp_path / "s"
    for data, want in [
        (_main_stream(100), True),
        (_main_stream(100, vmdesc=False), True),
        (_main_stream(100)[:-1], False),
        (_main_stream(100) + b"}", False),
        (b"QEVM", False),
        (b"QEVM\0\0\0\3" + b"\x01" * 50, False),
    ]:
        path.write_bytes(data)
        assert stream_complete(path) is want, data[-20:]


def test_stream_complete_with_long_descriptions(tmp_path: Path) -> None:
    """Descriptions longer than the window read at a time, the record straddling its edges."""
    path = tmp_path / "s"
    for length in [*range((1 << 20) - 8, (1 << 20) + 2), 3 << 20]:
        b = StreamBuilder()
        b.header()
        b.padding(5000, byte=0x5A)
        b.eof()
        b.vmdescription(raw_json=b'{"x": "' + b"a" * (length - 9) + b'"}')
        path.write_bytes(b.data())
        assert stream_complete(path), length
        path.write_bytes(b.data()[:-1] + b"}}")
        assert not stream_complete(path), length


# --------------------------------------------------------------------------- CLI


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["receive", "bogus", "-o", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad address 'bogus'" in err
    assert cli_main(["receive", "tcp:127.0.0.1:0", "-o", str(tmp_path / "c"), "--timeout", "0.2"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("migstream: listening on tcp:127.0.0.1:")
    assert lines[1].startswith("migstream: error: no migration arrived") and len(lines) == 2


def test_cli_unix_socket_is_removed(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    with tempfile.TemporaryDirectory(prefix="mgr-") as short:
        path = Path(short) / "in.sock"
        rcv, fut = _start(pool, tmp_path / "cap", address=f"unix:{path}")
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.sendall(_main_stream(4096))
        assert fut.result(timeout=30).complete
        assert not path.exists()


# --------------------------------------------------------------------------- real QEMU

NEW_QEMU = str(Path.home() / ".cache" / "migstream" / "qemu-sid" / "bin" / "qemu-system-x86_64")
BINARIES = [b for b in (find_qemu(), NEW_QEMU if os.access(NEW_QEMU, os.X_OK) else None) if b]
BLOBS = [
    Blob("r1", "ctr", "recv-r1", 1, 300000, 0x1000123),
    Blob("r2", "stamped", "recv-r2", 2, 1 << 20, 0x4000000),
]


def _migrate_to_receiver(binary: str, mode: str, where: Path, unix: Path | None = None) -> Path:
    """Start ``migstream receive``, migrate a guest to it, wait for exit 0; returns the capture dir."""
    cap = where / "cap"
    address = f"unix:{unix}" if unix else "tcp:127.0.0.1:0"
    proc = subprocess.Popen(
        [*migstream_command(), "receive", address, "-o", str(cap), "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("migstream: listening on "), line
        uri = line.split(" on ", 1)[1].strip()
        with QemuGuest(binary=binary, blob_dir=where, memory="128M", blobs=BLOBS) as guest:
            if mode != "plain":
                guest.set_capabilities({"multifd": True})
                guest.set_parameters({"multifd-channels": 3, "multifd-compression": mode})
            guest.migrate_uri(uri, timeout=60)
            out, err = proc.communicate(timeout=60)
            guest.quit()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    channels = 0 if mode == "plain" else 3
    assert out.split() == [
        str(cap / "stream.mig"),
        *(str(cap / f"multifd-{i}.bin") for i in range(1, channels + 1)),
    ]
    return cap


def _check_memory(cap: Path, where: Path) -> None:
    out = where / "out.raw"
    channels = sorted(cap.glob("multifd-*.bin"))
    done = subprocess.run(
        [*migstream_command(), "memory", str(cap / "stream.mig"), *map(str, channels), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for blob in BLOBS:
        assert sha256_file(out, blob.addr, blob.size) == hashlib.sha256(blob.data()).hexdigest(), blob.name


@pytest.mark.qemu
@pytest.mark.skipif(not BINARIES, reason="no qemu-system-x86_64")
@pytest.mark.parametrize("binary", BINARIES, ids=lambda b: "new-qemu" if b == NEW_QEMU else "qemu")
@pytest.mark.parametrize("mode", ["plain", "none", "zlib", "zstd"])
def test_receive_real_migration_over_tcp(tmp_path: Path, binary: str, mode: str) -> None:
    cap = _migrate_to_receiver(binary, mode, tmp_path)
    _check_memory(cap, tmp_path)


@pytest.mark.qemu
@pytest.mark.skipif(not BINARIES, reason="no qemu-system-x86_64")
def test_receive_real_multifd_migration_over_unix(tmp_path: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="mgr-") as short:
        sock = Path(short) / "mig.sock"
        cap = _migrate_to_receiver(BINARIES[-1], "zstd", tmp_path, unix=sock)
        assert not sock.exists()
    _check_memory(cap, tmp_path)


@pytest.mark.qemu
@pytest.mark.skipif(not BINARIES, reason="no qemu-system-x86_64")
def test_receive_straight_to_memory(tmp_path: Path) -> None:
    out = tmp_path / "vm.raw"
    cap = tmp_path / "cap"
    proc = subprocess.Popen(
        [*migstream_command(), "receive", "tcp:127.0.0.1:0", "-o", str(cap), "--memory", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        uri = proc.stderr.readline().split(" on ", 1)[1].strip()
        with QemuGuest(binary=BINARIES[0], blob_dir=tmp_path, memory="128M", blobs=BLOBS) as guest:
            guest.set_capabilities({"multifd": True})
            guest.set_parameters({"multifd-channels": 2, "multifd-compression": "none"})
            guest.migrate_uri(uri, timeout=60)
            _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert not cap.exists()
    for blob in BLOBS:
        assert sha256_file(out, blob.addr, blob.size) == blob.sha256(), blob.name
