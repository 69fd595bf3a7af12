"""``migstream diff`` on pairs of real QEMU saves whose differences are known.

* The same guest (firmware that only halts) saved twice, one page of its blob changed in
  between (written through QEMU's gdbstub, physical-memory mode): exactly that page differs.
* A running guest (the loop firmware, which only writes pages 0x10000-0x4ffff) saved twice:
  RAM differs only inside that range, and the vCPU state differs.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qemu_harness import Blob, QemuGuest, find_qemu, loop_bios

import migstream
from migstream.compare.diff import diff_streams

pytestmark = [pytest.mark.qemu, pytest.mark.skipif(find_qemu() is None, reason="no qemu-system-x86_64")]

PS = 4096
BLOB = Blob("b1", "ctr", "compare-diff", 1, 16 * PS, 0x1000000)
CHANGED_PAGE = 5  # page of the blob overwritten between the two saves


def halt_bios() -> bytes:
    """A 64 KiB ``-bios`` image that halts forever at the reset vector: the guest writes no RAM."""
    image = bytearray(b"\xf4" * 0x10000)
    image[0xFFF0:0xFFF3] = bytes.fromhex("f4ebfd")  # hlt; jmp back to the hlt
    return bytes(image)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Gdb:
    """The few GDB remote-protocol packets needed to write guest-physical memory."""

    def __init__(self, port: int) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.buf = b""

    def _read_packet(self) -> str:
        while True:
            start = self.buf.find(b"$")
            end = self.buf.find(b"#", start + 1) if start >= 0 else -1
            if start >= 0 and end >= 0 and len(self.buf) >= end + 3:
                body = self.buf[start + 1 : end].decode()
                self.buf = self.buf[end + 3 :]
                self.sock.sendall(b"+")
                return body
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("gdbstub closed the connection")
            self.buf += chunk

    def packet(self, body: str) -> str:
        """Send one packet; its reply (stop notices the guest's stops cause are skipped)."""
        checksum = sum(body.encode()) % 256
        self.sock.sendall(f"${body}#{checksum:02x}".encode())
        while True:
            reply = self._read_packet()
            if not reply.startswith(("T", "S")):
                return reply

    def write_physical(self, addr: int, data: bytes) -> None:
        assert self.packet("Qqemu.PhyMemMode:1") == "OK"
        for i in range(0, len(data), 256):
            part = data[i : i + 256]
            assert self.packet(f"M{addr + i:x},{len(part):x}:{part.hex()}") == "OK"

    def close(self) -> None:
        self.sock.close()


def _diff_cli(a: Path, b: Path, *extra: str) -> tuple[int, dict[str, object]]:
    res = subprocess.run(
        [sys.executable, "-m", "migstream", "diff", str(a), str(b), "--json", *extra],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode in (0, 1), res.stderr
    doc: dict[str, object] = json.loads(res.stdout)
    return res.returncode, doc


def test_same_guest_one_blob_page_changed(tmp_path: Path) -> None:
    port = _free_port()
    bios = tmp_path / "halt-bios.bin"
    bios.write_bytes(halt_bios())
    a, b = tmp_path / "a.mig", tmp_path / "b.mig"
    extra = ["-bios", str(bios), "-gdb", f"tcp:127.0.0.1:{port}"]
    with QemuGuest(memory="64M", blobs=[BLOB], extra_args=extra, workdir=tmp_path / "q") as guest:
        gdb = Gdb(port)  # connecting pauses the guest (never detached: detaching would resume it)
        try:
            guest.migrate_to_file(a)
            # QEMU saves a guest stopped by a completed save only after it ran again; the
            # firmware only halts, so running it changes no RAM.
            guest.cont()
            guest.stop()
            gdb.write_physical(BLOB.addr + CHANGED_PAGE * PS + 100, b"changed between the two saves")
            guest.migrate_to_file(b)
        finally:
            gdb.close()
        guest.quit()
    code, doc = _diff_cli(a, b, "--memory-only")
    assert code == 1
    ram = {r["block"]: r for r in doc["ram"]}  # type: ignore[attr-defined]
    page = BLOB.addr + CHANGED_PAGE * PS  # below 3.5 GiB: pc.ram offset == guest-physical address
    assert ram["pc.ram"]["ranges"] == [[page, page + PS]]
    assert ram["pc.ram"]["pages_differ"] == 1
    assert ram["pc.ram"]["digest_a"] != ram["pc.ram"]["digest_b"]
    others = [r for name, r in ram.items() if name != "pc.ram"]
    assert others and all(r["pages_differ"] == 0 and r["digest_a"] == r["digest_b"] for r in others)
    # The same answer through the API, and the device state of a paused guest is unchanged
    # but for the clocks.
    with migstream.open(a) as sa, migstream.open(b) as sb:
        d = diff_streams(sa, sb, ignore=["mc146818rtc.*", "timer.*", "hpet.*", "kvmclock.*", "globalstate.*"])
    assert [r.ranges for r in d.ram if r.block == "pc.ram"] == [((page, page + PS),)]
    assert not d.only_a and not d.only_b


def test_running_guest_saved_twice(tmp_path: Path) -> None:
    bios = tmp_path / "loop-bios.bin"
    bios.write_bytes(loop_bios())
    a, b = tmp_path / "a.mig", tmp_path / "b.mig"
    with QemuGuest(memory="64M", extra_args=["-bios", str(bios)], workdir=tmp_path / "q") as guest:
        guest.cont()
        time.sleep(0.3)
        guest.migrate_to_file(a)  # the guest is stopped once the save completes
        guest.cont()
        time.sleep(0.3)
        guest.migrate_to_file(b)
        guest.quit()
    with migstream.open(a) as sa, migstream.open(b) as sb:
        d = diff_streams(sa, sb)
    ram = {r.block: r for r in d.ram}
    pc = ram["pc.ram"]
    assert pc.pages_differ > 0
    assert all(0x10000 <= lo < hi <= 0x50000 for lo, hi in pc.ranges), pc.ranges
    assert all(r.pages_differ == 0 for name, r in ram.items() if name != "pc.ram")
    cpu = [dev for dev in d.devices if dev.section == "cpu"]
    assert cpu and any(".env.regs" in f.path or ".env.eip" in f.path for f in cpu[0].fields)
    # Text output names the block and a range.
    res = subprocess.run(
        [sys.executable, "-m", "migstream", "diff", str(a), str(b)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 1 and "RAM pc.ram:" in res.stdout and "different" in res.stdout
