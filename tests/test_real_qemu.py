"""End-to-end tests against streams written by the installed QEMU (``qemu-system-x86_64``).

Each test module run makes fresh streams with ``tests/qemu_harness.py``: a paused ``pc`` guest
with known blobs in RAM, migrated with ``exec:cat > FILE``.  The ``harness_*`` tests check the
streams themselves (with QEMU's own analyze-migration.py when it is cached); the others check
the migstream CLI (``migstream info/memory``, ``analyze-migration``) against the blobs, against
``pmemsave`` (what the guest's RAM really was) and against QEMU's script.

Run: ``.venv/bin/pytest -m qemu tests/test_real_qemu.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from qemu_harness import (  # noqa: E402
    PAGE_SIZE,
    Blob,
    GiB,
    MiB,
    MigrationResult,
    QemuGuest,
    analyze_migration_script,
    compat_command,
    elf_loads,
    elf_read,
    gpa_to_ram_offset,
    loop_bios,
    migstream_command,
    pc_ram_split,
    read_at,
    require_qemu,
    run_analyze_migration,
    sha256_file,
)

pytestmark = pytest.mark.qemu

CLI_TIMEOUT = 600.0
# x86: the guest sees VGA / BIOS shadow here, not pc.ram: never compared
LEGACY_HOLE = (0xA0000, 0x100000)


@dataclass
class Made:
    """A stream made for these tests, with what the guest's RAM held."""

    path: Path
    ram_size: int
    blobs: list[Blob]
    result: MigrationResult
    pmem: dict[int, bytes]  # GPA -> bytes read back with QMP pmemsave after migrating


def _make(
    directory: Path,
    name: str,
    memory: str,
    ram_size: int,
    blobs: list[Blob],
    pmem_ranges: Sequence[tuple[int, int]] = (),
    capabilities: dict[str, bool] | None = None,
    running_loop: bool = False,
    force_iterations: int = 0,
) -> Made:
    require_qemu()
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{name}.mig"
    extra: list[str] = []
    if running_loop:
        bios = directory / "loop-bios.bin"
        bios.write_bytes(loop_bios())
        extra = ["-bios", str(bios)]
    pmem: dict[int, bytes] = {}
    with QemuGuest(
        machine="pc", memory=memory, blobs=blobs, extra_args=extra, blob_dir=directory / "blobs", timeout=60
    ) as guest:
        if running_loop:
            guest.cont()
            time.sleep(0.3)
        result = guest.migrate_to_file(
            out, capabilities=capabilities, timeout=300, force_iterations=force_iterations
        )
        # after "completed" the guest is stopped (postmigrate): its RAM is what the stream ends with
        for gpa, size in pmem_ranges:
            pmem[gpa] = guest.pmemsave(gpa, size, directory / f"{name}-pmem-{gpa:x}.bin")
        guest.quit()
    return Made(out, ram_size, blobs, result, pmem)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Made:
    """pc, 128 MiB, paused at reset; a ctr blob, a stamped blob, an odd-sized unaligned blob."""
    blobs = [
        Blob("b1", "ctr", "mst-small-b1", 1, 256 * 1024, 0x1000000),
        Blob("b2", "stamped", "mst-small-b2", 2, 1 * MiB, 0x2000000),
        Blob("b3", "ctr", "mst-small-b3", 3, 74565, 0x3000123),
        Blob("b4", "stamped", "mst-small-b4", 4, 3 * PAGE_SIZE + 17, 0x7FF0000 - 0x5000 + 0x9),
    ]
    return _make(
        tmp_path_factory.mktemp("small"), "pc-128M", "128M", 128 * MiB, blobs, pmem_ranges=[(0, 128 * MiB)]
    )


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Made:
    """pc, 4 GiB (3 GiB low + 1 GiB at GPA 4 GiB), paused; blobs in low RAM, just below the
    3 GiB split, and above 4 GiB."""
    top_low = pc_ram_split(4 * GiB)
    blobs = [
        Blob("low", "ctr", "mst-4g-low", 1, 65536, 0x20000000),
        Blob("below3g", "stamped", "mst-4g-below3g", 2, 5 * PAGE_SIZE + 333, top_low - 6 * PAGE_SIZE + 0x21),
        Blob("high", "ctr", "mst-4g-high", 3, 1 * MiB + 777, 4 * GiB + 0x1234000),
        Blob("highend", "stamped", "mst-4g-highend", 4, 2 * PAGE_SIZE, 5 * GiB - 2 * PAGE_SIZE),
    ]
    ranges = [(b.addr & ~(PAGE_SIZE - 1), _page_span(b)) for b in blobs]
    return _make(tmp_path_factory.mktemp("big"), "pc-4G", "4G", 4 * GiB, blobs, pmem_ranges=ranges)


def _page_span(blob: Blob) -> int:
    start = blob.addr & ~(PAGE_SIZE - 1)
    end = (blob.addr + blob.size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    return end - start


# --------------------------------------------------------------------------- helpers


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(cmd, capture_output=True, timeout=CLI_TIMEOUT, cwd=cwd, check=False)
    err = proc.stderr.decode(errors="replace")
    assert "Traceback (most recent call last)" not in err, f"{cmd}: traceback:\n{err}"
    assert proc.returncode >= 0, f"{cmd}: killed by signal {-proc.returncode}"
    return proc


def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    proc = _run([*migstream_command(), *args])
    assert proc.returncode == 0, (
        f"migstream {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode(errors='replace')}"
    )
    return proc


def cli_json(*args: str) -> Any:
    return json.loads(cli(*args).stdout)


def _require_script() -> Path:
    script = analyze_migration_script()
    if script is None:
        pytest.skip("QEMU's analyze-migration.py is not cached (run shared/tools/get-analyze-migration.sh)")
    return script


def _qemu_extract(made: Made, where: Path) -> Path:
    """pc.ram as written by QEMU's script with -x (sparse, RAM-block offsets)."""
    script = _require_script()
    where.mkdir(parents=True, exist_ok=True)
    proc = run_analyze_migration(script, made.path, ["-x"], cwd=where)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    ram = where / "pc.ram"
    assert ram.exists()
    return ram


def _check_blobs_in_raw(made: Made, raw: Path) -> None:
    for blob in made.blobs:
        got = sha256_file(raw, blob.addr, blob.size)
        if got != blob.sha256():
            data = read_at(raw, blob.addr, blob.size)
            want = blob.data()
            first = next(i for i in range(blob.size) if data[i] != want[i])
            pytest.fail(
                f"blob {blob.name} at GPA {blob.addr:#x}: first differing byte at "
                f"GPA {blob.addr + first:#x} (got {data[first]:#04x}, want {want[first]:#04x})"
            )


def _check_pmem_in_raw(made: Made, raw: Path) -> None:
    """Every pmemsave'd range equals the raw dump, page by page (legacy VGA/BIOS window aside)."""
    for gpa, want in made.pmem.items():
        got = read_at(raw, gpa, len(want))
        for off in range(0, len(want), PAGE_SIZE):
            page = gpa + off
            if LEGACY_HOLE[0] <= page < LEGACY_HOLE[1]:
                continue
            if got[off : off + PAGE_SIZE] != want[off : off + PAGE_SIZE]:
                pytest.fail(f"page at GPA {page:#x} differs from the guest's RAM (pmemsave)")


# --------------------------------------------------------------------------- the streams themselves


def test_harness_stream_small(small: Made, tmp_path: Path) -> None:
    """The QEMU side works: a complete stream, blobs really in pc.ram (QEMU's own script)."""
    assert small.result.query_migrate["status"] == "completed"
    assert small.result.status_after == "postmigrate"
    head = small.path.read_bytes()[:8]
    assert head == b"QEVM\x00\x00\x00\x03"
    # pmemsave saw the blobs in the guest
    pm = small.pmem[0]
    for blob in small.blobs:
        assert pm[blob.addr : blob.addr + blob.size] == blob.data(), blob.name
    ram = _qemu_extract(small, tmp_path / "x")
    assert ram.stat().st_size == 128 * MiB
    for blob in small.blobs:
        assert read_at(ram, blob.addr, blob.size) == blob.data(), blob.name


def test_harness_stream_4g(big: Made, tmp_path: Path) -> None:
    """4 GiB pc: blobs sit at their pc.ram offsets (high RAM at offset 3 GiB = GPA 4 GiB)."""
    assert big.result.query_migrate["status"] == "completed"
    for blob in big.blobs:
        base = blob.addr & ~(PAGE_SIZE - 1)
        pm = big.pmem[base]
        assert pm[blob.addr - base : blob.addr - base + blob.size] == blob.data(), blob.name
    ram = _qemu_extract(big, tmp_path / "x")
    assert ram.stat().st_size == 4 * GiB
    for blob in big.blobs:
        off = gpa_to_ram_offset(blob.addr, big.ram_size)
        assert read_at(ram, off, blob.size) == blob.data(), blob.name


# --------------------------------------------------------------------------- CLI: pc 128 MiB


def _check_info(made: Made) -> None:
    doc = cli_json("info", str(made.path), "--json")
    records = doc["records"]
    types = [r["type"] for r in records]
    assert types[0] == "HEADER" and records[0]["offset"] == 0
    assert types[1] == "CONFIGURATION" and records[1]["offset"] == 8
    ram_starts = [r for r in records if r["type"] == "SECTION_START" and r.get("name") == "ram"]
    assert ram_starts, "no ram SECTION_START"
    assert "EOF" in types and "VMDESCRIPTION" in types
    assert types.index("EOF") < types.index("VMDESCRIPTION")
    offsets = [r["offset"] for r in records]
    assert offsets == sorted(offsets)
    assert offsets[-1] < made.result.size
    blocks = {b["name"]: b["size"] for b in doc["ram_blocks"]}
    assert doc["ram_blocks"][0]["name"] == "pc.ram"
    assert blocks["pc.ram"] == made.ram_size


def test_info_small(small: Made) -> None:
    _check_info(small)


def test_memory_raw_small(small: Made, tmp_path: Path) -> None:
    out = tmp_path / "mem.raw"
    cli("memory", str(small.path), "-o", str(out), "--format", "raw")
    _check_blobs_in_raw(small, out)
    _check_pmem_in_raw(small, out)


def test_memory_elf_small(small: Made, tmp_path: Path) -> None:
    out = tmp_path / "mem.elf"
    cli("memory", str(small.path), "-o", str(out), "--format", "elf")
    loads = elf_loads(out)
    assert loads, "no PT_LOAD segment"
    for blob in small.blobs:
        assert elf_read(out, loads, blob.addr, blob.size) == blob.data(), blob.name


def test_compat_state_matches_qemu_script(small: Made) -> None:
    script = _require_script()
    want = run_analyze_migration(script, small.path, ["-d", "state"])
    assert want.returncode == 0, want.stderr.decode(errors="replace")[-2000:]
    got = _run([*compat_command(), "-f", str(small.path), "-d", "state"])
    assert got.returncode == 0, got.stderr.decode(errors="replace")
    assert json.loads(got.stdout) == json.loads(want.stdout)


def test_compat_desc_matches_qemu_script(small: Made) -> None:
    script = _require_script()
    want = run_analyze_migration(script, small.path, ["-d", "desc"])
    assert want.returncode == 0
    got = _run([*compat_command(), "-f", str(small.path), "-d", "desc"])
    assert got.returncode == 0, got.stderr.decode(errors="replace")
    assert json.loads(got.stdout) == json.loads(want.stdout)


# --------------------------------------------------------------------------- CLI: pc 4 GiB


def test_info_4g(big: Made) -> None:
    _check_info(big)


@pytest.fixture(scope="module")
def big_raw(big: Made, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("big-raw") / "mem.raw"
    cli("memory", str(big.path), "-o", str(out), "--format", "raw")
    return out


def test_memory_raw_4g(big: Made, big_raw: Path) -> None:
    """Data above 4 GiB lands at its guest-physical address, not at its pc.ram offset."""
    out = big_raw
    _check_blobs_in_raw(big, out)
    _check_pmem_in_raw(big, out)
    # the 3-4 GiB hole holds no RAM: nothing of the high blobs may show up at their pc.ram offset
    high = next(b for b in big.blobs if b.name == "high")
    misplaced = read_at(out, gpa_to_ram_offset(high.addr, big.ram_size), 4096)
    assert misplaced != high.data()[:4096], "high RAM written at its pc.ram offset, not at GPA 4 GiB+"


def test_memory_raw_4g_sparse(big_raw: Path) -> None:
    """Zero ranges should be holes: a mostly-zero 4 GiB guest must not allocate GiBs on disk."""
    out = big_raw
    assert out.stat().st_blocks * 512 < 256 * MiB, "raw dump of a mostly-zero guest is not sparse"


def test_memory_elf_4g(big: Made, tmp_path: Path) -> None:
    out = tmp_path / "mem.elf"
    cli("memory", str(big.path), "-o", str(out), "--format", "elf")
    loads = elf_loads(out)
    for blob in big.blobs:
        assert elf_read(out, loads, blob.addr, blob.size) == blob.data(), blob.name
    # high RAM is described at GPA 4 GiB and up
    assert any(seg.paddr <= 4 * GiB < seg.paddr + seg.memsz for seg in loads), loads


# --------------------------------------------------------------------------- running guest, XBZRLE


@pytest.fixture(scope="module")
def xbzrle(tmp_path_factory: pytest.TempPathFactory) -> Made:
    """A running guest (loop firmware dirtying 64 pages) migrated with xbzrle over several rounds."""
    blobs = [Blob("b1", "ctr", "mst-xbzrle-b1", 1, 300000, 0x2000000)]
    directory = tmp_path_factory.mktemp("xbzrle")
    for attempt in range(3):
        made = _make(
            directory,
            f"xbzrle-{attempt}",
            "64M",
            64 * MiB,
            blobs,
            pmem_ranges=[(0x10000, 0x40000)],
            capabilities={"xbzrle": True},
            running_loop=True,
            force_iterations=4,
        )
        if made.result.query_migrate.get("xbzrle-cache", {}).get("pages", 0) > 0:
            return made
    pytest.skip("QEMU sent no XBZRLE page in 3 attempts")


def test_harness_xbzrle(xbzrle: Made) -> None:
    assert xbzrle.result.query_migrate["xbzrle-cache"]["pages"] > 0
    counters = [
        int.from_bytes(xbzrle.pmem[0x10000][i * PAGE_SIZE : i * PAGE_SIZE + 4], "little") for i in range(64)
    ]
    assert all(c > 0 for c in counters)


def test_memory_raw_xbzrle(xbzrle: Made, tmp_path: Path) -> None:
    """The last version of each page wins: the loop counters equal the guest's final RAM."""
    out = tmp_path / "mem.raw"
    cli("memory", str(xbzrle.path), "-o", str(out), "--format", "raw")
    _check_blobs_in_raw(xbzrle, out)
    _check_pmem_in_raw(xbzrle, out)
