"""Streams written by a newer QEMU than the corpus has (11.x from Debian sid), when one is at hand.

`../shared/tools/get-new-qemu.sh sid` unpacks it under ~/.cache/migstream/qemu-sid (or set
MIGSTREAM_NEW_QEMU to a qemu-system-x86_64).  Without it these tests skip.  They check what the
corpus cannot: mapped-ram with and without multifd and with x-ignore-shared as QEMU 11 writes
them, and plain streams against QEMU's own analyzer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from qemu_harness import Blob, QemuGuest, analyze_migration_script

import migstream

NEW_QEMU = os.environ.get("MIGSTREAM_NEW_QEMU") or str(
    Path.home() / ".cache" / "migstream" / "qemu-sid" / "bin" / "qemu-system-x86_64"
)
pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(
        not os.access(NEW_QEMU, os.X_OK), reason="no newer QEMU unpacked (get-new-qemu.sh sid)"
    ),
]
BLOBS = [
    Blob("b1", "ctr", "new-b1", 1, 300000, 0x1000123),
    Blob("b2", "stamped", "new-b2", 2, 1 << 20, 0x4000000),
]


def _migrate(
    tmp: Path, name: str, uri: str, caps: dict[str, bool], params: dict[str, Any], extra: tuple[str, ...] = ()
) -> Path:
    out = tmp / f"{name}.mig"
    with QemuGuest(binary=NEW_QEMU, blob_dir=tmp, memory="128M", blobs=BLOBS, extra_args=extra) as guest:
        if caps:
            guest.set_capabilities(caps)
        if params:
            guest.set_parameters(params)
        guest.migrate_uri(uri.format(out=out))
        guest.quit()
    return out


def _blobs_ok(path: Path) -> None:
    with migstream.open(path) as s:
        phys = s.physical()
        for blob in BLOBS:
            assert phys.pread(blob.addr, blob.size) == blob.data(), blob.name


@pytest.mark.parametrize(
    ("caps", "params"),
    [({"mapped-ram": True}, {}), ({"mapped-ram": True, "multifd": True}, {"multifd-channels": 2})],
    ids=["mapped-ram", "mapped-ram-multifd"],
)
def test_mapped_ram(tmp_path: Path, caps: dict[str, bool], params: dict[str, Any]) -> None:
    path = _migrate(tmp_path, "m", "file:{out}", caps, params)
    with migstream.open(path) as s:
        assert s.parsed.ram.mapped_ram and all(b.mapped_ram for b in s.ram_blocks)
        assert s.configuration is not None and "mapped-ram" in s.configuration.capabilities
    _blobs_ok(path)


def test_mapped_ram_ignore_shared_leaves_shared_ram_out(tmp_path: Path) -> None:
    backend = f"memory-backend-file,id=mem0,size=128M,mem-path={tmp_path / 'ram'},share=on"
    path = _migrate(
        tmp_path,
        "x",
        "file:{out}",
        {"mapped-ram": True, "x-ignore-shared": True},
        {},
        ("-object", backend, "-machine", "memory-backend=mem0"),
    )
    with migstream.open(path) as s:
        main = s.block("mem0")
        assert s.ram_blocks[0].mr_addr == 0 and not s.pagemap().present(0)
        assert main.pread(BLOBS[0].addr, 16) == bytes(16)
    out = tmp_path / "ext"
    done = subprocess.run(
        [sys.executable, "-m", "migstream", "extract", str(path), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    index = json.loads((out / "index.json").read_text())
    assert index["blocks"][0]["block"] == "mem0" and index["blocks"][0]["file"] is None


def test_plain_stream_matches_qemu_script(tmp_path: Path) -> None:
    path = _migrate(tmp_path, "p", "exec:cat > {out}", {}, {})
    _blobs_ok(path)
    script = analyze_migration_script()
    if script is None:
        pytest.skip("QEMU's analyze-migration.py is not cached")
    want = subprocess.run(
        [sys.executable, str(script), "-f", str(path), "-d", "state"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert want.returncode == 0, want.stderr
    got = subprocess.run(
        [sys.executable, "-m", "migstream.compat", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == json.loads(want.stdout)
