"""The CLI side of hostile input: ``migstream info MUTANT --json`` in a subprocess.

Like the contract's ``robust`` probe: for each stream, seeded offsets (half of
them within 24 bytes after a record start, half anywhere), truncations and
single-byte corruptions; every mutant must make ``migstream info MUTANT --json``
either exit 0 with one JSON document on stdout, or exit non-zero with 1-3 lines
on stderr -- never a traceback, never an ``internal error`` (an exception that
is not a MigstreamError reached the CLI), never a signal, never a hang
(timeout = hang guard), under a 4 GiB address-space limit.

This is the probe of the CLI's output contract only, on a few mutants; the
in-process sweeps of tests/test_sweeps.py put thousands of mutants through
the whole API.  ``MIGSTREAM_ROBUST_SEED`` changes the seed,
``MIGSTREAM_ROBUST_MUTANTS`` the number of mutants per corpus stream (builder
streams get half of it).
"""

from __future__ import annotations

import json
import lzma
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
from test_sweeps import RECIPES

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
CLI = [sys.executable, "-m", "migstream.cli.main"]
LIMIT_AS = 4 << 30
CALL_TIMEOUT = 20.0  # per mutant; a hang guard, not a speed requirement
SEED = os.environ.get("MIGSTREAM_ROBUST_SEED", "0")
MUTANTS = int(os.environ.get("MIGSTREAM_ROBUST_MUTANTS", "12"))  # per corpus stream
BUILDER_MUTANTS = max(2, MUTANTS // 2)  # per builder stream (they are many and small)
JOBS = max(2, min(4, (os.cpu_count() or 1) + 1))
NEAR = 24  # "near a record start": within this many bytes after it

CORPUS_STREAMS = ["qemu-10.0/pc-tcp-multifd", "qemu-7.2/pc-x-ignore-shared", "qemu-7.2/pc-old-machine"]


@dataclass(frozen=True)
class Mutant:
    label: str
    data: bytes


@dataclass
class Outcome:
    label: str
    rc: int | None  # None = timed out
    stdout: bytes
    stderr: bytes


def make_mutants(data: bytes, starts: Sequence[int], name: str, n: int = MUTANTS) -> list[Mutant]:
    rng = random.Random(f"robust:{name}:{SEED}")
    bounds = sorted({s for s in starts if 0 <= s < len(data)})

    def pick() -> int:
        if bounds and rng.random() < 0.5:
            return min(len(data) - 1, rng.choice(bounds) + rng.randrange(NEAR))
        return rng.randrange(1, len(data))

    out: list[Mutant] = []
    for _ in range(n // 2):
        off = pick()
        out.append(Mutant(f"truncated at {off:#x}", data[:off]))
    for _ in range(n - n // 2):
        off = pick()
        xor = rng.randrange(1, 256)
        out.append(
            Mutant(f"byte {off:#x} ^= {xor:#04x}", data[:off] + bytes([data[off] ^ xor]) + data[off + 1 :])
        )
    return out


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_AS, LIMIT_AS))


@dataclass
class _Running:
    label: str
    proc: subprocess.Popen[bytes]
    out: IO[bytes]
    err: IO[bytes]
    path: Path
    started: float


def run_mutants(mutants: Sequence[Mutant], workdir: Path) -> list[Outcome]:
    """Run ``info MUTANT --json`` for every mutant, a few at a time (processes
    are started from this thread only, so ``preexec_fn`` is safe)."""
    pending = list(enumerate(mutants))
    running: dict[int, _Running] = {}
    results: dict[int, Outcome] = {}
    while pending or running:
        while pending and len(running) < JOBS:
            i, m = pending.pop(0)
            path = workdir / f"mutant-{i}.mig"
            path.write_bytes(m.data)
            out = tempfile.TemporaryFile()  # noqa: SIM115 - closed when the process is reaped
            err = tempfile.TemporaryFile()  # noqa: SIM115
            proc = subprocess.Popen(
                [*CLI, "info", str(path), "--json"],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                preexec_fn=_limit_address_space,
                start_new_session=True,
            )
            running[i] = _Running(m.label, proc, out, err, path, time.monotonic())
        for i, r in list(running.items()):
            rc = r.proc.poll()
            if rc is None:
                if time.monotonic() - r.started <= CALL_TIMEOUT:
                    continue
                r.proc.kill()
                r.proc.wait()
            r.out.seek(0)
            r.err.seek(0)
            results[i] = Outcome(r.label, rc, r.out.read(), r.err.read())
            r.out.close()
            r.err.close()
            r.path.unlink()
            del running[i]
        time.sleep(0.005)
    return [results[i] for i in range(len(mutants))]


def problem(o: Outcome) -> str | None:
    """Why an outcome breaks the contract, or None."""
    err = o.stderr.decode("utf-8", "replace")
    if o.rc is None:
        return f"{o.label}: no answer within {CALL_TIMEOUT:.0f}s"
    if "Traceback (most recent call last)" in err:
        return f"{o.label}: traceback on stderr: {err.strip().splitlines()[-1][:200]}"
    if o.rc < 0:
        return f"{o.label}: killed by signal {-o.rc}"
    if "internal error" in err:
        return f"{o.label}: {err.strip().splitlines()[-1][:200]}"
    if o.rc == 0:
        try:
            json.loads(o.stdout)
        except ValueError:
            return f"{o.label}: exit 0 but stdout is not JSON: {o.stdout[:80]!r}"
        return None
    lines = [x for x in err.splitlines() if x.strip()]
    if not lines:
        return f"{o.label}: exit {o.rc} with empty stderr"
    if len(lines) > 3:
        return f"{o.label}: exit {o.rc} with {len(lines)} stderr lines: {lines[0][:120]}"
    return None


def sweep(data: bytes, starts: Sequence[int], name: str, workdir: Path, n: int = MUTANTS) -> None:
    outcomes = run_mutants(make_mutants(data, starts, name, n), workdir)
    bad = [p for p in map(problem, outcomes) if p is not None]
    assert not bad, f"{len(bad)} of {len(outcomes)} mutants of {name}:\n" + "\n".join(bad[:10])


# ---------------------------------------------------------------------------
# builder streams

# The builder streams of the in-process sweeps (tests/test_sweeps.py).


def test_mutant_generation_is_seeded() -> None:
    data = bytes(range(256)) * 4
    a = make_mutants(data, [0, 100, 500], "x", 10)
    b = make_mutants(data, [0, 100, 500], "x", 10)
    assert a == b and len(a) == 10
    assert all(len(m.data) < len(data) for m in a[:5])
    assert all(len(m.data) == len(data) and m.data != data for m in a[5:])


def test_problem_detection() -> None:
    assert problem(Outcome("ok", 0, b'{"records": []}', b"")) is None
    assert problem(Outcome("err", 1, b"", b"migstream: error: at offset 0x10: bad\n")) is None
    assert problem(Outcome("t", None, b"", b""))
    assert problem(Outcome("tb", 1, b"", b"Traceback (most recent call last):\n  x\nValueError\n"))
    assert problem(Outcome("sig", -11, b"", b""))
    assert problem(Outcome("json", 0, b"{", b""))
    assert problem(Outcome("silent", 1, b"", b"  \n"))
    assert problem(Outcome("long", 1, b"", b"a\nb\nc\nd\n"))
    internal = b"migstream: internal error: IndexError: list index out of range (run with --traceback)\n"
    assert problem(Outcome("internal", 2, b"", internal))


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_builder_stream_sweep(name: str, tmp_path: Path) -> None:
    b = RECIPES[name]()
    data = b.data()
    starts = [r["offset"] for r in b.records] + b.footer_offsets
    sweep(data, starts, f"builder:{name}", tmp_path, BUILDER_MUTANTS)


# ---------------------------------------------------------------------------
# corpus streams


def corpus_stream(stream_id: str, tmp_path: Path) -> tuple[bytes, list[int]]:
    base = CORPUS / stream_id
    if not (base / "stream.mig.xz").is_file():
        pytest.skip(f"corpus stream {stream_id} absent")
    data = lzma.decompress((base / "stream.mig.xz").read_bytes())
    starts: list[int] = []
    sec = base / "sections.json.xz"
    if sec.is_file():
        starts = [int(r["off"]) for r in json.loads(lzma.decompress(sec.read_bytes()))["records"]]
    return data, starts


@pytest.mark.parametrize("stream_id", CORPUS_STREAMS)
def test_corpus_stream_sweep(stream_id: str, tmp_path: Path) -> None:
    data, starts = corpus_stream(stream_id, tmp_path)
    sweep(data, starts, f"corpus:{stream_id}", tmp_path)
