"""Every real QEMU stream of the corpus against its ground truth, through the Python API.

Oracles: the corpus' own record list (sections.json), QEMU's analyze-migration.py
output where it succeeded (analyze-state.json), the blobs placed in guest RAM
at known addresses (sha256), and the guest page hashes taken with pmemsave.
"""

from __future__ import annotations

import hashlib
import lzma
from typing import Any

import pytest
from conftest import CORPUS, CorpusCache, corpus_streams

import migstream
from migstream.outputs.analyze_migration import render_state

STREAMS = {s["id"]: s for s in corpus_streams()}
IDS = sorted(STREAMS)
GT_TYPE = {
    "HEADER": "HEADER",
    "CONFIGURATION": "CONFIGURATION",
    "START": "SECTION_START",
    "PART": "SECTION_PART",
    "END": "SECTION_END",
    "FULL": "SECTION_FULL",
    "COMMAND": "COMMAND",
    "EOF": "EOF",
    "VMDESCRIPTION": "VMDESCRIPTION",
}


def _open(corpus: CorpusCache, sid: str) -> migstream.Stream:
    channels = [
        corpus.raw(sid, f"multifd-{i}.bin")
        for i in (1, 2)
        if (CORPUS / sid / f"multifd-{i}.bin.xz").is_file()
    ]
    return migstream.open(corpus.raw(sid), channels=channels)


def _gt_records(gt: dict[str, Any]) -> list[tuple[Any, ...]]:
    out = []
    for r in gt["records"]:
        t = GT_TYPE.get(r["type"])
        if t is None:
            continue
        section = t.startswith("SECTION_")
        header = t in ("SECTION_START", "SECTION_FULL")
        out.append(
            (
                t,
                r["off"],
                r.get("id") if section else None,
                r.get("instance") if header else None,
                r.get("version") if header else None,
                r.get("cmd"),
            )
        )
    return out


@pytest.mark.parametrize("sid", IDS)
def test_records_and_blocks_match_ground_truth(corpus: CorpusCache, sid: str) -> None:
    gt = corpus.json(sid, "sections.json")
    with _open(corpus, sid) as s:
        got = [(r.type, r.offset, r.section_id, r.instance_id, r.version_id, r.command) for r in s.records]
        assert got == _gt_records(gt)
        want_blocks = [(b["name"], b["used_length"]) for b in STREAMS[sid]["sections"]["ram"]["blocks"]]
        assert [(b.name, b.size) for b in s.ram_blocks] == want_blocks
        assert s.page_size == gt["page_size"]
        assert s.parsed.footers == gt["footers"]


@pytest.mark.parametrize("sid", [i for i in IDS if (CORPUS / i / "analyze-state.json.xz").is_file()])
def test_compat_state_equals_qemu_script(corpus: CorpusCache, sid: str) -> None:
    want = corpus.json(sid, "analyze-state.json")
    with _open(corpus, sid) as s:
        assert render_state(s) == want


@pytest.mark.parametrize("sid", IDS)
def test_blobs_at_their_guest_physical_address(corpus: CorpusCache, sid: str) -> None:
    meta = STREAMS[sid]
    with _open(corpus, sid) as s:
        phys = s.physical()
        for blob in meta["blobs"]:
            data = phys.pread(blob["addr"], blob["size"])
            if "x-ignore-shared" in meta.get("capabilities", {}):
                # pc.ram is not in the stream: it reads as zeros, never as stale data.
                assert data == bytes(len(data)) or hashlib.sha256(data).hexdigest() == blob["sha256"]
                continue
            assert hashlib.sha256(data).hexdigest() == blob["sha256"], blob["name"]


PAGE_CHECKED = (
    "pc-paused-min",
    "q35-3G-highmem",
    "pc-running-xbzrle",
    "pc-compress",
    "pc-postcopy",
    "pc-tcp-multifd",
    "aarch64-virt-paused",
    "ppc64-pseries-slof",
    "s390x-ccw-bios",
    "pc-mapped-ram",
)


def _pmem_pages(sid: str) -> dict[int, str]:
    """Ground-truth hashes of the non-zero guest pages: gpa -> sha256 prefix."""
    out = {}
    with lzma.open(CORPUS / sid / "pmem-pages.tsv.xz", "rt") as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                gpa, digest = line.split("\t")[:2]
                out[int(gpa, 16)] = digest.strip()
    return out


@pytest.mark.parametrize("sid", [i for i in IDS if i.endswith(PAGE_CHECKED)])
def test_guest_pages_match_pmemsave(corpus: CorpusCache, sid: str) -> None:
    """Every non-zero page of the ground truth, and zero elsewhere, inside the RAM ranges."""
    meta = STREAMS[sid]
    pages = _pmem_pages(sid)
    running = meta.get("run_state_after") == "running"
    with _open(corpus, sid) as s:
        phys = s.physical()
        for rng in meta["pmemsave"]["ranges"]:
            for gpa in range(rng["gpa"], rng["gpa"] + rng["size"], 4096):
                if 0xA0000 <= gpa < 0x100000 and meta["target"] == "x86_64":
                    continue
                if running and 0x10000 <= gpa < 0x50000:
                    continue
                data = phys.pread(gpa, 4096)
                want = pages.get(gpa)
                if want is None:
                    assert data == bytes(4096), hex(gpa)
                else:
                    assert hashlib.sha256(data).hexdigest()[: len(want)] == want, hex(gpa)
