"""A stream cut short keeps what was read: records up to the cut, pages that arrived, exit status 3."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CorpusCache, manifest

import migstream
from migstream.errors import TruncatedError

CLI = [sys.executable, "-m", "migstream.cli.main"]
STREAM = "qemu-10.0/pc-paused-min"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, check=False)


def _entry(stream_id: str) -> dict:
    return next(s for s in manifest()["streams"] if s["id"] == stream_id)


@pytest.fixture(scope="module")
def full(corpus: CorpusCache) -> Path:
    return corpus.raw(STREAM)


def _cut(full: Path, tmp_path: Path, size: int) -> Path:
    out = tmp_path / f"cut-{size}.mig"
    with open(full, "rb") as f:
        out.write_bytes(f.read(size))
    return out


def test_api_keeps_records_before_the_cut(full: Path, tmp_path: Path) -> None:
    with migstream.open(full) as s:
        whole = [(r.offset, r.type) for r in s.records]
        assert s.truncated is None
    cut_at = whole[len(whole) // 2][0] + 3  # inside a record in the middle
    with migstream.open(_cut(full, tmp_path, cut_at)) as s:
        assert isinstance(s.truncated, TruncatedError)
        assert s.truncated.offset is not None and s.truncated.offset <= cut_at
        got = [(r.offset, r.type) for r in s.records]
        assert got == [rec for rec in whole if rec[0] < got[-1][0] + 1]
        assert got and got[-1][0] < cut_at


def test_info_lists_records_and_exits_3(full: Path, tmp_path: Path) -> None:
    cut = _cut(full, tmp_path, full.stat().st_size // 2)
    proc = _run("info", str(cut), "--json")
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "partial" in lines[0] and "offset 0x" in lines[0]
    doc = json.loads(proc.stdout)
    assert doc["truncated"]["offset"] <= full.stat().st_size // 2
    assert [r["type"] for r in doc["records"][:3]] == ["HEADER", "CONFIGURATION", "SECTION_START"]
    text = _run("info", str(cut))
    assert text.returncode == 3 and "the stream ends early" in text.stdout


def test_memory_keeps_the_pages_that_arrived(full: Path, tmp_path: Path) -> None:
    """Blobs wholly before the cut are in the partial image, byte for byte."""
    entry = _entry(STREAM)
    blobs = entry.get("blobs") or []
    if not blobs:
        pytest.skip("no blobs in the manifest entry")
    size = full.stat().st_size
    cut = _cut(full, tmp_path, size - size // 4)
    out = tmp_path / "partial.raw"
    proc = _run("memory", str(cut), "-o", str(out), "--format", "raw")
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("migstream: partial:")
    whole = tmp_path / "whole.raw"
    assert _run("memory", str(full), "-o", str(whole)).returncode == 0
    # Every page of the partial image is either the same as in the whole image, or zero.
    same = differ_nonzero = 0
    with open(out, "rb") as a, open(whole, "rb") as b:
        for blob in blobs:
            a.seek(blob["addr"])
            b.seek(blob["addr"])
            pa, pb = a.read(blob["size"]), b.read(blob["size"])
            if pa == pb:
                same += 1
                assert hashlib.sha256(pa).hexdigest() == blob["sha256"]
            elif pa.strip(b"\0"):
                differ_nonzero += 1
    assert same >= 1
    assert differ_nonzero <= 1  # at most the blob the cut falls in is half there


def test_extract_exits_3_and_keeps_files(full: Path, tmp_path: Path) -> None:
    cut = _cut(full, tmp_path, full.stat().st_size // 2)
    proc = _run("extract", str(cut), "-o", str(tmp_path / "x"))
    assert proc.returncode == 3, proc.stderr
    assert (tmp_path / "x" / "index.json").is_file()


def test_traceback_flag_before_the_command(tmp_path: Path) -> None:
    proc = _run("--traceback", "info", str(tmp_path / "missing.mig"))
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    quiet = _run("info", str(tmp_path / "missing.mig"))
    assert "Traceback" not in quiet.stderr and len(quiet.stderr.strip().splitlines()) == 1
