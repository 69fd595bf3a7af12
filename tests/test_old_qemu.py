"""Streams written by QEMU 5.2 for old machine types: no configuration, no footers, no description.

`../shared/tools/get-old-qemu.sh` unpacks QEMU 5.2 (Debian bullseye) under
~/.cache/migstream/qemu-bullseye (or set MIGSTREAM_OLD_QEMU to a qemu-system-x86_64); without
it these tests skip.  Oracle: the blobs QEMU loaded into guest RAM at known addresses, and the
registers of a vCPU at reset (what `info registers` shows before the first instruction).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from qemu_harness import Blob, QemuGuest
from test_multifd_capture import _Sink

import migstream

OLD_QEMU = os.environ.get("MIGSTREAM_OLD_QEMU") or str(
    Path.home() / ".cache" / "migstream" / "qemu-bullseye" / "bin" / "qemu-system-x86_64"
)
pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(not os.access(OLD_QEMU, os.X_OK), reason="no QEMU 5.2 unpacked (get-old-qemu.sh)"),
]
BLOBS = [
    Blob("o1", "ctr", "old-b1", 1, 200000, 0x800123),
    Blob("o2", "stamped", "old-b2", 2, 1 << 20, 0x2000000),
]
CLI = [sys.executable, "-m", "migstream.cli.main"]


def _save(tmp: Path, name: str, machine: str, postcopy: bool = False) -> Path:
    out = tmp / f"{name}.mig"
    with QemuGuest(binary=OLD_QEMU, blob_dir=tmp, machine=machine, memory="64M", blobs=BLOBS) as guest:
        if postcopy:
            # Postcopy needs a socket (a return path); the sink keeps what the source sends.
            sink = _Sink()
            try:
                guest.set_capabilities({"postcopy-ram": True})
                guest.qmp("migrate", {"uri": f"tcp:127.0.0.1:{sink.port}"})
                guest.qmp("migrate-start-postcopy")
                _wait_postcopy_sent(guest, sink)
            finally:
                guest.quit()
                sink.close()
            out.write_bytes(next(c for c in sink.captures if c[:4] == b"QEVM"))
            return out
        else:
            guest.migrate_uri(f"exec:cat > {out}")
        guest.quit()
    return out


def _wait_postcopy_sent(guest: QemuGuest, sink: _Sink) -> None:
    """Until the source sent all it will send: a sink never answers on the return path, so the
    source stays in postcopy-active; what it sent is complete once its RAM is all out."""
    deadline = time.monotonic() + 60
    last, same = -1, 0
    while time.monotonic() < deadline:
        info: dict[str, Any] = guest.qmp("query-migrate")
        if info.get("status") in ("failed", "cancelled"):
            raise AssertionError(f"migration {info}")
        size = sum(len(c) for c in sink.captures)
        done = info.get("status") == "completed" or info.get("ram", {}).get("remaining", 1) == 0
        same = same + 1 if done and size == last else 0
        if same >= 10:
            return
        last = size
        time.sleep(0.05)
    raise AssertionError("postcopy migration did not send everything")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, check=False)


CASES = [
    # (id, machine, postcopy, has configuration, has footers, has description): what QEMU 5.2 writes
    ("pc-1.4", "pc-i440fx-1.4", False, False, False, True),
    ("pc-2.0", "pc-i440fx-2.0", False, False, False, False),
    ("pc-2.2", "pc-i440fx-2.2", False, False, False, False),
    ("pc-2.4", "pc-i440fx-2.4", False, True, True, True),
    ("pc-2.4-suppress-vmdesc", "pc-i440fx-2.4,suppress-vmdesc=on", False, True, True, False),
    ("pc-2.2-postcopy", "pc-i440fx-2.2", True, False, False, False),
    ("pc-5.2-postcopy", "pc-i440fx-5.2", True, True, True, False),
]


@pytest.mark.parametrize(
    ("machine", "postcopy", "config", "footers", "desc"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_old_machine_types(
    tmp_path: Path, machine: str, postcopy: bool, config: bool, footers: bool, desc: bool
) -> None:
    path = _save(tmp_path, "s", machine, postcopy)
    with migstream.open(path) as s:
        assert (s.configuration is not None) == config
        assert bool(s.parsed.footers) == footers
        assert s.has_own_description == desc
        assert s.truncated is None
        assert any(r.type == "EOF" and r.depth == 0 for r in s.records)
        phys = s.physical()
        for blob in BLOBS:
            assert phys.pread(blob.addr, blob.size) == blob.data(), blob.name
        cpu = s.cpus()[0].registers
        assert cpu["rip"] == 0xFFF0 and cpu["cs"]["selector"] == 0xF000  # type: ignore[index]
    info = _run("info", str(path), "--json")
    assert info.returncode == 0, info.stderr
    out = tmp_path / "m.raw"
    mem = _run("memory", str(path), "-o", str(out))
    assert mem.returncode == 0, mem.stderr
    with open(out, "rb") as f:
        for blob in BLOBS:
            f.seek(blob.addr)
            assert f.read(blob.size) == blob.data(), blob.name
    cpus = _run("cpus", str(path))
    assert cpus.returncode == 0 and "EIP=0000fff0" in cpus.stdout, cpus.stderr
