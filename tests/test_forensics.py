"""Real streams -> `migstream memory --format elf` -> real gdb, gdb-multiarch and volatility3.

The blobs placed in guest RAM at known addresses (corpus manifest) must read
back at their guest-physical address through each tool, and gdb must show the
vCPU registers that `info registers` showed in the guest.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import CorpusCache, corpus_streams
from test_elf import _volatility_read_physical

import migstream

STREAMS = {s["id"]: s for s in corpus_streams()}
CASES = [
    "qemu-10.0/q35-3G-highmem",
    "qemu-7.2/pc-bios-devs",
    "qemu-10.0/aarch64-virt-gic3-smp2",
    "qemu-7.2/ppc64-pseries-slof",
]
GDB = {
    "x86_64": shutil.which("gdb"),
    "aarch64": shutil.which("gdb-multiarch"),
    "ppc64": shutil.which("gdb-multiarch"),
}
PC_REG = {"x86_64": ("pc", "rip"), "aarch64": ("pc", "pc"), "ppc64": ("pc", "nip")}




def _core(corpus: CorpusCache, sid: str, tmp_path: Path) -> Path:
    core = tmp_path / "core.elf"
    cli = [
        sys.executable,
        "-m",
        "migstream",
        "memory",
        str(corpus.raw(sid)),
        "-o",
        str(core),
        "--format",
        "elf",
    ]
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return core


def _gdb(gdb: str, core: Path, *commands: str, arch: str) -> str:
    setup = {
        "x86_64": [],
        "aarch64": ["set architecture aarch64"],
        "ppc64": ["set architecture powerpc:common64"],
    }
    args = [gdb, "-nx", "-batch"]
    for cmd in setup[arch]:
        args += ["-ex", cmd]
    args += ["-c", str(core)]
    for cmd in commands:
        args += ["-ex", cmd]
    return subprocess.run(args, capture_output=True, text=True, timeout=120).stdout


def _gdb_bytes(out: str) -> bytes:
    values = []
    for line in out.splitlines():
        if line.startswith("0x") and ":" in line:
            values += [int(tok, 16) for tok in line.split(":", 1)[1].split()]
    return bytes(values)


@pytest.mark.parametrize("sid", CASES)
def test_gdb_reads_blobs_and_registers(corpus: CorpusCache, tmp_path: Path, sid: str) -> None:
    meta: dict[str, Any] = STREAMS[sid]
    arch = meta["target"]
    gdb = GDB.get(arch)
    if gdb is None:
        pytest.skip(f"no gdb for {arch}")
    core = _core(corpus, sid, tmp_path)
    with migstream.open(corpus.raw(sid)) as s:
        phys = s.physical()
        cpu0 = s.cpus()[0]
        for blob in meta["blobs"]:
            want = phys.pread(blob["addr"], 16)
            got = _gdb_bytes(_gdb(gdb, core, f"x/16xb {blob['addr']:#x}", arch=arch))
            assert got == want, blob["name"]
    gdb_name, reg = PC_REG[arch]
    out = _gdb(gdb, core, f"p/x ${gdb_name}", arch=arch)
    want = cpu0.registers[reg]
    if arch == "x86_64" and not cpu0.extra.get("hflags", 0) & (1 << 14):
        want = int(want) & 0xFFFFFFFF  # outside long mode the core is EM_386, as QEMU writes it
    assert int(out.strip().split("=")[-1], 16) == want


@pytest.mark.parametrize(
    "sid", ["qemu-10.0/q35-3G-highmem", "qemu-7.2/pc-running-xbzrle", "qemu-10.0/aarch64-virt-paused"]
)
def test_volatility_physical_layer_reads_blobs(corpus: CorpusCache, tmp_path: Path, sid: str) -> None:
    pytest.importorskip("volatility3")

    core = _core(corpus, sid, tmp_path)
    for blob in STREAMS[sid]["blobs"]:
        data = _volatility_read_physical(core, blob["addr"], blob["size"])
        assert hashlib.sha256(data).hexdigest() == blob["sha256"], blob["name"]
