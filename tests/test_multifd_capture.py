"""Multifd over a socket, recorded: the main channel and each multifd channel captured by a
loopback sink, then `memory MAIN CHAN1 CHAN2` must put the blobs at their guest-physical
address, for uncompressed, zlib and zstd channels, with the system QEMU and, when unpacked,
a newer one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from qemu_harness import Blob, QemuGuest, find_qemu

NEW_QEMU = str(Path.home() / ".cache" / "migstream" / "qemu-sid" / "bin" / "qemu-system-x86_64")
BINARIES = [b for b in (find_qemu(), NEW_QEMU if os.access(NEW_QEMU, os.X_OK) else None) if b]
BLOBS = [
    Blob("b1", "ctr", "mfd-b1", 1, 300000, 0x1000123),
    Blob("b2", "stamped", "mfd-b2", 2, 1 << 20, 0x4000000),
]
pytestmark = [pytest.mark.qemu, pytest.mark.skipif(not BINARIES, reason="no qemu-system-x86_64")]


class _Sink:
    """Accepts every connection on a loopback port and keeps each one's bytes."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(30)
        self.port = self.server.getsockname()[1]
        self.captures: list[bytearray] = []
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._run, daemon=True)
        self._accept.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            data = bytearray()
            self.captures.append(data)
            t = threading.Thread(target=self._read, args=(conn, data), daemon=True)
            t.start()
            self._threads.append(t)

    @staticmethod
    def _read(conn: socket.socket, data: bytearray) -> None:
        conn.settimeout(30)
        with conn:
            while chunk := conn.recv(1 << 20):
                data += chunk

    def close(self) -> None:
        # A channel may still wait in the listen queue when the source reports completion.
        self.server.setblocking(False)
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                break
            conn.setblocking(True)
            data = bytearray()
            self.captures.append(data)
            self._read(conn, data)
        self.server.close()
        for t in self._threads:
            t.join(timeout=30)


def _record(binary: str, compression: str, where: Path) -> list[Path]:
    sink = _Sink()
    try:
        with QemuGuest(binary=binary, blob_dir=where, memory="128M", blobs=BLOBS) as guest:
            guest.set_capabilities({"multifd": True})
            guest.set_parameters({"multifd-channels": 2, "multifd-compression": compression})
            guest.migrate_uri(f"tcp:127.0.0.1:{sink.port}", timeout=60)
            guest.quit()
    finally:
        sink.close()
    main = [c for c in sink.captures if c[:4] == b"QEVM"]
    channels = [c for c in sink.captures if c[:4] == b"\x11\x22\x33\x44"]
    assert len(main) == 1 and len(channels) == 2
    paths = []
    for i, data in enumerate([*main, *channels]):
        path = where / f"capture-{i}.bin"
        path.write_bytes(data)
        paths.append(path)
    return paths


@pytest.mark.parametrize("binary", BINARIES, ids=lambda b: "new-qemu" if b == NEW_QEMU else "qemu")
@pytest.mark.parametrize("compression", ["none", "zlib", "zstd"])
def test_memory_from_recorded_multifd_channels(tmp_path: Path, binary: str, compression: str) -> None:
    main, *channels = _record(binary, compression, tmp_path)
    out = tmp_path / "phys.raw"
    cli = [sys.executable, "-m", "migstream", "memory", str(main), *map(str, channels), "-o", str(out)]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with open(out, "rb") as f:
        for blob in BLOBS:
            f.seek(blob.addr)
            assert f.read(blob.size) == blob.data(), blob.name
    alone = subprocess.run(
        [sys.executable, "-m", "migstream", "memory", str(main), "-o", str(tmp_path / "a")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert alone.returncode == 0 and "channel captures" in alone.stderr
