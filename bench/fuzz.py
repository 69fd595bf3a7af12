#!/usr/bin/env python3
"""Coverage-guided fuzzing of the stream reader (atheris/libFuzzer), for as long as asked.

    python bench/fuzz.py --seconds 600 [--workdir DIR] [--engine atheris|random] [--json]

Seeds are made at run time in the work directory (never stored in the project):
every builder stream of tests/test_records_cli.py, and the small corpus streams
of ``../shared/corpus`` slimmed to their first RAM pages per block
(``fuzz_target.slim_stream``).  The target (tests/fuzz_target.py) drives each
input through open -> records -> device state -> cpus -> sections -> pagemap
-> block and physical reads -> info/state JSON; anything but a
MigstreamError, a hang of more than a few seconds, or a MemoryError under
its address-space limit is a finding.  After a finding the fuzzer starts
again on the grown corpus until the time is spent.

Prints execs, execs/s, coverage (libFuzzer's ``cov``/``ft`` over the
instrumented ``migstream`` bytecode), corpus size and every finding with its
reproducer file and traceback.  Exit status 1 when there was a finding.
``--engine random`` (or no atheris installed) uses a pure-Python mutation
loop with the same interface and no coverage.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import lzma
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

TARGET = ROOT / "tests" / "fuzz_target.py"
CORPUS = ROOT.parent / "shared" / "corpus"
#: Beyond the sweeps' seeds (tests/fuzz_target.py SEED_STREAMS), two more shapes.
EXTRA_SEEDS = ["qemu-10.0/pc-paused-min", "qemu-7.2/pc-validate-uuid"]


@dataclass
class Finding:
    kind: str  # crash, timeout, oom, ...
    reproducer: str
    signature: str
    traceback: str


@dataclass
class Summary:
    engine: str
    seconds: float
    runs: int = 0
    execs: int = 0
    cov: int = 0
    ft: int = 0
    corpus_units: int = 0
    seeds: int = 0
    findings: list[Finding] = field(default_factory=list)
    workdir: str = ""

    @property
    def execs_per_s(self) -> float:
        return self.execs / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "seconds": round(self.seconds, 1),
            "runs": self.runs,
            "execs": self.execs,
            "execs_per_s": round(self.execs_per_s),
            "cov": self.cov,
            "ft": self.ft,
            "corpus_units": self.corpus_units,
            "seeds": self.seeds,
            "findings": [f.__dict__ for f in self.findings],
            "workdir": self.workdir,
        }


def make_seeds(out: Path, max_len: int) -> int:
    """Write the seed inputs into ``out``; returns how many."""
    import test_records_cli as recipes
    from fuzz_target import SEED_STREAMS, slim_stream

    builders = {
        "precopy": recipes.precopy_stream,
        "precopy-nofooter-noconfig": lambda: recipes.precopy_stream(footers=False, config=False, padding=100),
        "postcopy": recipes.postcopy_stream,
        "every-command": recipes.every_command_stream,
        "special-sections": recipes.special_sections_stream,
        "xbzrle": recipes.xbzrle_stream,
        "mapped-ram": recipes.mapped_ram_stream,
        "compress": recipes.compress_stream,
        "multifd-flush": recipes.multifd_flush_stream,
        "ignore-shared": recipes.ignore_shared_stream,
        "hugepage-postcopy": recipes.hugepage_postcopy_stream,
    }
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for name, make in builders.items():
        data = make().data()
        if len(data) <= max_len:
            (out / f"builder-{name}").write_bytes(data)
            n += 1
    for sid in [*SEED_STREAMS, *EXTRA_SEEDS]:
        src = CORPUS / sid / "stream.mig.xz"
        if not src.is_file():
            continue
        data = slim_stream(lzma.decompress(src.read_bytes()))
        if len(data) <= max_len:
            (out / f"corpus-{sid.replace('/', '-')}").write_bytes(data)
            n += 1
    return n


_STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/", re.M)
_EXECS = re.compile(r"^stat::number_of_executed_units: (\d+)", re.M)
_ARTIFACT = re.compile(r"Test unit written to (\S+)")
_PY_EXC = "=== Uncaught Python exception: ==="
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::|$)", re.M)  # "IndexError: ...", "fuzz_target.Hang: ..."


def _signature(tb: str) -> str:
    """``ExcType at file:line`` of the innermost migstream frame (or the last frame)."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', tb)
    ours = [f for f in frames if "/migstream/" in f[0]] or frames
    heads = [m.group(1) for m in _EXC_LINE.finditer(tb) if m.group(1) not in ("Traceback", "in")]
    exc = heads[-1] if heads else "?"
    if ours:
        path, line, func = ours[-1]
        return f"{exc} at {path.rsplit('/migstream/', 1)[-1]}:{line} ({func})"
    return exc


def _one_run(args: argparse.Namespace, work: Path, seconds: int, run: int) -> tuple[str, int]:
    cmd = [sys.executable, str(TARGET)]
    if args.engine == "random":
        cmd.append("--random")
    cmd += [
        str(work / "corpus"),
        str(work / "seeds"),
        f"-max_total_time={seconds}",
        f"-artifact_prefix={work / 'findings'}/",
        f"-timeout={args.input_timeout}",
        f"-rss_limit_mb={args.rss_limit_mb}",
        f"-max_len={args.max_len}",
        f"-seed={args.seed + run}",
        "-print_final_stats=1",
    ]
    log = work / f"run-{run}.log"
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)
    return log.read_text(errors="replace"), proc.returncode


def fuzz(args: argparse.Namespace) -> Summary:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="migstream-fuzz-"))
    for sub in ("corpus", "seeds", "findings"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    summary = Summary(args.engine, 0.0, workdir=str(work))
    summary.seeds = make_seeds(work / "seeds", args.max_len)
    started = time.monotonic()
    deadline = started + args.seconds
    seen: dict[str, int] = {}
    while (left := int(deadline - time.monotonic())) >= 3:
        text, rc = _one_run(args, work, left, summary.runs)
        summary.runs += 1
        m = _EXECS.search(text)
        execs = int(m.group(1)) if m else 0
        if not m:  # a crash: libFuzzer prints no final stats; the last status line counts
            status = _STATUS.findall(text)
            execs = int(status[-1][0]) if status else 0
        summary.execs += execs
        status = _STATUS.findall(text)
        if status:
            summary.cov = max(summary.cov, int(status[-1][1]))
            summary.ft = max(summary.ft, int(status[-1][2]))
        if rc == 0:
            continue
        tb = text.split(_PY_EXC, 1)[1] if _PY_EXC in text else text[-3000:]
        tb = re.split(r"\n==\d+== ", tb, maxsplit=1)[0]
        artifacts = _ARTIFACT.findall(text)
        if not artifacts:
            print(f"fuzz: run {summary.runs} exited {rc} without a reproducer; see {work}/run-*.log")
            break
        path = artifacts[-1]
        kind = Path(path).name.split("-", 1)[0]
        sig = _signature(tb) if _PY_EXC in text else f"libFuzzer {kind}"
        seen[sig] = seen.get(sig, 0) + 1
        if seen[sig] == 1:
            summary.findings.append(Finding(kind, path, sig, tb.strip()))
            print(f"fuzz: finding {len(summary.findings)}: {sig}\n  reproducer: {path}", flush=True)
        if args.stop_on_finding or seen[sig] >= args.max_repeats:
            if seen[sig] >= args.max_repeats:
                print(f"fuzz: stopping: {sig} found {seen[sig]} times (fix it first)", flush=True)
            break
    summary.seconds = time.monotonic() - started
    summary.corpus_units = sum(1 for p in (work / "corpus").iterdir() if p.is_file())
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=300, help="total fuzzing time (default 300)")
    ap.add_argument("--workdir", help="seeds, corpus, findings and logs (default: a new temp dir)")
    have_atheris = importlib.util.find_spec("atheris") is not None
    ap.add_argument(
        "--engine", choices=["atheris", "random"], default="atheris" if have_atheris else "random"
    )
    ap.add_argument("--max-len", type=int, default=200_000, help="largest input (bytes)")
    ap.add_argument(
        "--input-timeout",
        type=int,
        default=60,
        help="libFuzzer -timeout in wall-clock s (the target: 5 s of CPU)",
    )
    ap.add_argument("--rss-limit-mb", type=int, default=3072)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--stop-on-finding", action="store_true")
    ap.add_argument("--max-repeats", type=int, default=3, help="stop when one finding comes back this often")
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON line at the end")
    args = ap.parse_args(argv)
    if args.engine == "atheris" and not have_atheris:
        ap.error("atheris is not installed (pip install -e '.[test]'), use --engine random")
    s = fuzz(args)
    print(
        f"fuzz: engine {s.engine}, {s.seconds:.0f} s, {s.runs} run(s), {s.execs} execs, "
        f"{s.execs_per_s:.0f} execs/s, cov {s.cov}, ft {s.ft}, corpus {s.corpus_units} units "
        f"from {s.seeds} seeds, {len(s.findings)} finding(s)"
    )
    print(f"fuzz: work dir {s.workdir} (reproducers in {s.workdir}/findings)")
    for i, f in enumerate(s.findings, 1):
        digest = hashlib.sha1(Path(f.reproducer).read_bytes()).hexdigest()[:12]
        print(
            f"--- finding {i}: {f.signature} ({f.kind}, {digest})\nreproducer: {f.reproducer}\n{f.traceback}"
        )
    if args.json:
        print(json.dumps(s.to_json()))
    return 1 if s.findings else 0


if __name__ == "__main__":
    sys.exit(main())
