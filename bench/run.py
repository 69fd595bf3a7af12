#!/usr/bin/env python3
"""Time migstream against ``dd``, ``cat``, ``cp`` and QEMU's own analyze-migration.py.

    python bench/run.py [--stream FILE | --synthetic scattered|sparse|contiguous] [--quick]
                        [-n N] [--cold] [--pipe-tmpdir-mib M] [--json REPORT]

Without ``--stream`` or ``--synthetic`` the stream comes from ``bench/make_stream.py``: a real
QEMU guest (built once, cached in bench/out/).  ``--synthetic`` takes a builder-made stream in
QEMU's record shapes: ``scattered`` (every 4th page data, a used guest's first pass), ``sparse``
(a 64 GiB guest, 1 page in 64 data), ``contiguous``.  Every command runs N times (best time kept);
a command that fails (exit status, traceback, timeout) shows as ``failed`` and the run goes on.
Each migstream row also reports its peak anonymous memory (RssAnon, sampled from /proc: the
mapped input is not anonymous).  The pipe rows feed the stream through ``cat |`` with ``TMPDIR``
set to a directory of at most ``--pipe-tmpdir-mib`` MiB (a tmpfs when root can mount one).
Page cache: warm by default (one untimed ``cat`` first); ``--cold`` drops it before every timed
run (root only).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import make_stream  # noqa: E402
from qemu_harness import (  # noqa: E402
    Blob,
    analyze_migration_script,
    elf_loads,
    elf_read,
    gpa_to_ram_offset,
    migstream_command,
    rss_anon,
    sha256_file,
    sha256_hex,
)

# the migstream commands timed; {stream} and {out} are filled in
MIGSTREAM_CASES: list[tuple[str, list[str], str]] = [
    # (row name, arguments, output kind: "" = stdout only, "file" = {out} is a file, "dir" = a directory)
    ("migstream info", ["info", "{stream}"], ""),
    ("migstream info --json", ["info", "{stream}", "--json"], ""),
    ("migstream state --json", ["state", "{stream}", "--json"], ""),
    ("migstream memory raw", ["memory", "{stream}", "-o", "{out}", "--format", "raw"], "file"),
    ("migstream memory elf", ["memory", "{stream}", "-o", "{out}", "--format", "elf"], "file"),
    ("migstream extract", ["extract", "{stream}", "-o", "{out}"], "dir"),
]

RATIOS: list[tuple[str, str, str, float | None]] = [
    # (label, numerator row, denominator row, target: at most this, or at least -target when negative)
    ("info / dd", "migstream info", "dd", 2.0),
    ("state / dd", "migstream state --json", "dd", None),
    ("cat | info - / cat | dd", "cat | migstream info -", "cat | dd", 1.5),
    ("info / cat", "migstream info", "cat", None),
    ("state / cat", "migstream state --json", "cat", None),
    ("QEMU -d state / info (at least)", "QEMU script -d state", "migstream info", -5.0),
    ("state / QEMU -d state", "migstream state --json", "QEMU script -d state", None),
    ("compat -d state / QEMU -d state", "analyze-migration -d state", "QEMU script -d state", None),
    ("memory raw / cp", "migstream memory raw", "cp", 1.5),
    ("memory elf / cp", "migstream memory elf", "cp", 1.5),
    ("extract / cp", "migstream extract", "cp", 1.5),
    ("extract / QEMU -x", "migstream extract", "QEMU script -x", None),
    ("cat | memory raw - / cp", "cat | migstream memory raw -", "cp", None),
    ("cat | memory raw - / memory raw", "cat | migstream memory raw -", "migstream memory raw", None),
]


@dataclass
class Row:
    name: str
    argv: list[str]
    out_kind: str = ""
    cwd: Path | None = None
    times: list[float] = field(default_factory=list)
    error: str = ""
    check: str = ""
    env: dict[str, str] | None = None
    #: Peak RssAnon (bytes) of the process over all runs; None when not sampled.
    anon_peak: int | None = None

    @property
    def best(self) -> float | None:
        return min(self.times) if self.times and not self.error else None


def _clear(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def run_row(
    row: Row,
    repeat: int,
    timeout: float,
    out: Path | None,
    cold: bool,
    before: Callable[[], None] | None = None,
) -> None:
    for _ in range(repeat):
        if out is not None:
            _clear(out)
            if row.out_kind == "dir" or row.cwd is not None:
                out.mkdir(parents=True, exist_ok=True)
        if before is not None:
            before()
        # untimed: flush the previous run's output so its writeback does not land in this run
        os.sync()
        if cold:
            drop_caches()
        start = time.perf_counter()
        try:
            proc = subprocess.Popen(
                row.argv,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                cwd=row.cwd,
                env={**os.environ, **row.env} if row.env else None,
            )
        except OSError as exc:
            row.error = str(exc)
            return
        peak, err_bytes = _wait_sampling(proc, start + timeout)
        elapsed = time.perf_counter() - start
        if peak is None:
            row.error = f"timeout after {timeout:.0f}s"
            return
        if peak:
            row.anon_peak = max(row.anon_peak or 0, peak)
        err = err_bytes.decode(errors="replace")
        if proc.returncode != 0 or "Traceback (most recent call last)" in err:
            lines = [ln for ln in err.strip().splitlines() if ln.strip()]
            row.error = f"exit {proc.returncode}: {lines[-1][:100] if lines else ''}"
            return
        row.times.append(elapsed)


def _wait_sampling(proc: subprocess.Popen[bytes], deadline: float) -> tuple[int | None, bytes]:
    """Wait for ``proc``, sampling its RssAnon; (peak bytes, stderr), or (None, ...) on timeout."""
    import threading

    assert proc.stderr is not None
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    peak = 0
    while proc.poll() is None:
        peak = max(peak, rss_anon(proc.pid))
        if time.perf_counter() > deadline:
            proc.kill()
            proc.wait()
            return None, b""
        time.sleep(0.005)
    reader.join()
    return peak, b"".join(chunks)


def _small_tmpdir(base: Path, mib: int) -> Path:
    """A directory holding at most ``mib`` MiB: a tmpfs when it can be mounted, else a plain one."""
    path = base / f"tmp-{mib}m"
    path.mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(path):
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
    return path


def check_memory_raw(path: Path, blobs: list[Blob]) -> str:
    bad = [b.name for b in blobs if sha256_file(path, b.addr, b.size) != _blob_sha(b)]
    return "blobs ok" if not bad else "BAD " + ",".join(bad)


def check_memory_elf(path: Path, blobs: list[Blob]) -> str:
    try:
        loads = elf_loads(path)
    except (ValueError, struct.error) as exc:
        return f"BAD ELF: {exc}"
    bad = [b.name for b in blobs if sha256_hex(elf_read(path, loads, b.addr, b.size)) != _blob_sha(b)]
    return "blobs ok" if not bad else "BAD " + ",".join(bad)


def check_extract(directory: Path, blobs: list[Blob], ram_size: int) -> str:
    """Blobs at their pc.ram offsets in an extracted ``pc.ram`` (wherever it is in the tree)."""
    found = [p for p in directory.rglob("*") if p.is_file() and p.name.startswith("pc.ram")]
    if not found:
        return "no pc.ram file"
    ram = found[0]
    bad = [
        b.name for b in blobs if sha256_file(ram, gpa_to_ram_offset(b.addr, ram_size), b.size) != _blob_sha(b)
    ]
    return "blobs ok" if not bad else "BAD " + ",".join(bad)


_SHA_CACHE: dict[Blob, str] = {}


def _blob_sha(blob: Blob) -> str:
    if blob not in _SHA_CACHE:
        _SHA_CACHE[blob] = blob.sha256()
    return _SHA_CACHE[blob]


def load_blobs(stream: Path) -> tuple[list[Blob], int] | None:
    """Blobs described by the stream's make_stream JSON, when there is one."""
    meta_path = stream.with_suffix(".json")
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    if "blobs" not in meta.get("config", {}):
        return None  # a builder-made stream: no blobs to check
    blobs = [
        Blob(b["name"], b["kind"], b["seed"], b["blob_no"], b["size"], b["addr"])
        for b in meta["config"]["blobs"]
    ]
    for b in blobs:
        if b.name in meta.get("blob_sha256", {}):
            _SHA_CACHE[b] = meta["blob_sha256"][b.name]
    return blobs, int(meta["ram_size"])


def fmt_s(value: float | None) -> str:
    return "failed" if value is None else f"{value:8.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stream", type=Path, help="stream to time (default: bench/make_stream.py's)")
    ap.add_argument(
        "--synthetic",
        choices=sorted(make_stream.SYNTHETIC),
        help="time a builder-made stream in this page layout",
    )
    ap.add_argument(
        "--pipe-tmpdir-mib", type=int, default=64, help="TMPDIR size for the pipe rows (default 64 MiB)"
    )
    ap.add_argument("--quick", action="store_true", help="small stream (512 MiB guest, 128 MiB data)")
    ap.add_argument("-n", "--repeat", type=int, default=None, help="runs per command (default 3, quick 2)")
    ap.add_argument("--cli", help="migstream command (default: console script next to python)")
    ap.add_argument("--compat-cli", help="analyze-migration drop-in command")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before every run")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per command run")
    ap.add_argument("--no-qemu-script", action="store_true", help="skip QEMU's analyze-migration.py")
    ap.add_argument("--no-check", action="store_true", help="skip checking blobs in memory/extract output")
    ap.add_argument("--json", type=Path, help="write the results as JSON here")
    ap.add_argument(
        "--tmp",
        type=Path,
        default=HERE / "out" / "run-tmp",
        help="scratch directory for outputs (same filesystem as the stream is best)",
    )
    args = ap.parse_args(argv)
    repeat = args.repeat or (2 if args.quick else 3)

    if args.synthetic:
        stream = make_stream.build_synthetic(make_stream.SYNTHETIC[args.synthetic])
    else:
        stream = args.stream or make_stream.build(make_stream.QUICK if args.quick else make_stream.FULL)
    stream = stream.resolve()
    size = stream.stat().st_size
    blob_info = load_blobs(stream)
    tmp = args.tmp.resolve()
    tmp.mkdir(parents=True, exist_ok=True)

    cli = shlex.split(args.cli) if args.cli else migstream_command()
    if args.compat_cli:
        compat = shlex.split(args.compat_cli)
    elif args.cli is None and Path(sys.executable).with_name("analyze-migration").exists():
        compat = [str(Path(sys.executable).with_name("analyze-migration"))]
    else:
        compat = (
            [*cli[:-1], "analyze-migration"]
            if cli and cli[-1] == "migstream"
            else [sys.executable, "-m", "migstream.cli.compat"]
        )

    rows: list[Row] = []
    outs: dict[str, Path] = {}
    # reference: interpreter start-up alone (every migstream row pays it)
    rows.append(Row("python start-up", [sys.executable, "-c", "pass"]))
    rows.append(Row("dd", ["dd", f"if={stream}", "of=/dev/null", "bs=1M"]))
    rows.append(Row("cat", ["cat", str(stream)]))
    small_tmp = _small_tmpdir(tmp, args.pipe_tmpdir_mib)
    rows.append(Row("cat | dd", ["sh", "-c", f"cat {shlex.quote(str(stream))} | dd of=/dev/null bs=1M"]))
    rows.append(
        Row(
            "cat | migstream info -",
            ["sh", "-c", f"cat {shlex.quote(str(stream))} | {shlex.join(cli)} info - >/dev/null"],
            env={"TMPDIR": str(small_tmp)},
        )
    )
    outs["cat | migstream memory raw -"] = tmp / "pipe-memory.raw"
    rows.append(
        Row(
            "cat | migstream memory raw -",
            [
                "sh",
                "-c",
                f"cat {shlex.quote(str(stream))} | {shlex.join(cli)} memory - -o "
                f"{shlex.quote(str(tmp / 'pipe-memory.raw'))} 2>/dev/null",
            ],
            "file",
            env={"TMPDIR": str(small_tmp)},
        )
    )
    outs["cp"] = tmp / "copy.mig"
    rows.append(Row("cp", ["cp", "--reflink=never", str(stream), str(outs["cp"])], "file"))
    for name, case_args, kind in MIGSTREAM_CASES:
        out = tmp / name.replace(" ", "_").replace("-", "")
        if kind:
            outs[name] = out
        argv_ = [a.format(stream=stream, out=out) for a in case_args]
        rows.append(Row(name, [*cli, *argv_], kind))
    rows.append(Row("analyze-migration -d state", [*compat, "-f", str(stream), "-d", "state"]))
    script = None if args.no_qemu_script else analyze_migration_script()
    if script is not None:
        qemu_state = [sys.executable, str(script), "-f", str(stream), "-d", "state"]
        rows.append(Row("QEMU script -d state", qemu_state))
        outs["QEMU script -x"] = tmp / "qemu-x"
        rows.append(
            Row(
                "QEMU script -x",
                [sys.executable, str(script), "-f", str(stream), "-x"],
                "dir",
                cwd=tmp / "qemu-x",
            )
        )

    cache_note = "cold (page cache dropped before each run)" if args.cold else "warm page cache"
    if args.cold and not drop_caches():
        print("cannot drop the page cache (need root): measuring warm", file=sys.stderr)
        args.cold = False
        cache_note = "warm page cache (drop_caches refused)"
    if not args.cold:
        subprocess.run(["cat", str(stream)], stdout=subprocess.DEVNULL, check=False)  # warm up
    # Byte-compile the package as an install does: with PYTHONDONTWRITEBYTECODE set (or a
    # read-only tree) every run would otherwise compile its modules again.
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(HERE.parent / "migstream")],
        stdout=subprocess.DEVNULL,
        check=False,
    )

    print(
        f"stream: {stream} ({size / 2**20:.1f} MiB), {repeat} run(s) per command, {cache_note}",
        file=sys.stderr,
    )
    for row in rows:
        print(f"  running {row.name} ...", file=sys.stderr, flush=True)
        out = outs.get(row.name)
        run_row(row, repeat, args.timeout, out, args.cold)
        if not args.no_check and not row.error and blob_info is not None and out is not None:
            blobs, ram_size = blob_info
            if row.name in ("migstream memory raw", "cat | migstream memory raw -"):
                row.check = check_memory_raw(out, blobs)
            elif row.name == "migstream memory elf":
                row.check = check_memory_elf(out, blobs)
            elif row.name in ("migstream extract", "QEMU script -x"):
                row.check = check_extract(out, blobs, ram_size)
            elif row.name == "cp":
                row.check = "same" if sha256_file(out) == sha256_file(stream) else "BAD copy"
        if out is not None:
            _clear(out)

    by_name = {r.name: r for r in rows}
    mib = size / 2**20
    print()
    print(f"stream {stream.name}: {size} bytes ({mib:.1f} MiB); best of {repeat}; {cache_note}")
    print(f"{'command':34} {'best s':>8} {'MiB/s':>8} {'anon MiB':>8}  runs  note")
    for r in rows:
        rate = f"{mib / r.best:8.0f}" if r.best else "       -"
        anon = f"{r.anon_peak / 2**20:8.1f}" if r.anon_peak and r.argv[0] != "sh" else "       -"
        note = r.error or r.check
        runs = " ".join(f"{t:.2f}" for t in r.times)
        print(f"{r.name:34} {fmt_s(r.best)} {rate} {anon}  [{runs}]  {note}")
    print()
    print(f"{'ratio':34} {'value':>8}  target")
    ratio_results: dict[str, float | None] = {}
    for label, num, den, target in RATIOS:
        if num not in by_name or den not in by_name:
            continue
        a, b = by_name[num].best, by_name[den].best
        value = a / b if a is not None and b else None
        ratio_results[label] = value
        tgt = ""
        if target is not None:
            ok = value is not None and (value <= target if target > 0 else value >= -target)
            tgt = f"{'<=' if target > 0 else '>='} {abs(target):g}x" + (
                "" if value is None else ("  ok" if ok else "  MISSED")
            )
        shown = "failed" if value is None else f"{value:8.2f}"
        print(f"{label:34} {shown:>8}  {tgt}")

    if args.json:
        report: dict[str, Any] = {
            "stream": str(stream),
            "size": size,
            "repeat": repeat,
            "cache": cache_note,
            "rows": [
                {
                    "name": r.name,
                    "argv": r.argv,
                    "times": r.times,
                    "best": r.best,
                    "error": r.error,
                    "check": r.check,
                    "anon_peak": r.anon_peak,
                }
                for r in rows
            ],
            "ratios": ratio_results,
        }
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    subprocess.run(
        ["umount", str(small_tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
    )
    with contextlib.suppress(OSError):
        small_tmp.rmdir()
        tmp.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
