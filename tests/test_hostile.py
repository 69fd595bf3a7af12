"""Hostile input that cannot hurt: each attack as a user would run it, and the safe outcome.

Every test runs the CLI in a subprocess (or calls the API) on a crafted input
and checks a clear one-line error, bounded time, bounded memory and temporary
disk, and that nothing outside the requested output is touched.
"""

from __future__ import annotations

import bz2
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
from test_records_cli import BLOCKS, PS, add_devices, finish, pg, precopy_stream

import migstream
from migstream.errors import MigstreamError

ROOT = Path(__file__).resolve().parents[1]
# MIGSTREAM_TEST_CLI runs another build's CLI (e.g. to see that these tests fail without the fixes).
CLI = os.environ["MIGSTREAM_TEST_CLI"].split() if os.environ.get("MIGSTREAM_TEST_CLI") else [
    sys.executable,
    "-m",
    "migstream.cli.main",
]
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
            "fields": [{"name": f"a{level}", "type": "struct", "size": 0, "array_len": width, "struct": inner}],
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
