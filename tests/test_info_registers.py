"""``migstream cpus`` text against QEMU's own ``info registers -a``, line for line.

Oracle: ``info-registers.txt`` next to every corpus stream (HMP output of the
source QEMU, 7.2 and 10.0), and the captures of real Linux guests made by
``../shared/tools/make-linux-guest.sh``.  Every line must be equal, except the
values listed in :data:`ABSENT`: values the stream does not carry, each with
the reason.  An allowance names the line by a pattern and only the pattern's
groups may differ; the rest of the line must still be equal.
"""

from __future__ import annotations

import io
import json
import lzma
import os
import re
import shutil
import subprocess
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import CORPUS, CorpusCache, corpus_streams

from migstream.cli.main import main


@dataclass(frozen=True)
class Absent:
    """Values of one line that the stream does not carry: the groups of ``pattern``."""

    pattern: re.Pattern[str]
    reason: str


#: Per architecture, the values ``info registers`` shows that no stream carries.
ABSENT: dict[str, tuple[Absent, ...]] = {
    "x86_64": (),
    "aarch64": (),
    "s390x": (),
    "ppc64": (
        Absent(
            re.compile(r"^TB (\S+) (\S+) DECR (\S+)$"),
            "time base and decrementer: they run with the host clock and are not in the cpu section",
        ),
        Absent(
            re.compile(r"^CR [0-9a-f]{8}  \[[ A-Z-]*\]     RES (\S+)@(\S+)$"),
            "reservation: QEMU 8.2 and later no longer save it (7.2 does, and it is compared there)",
        ),
    ),
}

#: Streams whose guest kept running after the snapshot: the monitor saw a later state.
#: Only the lines that the corpus loop firmware changes are left out.
RUNNING_AFTER = Absent(
    re.compile(r"^((?:EAX|ESI|EIP|RAX|RSI|R8 |R12|RIP|ES )=.*)$"),
    "background-snapshot: the guest kept running after the snapshot and its loop changes"
    " the general registers, flags and ES",
)


def _masked(line: str, absent: Absent) -> str | None:
    """``line`` with the allowed groups blanked, or None when the pattern does not match."""
    m = absent.pattern.match(line)
    if m is None:
        return None
    out, last = [], 0
    for n in range(1, (m.lastindex or 0) + 1):
        out += [line[last : m.start(n)], "<absent>"]
        last = m.end(n)
    return "".join([*out, line[last:]])


def compare(want_text: str, got_text: str, arch: str, running_after: bool = False) -> tuple[int, list[str]]:
    """Lines equal, and the differences; lines covered by an allowance count as equal."""
    want = want_text.replace("\r\n", "\n").split("\n")
    got = got_text.split("\n")
    problems: list[str] = []
    if len(want) != len(got):
        problems.append(f"{len(got)} lines, want {len(want)}")
    allowances = ABSENT[arch] + ((RUNNING_AFTER,) if running_after else ())
    equal = 0
    for n, (w, g) in enumerate(zip(want, got, strict=False), 1):
        if w == g:
            equal += 1
            continue
        for absent in allowances:
            mw = _masked(w, absent)
            if mw is not None:
                if mw != _masked(g, absent):
                    problems.append(f"line {n}: got {g!r}, want {w!r} (apart from {absent.pattern.pattern})")
                break
        else:
            problems.append(f"line {n}: got {g!r}, want {w!r}")
    return equal, problems


def cpus_text(path: Path) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        rc = main(["cpus", str(path)])
    assert rc == 0
    return out.getvalue()


def _corpus_ids() -> list[str]:
    return [s["id"] for s in corpus_streams() if s["id"].startswith(("qemu-7.2/", "qemu-10.0/"))]


@pytest.mark.parametrize("stream_id", _corpus_ids())
def test_corpus_info_registers_line_for_line(corpus: CorpusCache, stream_id: str) -> None:
    entry = next(s for s in corpus_streams() if s["id"] == stream_id)
    want = (CORPUS / stream_id / "info-registers.txt").read_text()
    got = cpus_text(corpus.raw(stream_id))
    equal, problems = compare(want, got, entry["target"], entry.get("run_state_after") == "running")
    assert not problems, "\n".join(problems[:10])
    assert equal > 0


def _json_cpus(path: Path) -> list[dict[str, Any]]:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["cpus", str(path), "--json"]) == 0
    cpus: list[dict[str, Any]] = json.loads(out.getvalue())
    return cpus


def _text_values(arch: str, block: str) -> dict[str, int]:
    """Values of the new JSON keys as QEMU's text shows them (the oracle for ``--json``)."""
    out: dict[str, int] = {}
    if arch == "x86_64":
        for name in ("FCW", "FSW", "FTW", "MXCSR", "CPL", "II", "A20", "SMM", "HLT"):
            m = re.search(rf"\b{name}=([0-9a-f]+)", block)
            assert m, name
            out[name.lower()] = int(m.group(1), 10 if name in ("CPL", "II", "A20", "SMM", "HLT") else 16)
        for n, mant, exp in re.findall(r"FPR(\d)=([0-9a-f]{16}) ([0-9a-f]{4})", block):
            out[f"fpr{n}"] = int(exp + mant, 16)
        for n, hi, lo in re.findall(r"XMM(\d\d)=([0-9a-f]{16}) ([0-9a-f]{16})", block):
            out[f"xmm{int(n)}"] = int(hi + lo, 16)
    elif arch == "s390x":
        for n, v in re.findall(r"\bV(\d\d)=([0-9a-f]{32})", block):
            out[f"v{int(n)}"] = int(v, 16)
    elif arch == "ppc64":
        for row, values in re.findall(r"^FPR(\d\d) ((?:[0-9a-f]{16} ?){4})$", block, re.M):
            for k, v in enumerate(values.split()):
                out[f"fpr{int(row) + k}"] = int(v, 16)
        m = re.search(r"^FPSCR ([0-9a-f]+)", block, re.M)
        assert m
        out["fpscr"] = int(m.group(1), 16)
    elif arch == "aarch64":
        m = re.search(r"SVCR=([0-9a-f]{8})", block)
        if m:
            out["svcr"] = int(m.group(1), 16)
    return out


@pytest.mark.parametrize(
    "stream_id",
    [
        "qemu-7.2/q35-bios-devs-smp2",
        "qemu-10.0/pc-bios-devs",
        "qemu-10.0/s390x-ccw-bios",
        "qemu-7.2/ppc64-pseries-slof",
        "qemu-10.0/aarch64-virt-gic3-smp2",
    ],
)
def test_corpus_json_carries_the_text_values(corpus: CorpusCache, stream_id: str) -> None:
    entry = next((s for s in corpus_streams() if s["id"] == stream_id), None)
    if entry is None:
        pytest.skip(f"{stream_id} is not in the corpus")
    text = (CORPUS / stream_id / "info-registers.txt").read_text().replace("\r\n", "\n")
    blocks = re.split(r"^CPU#\d+$", text, flags=re.M)[1:]
    cpus = _json_cpus(corpus.raw(stream_id))
    assert len(cpus) == len(blocks)
    for cpu, block in zip(cpus, blocks, strict=True):
        want = _text_values(entry["target"], block)
        assert want
        regs = cpu["registers"]
        for name, value in want.items():
            got = regs[name]
            assert (int(got, 16) if isinstance(got, str) else got) == value, name
        for name, got in regs.items():
            if isinstance(got, str):
                assert re.fullmatch(r"0x(?:[0-9a-f]{4})+", got), name


def test_corpus_covers_every_arch_and_both_series() -> None:
    seen = {(s["target"], s["id"].split("/")[0]) for s in corpus_streams()}
    if not seen:
        pytest.skip("the stream corpus is not here")
    for arch in ABSENT:
        for series in ("qemu-7.2", "qemu-10.0"):
            assert (arch, series) in seen


# ------------------------------------------------------------------ the comparison itself


def test_compare_fails_on_a_changed_value() -> None:
    text = "\nCPU#0\nEAX=00000000 EBX=00000000\nHLT=1\n"
    assert compare(text, text, "x86_64") == (5, [])
    equal, problems = compare(text, text.replace("EBX=00000000", "EBX=00000001"), "x86_64")
    assert equal == 4 and len(problems) == 1
    _, problems = compare(text, text + "extra\n", "x86_64")
    assert problems


def test_compare_allows_only_the_listed_values() -> None:
    want = "CR 40000008  [ G  -  -  -  -  -  -  L  ]     RES 000@ffffffffffffffff"
    got = "CR 40000008  [ G  -  -  -  -  -  -  L  ]     RES ---@----------------"
    assert compare(want, got, "ppc64")[1] == []
    # the same line on another architecture has no allowance
    assert compare(want, got, "x86_64")[1]
    # a carried value (CR) still has to be equal
    assert compare(want, got.replace("40000008", "40000009"), "ppc64")[1]


# ------------------------------------------------------------------ real Linux guests

GUEST_SCRIPT = CORPUS.parent / "tools" / "make-linux-guest.sh"
GUEST_CASES = ("pc-1cpu", "q35-2cpu", "q35-max-512m")


def _linux_guest_dir() -> Path:
    """Captures of make-linux-guest.sh: MIGSTREAM_LINUX_GUEST, else a cache made on first use."""
    given = os.environ.get("MIGSTREAM_LINUX_GUEST")
    if given:
        return Path(given)
    return Path.home() / ".cache" / "migstream" / "linux-guest"


def _ensure_linux_guest(case: str) -> Path:
    out = _linux_guest_dir()
    done = out / case / "stream.mig.xz"
    if done.exists() and (out / case / "info-registers.txt").exists():
        return out / case
    if os.environ.get("MIGSTREAM_LINUX_GUEST"):
        pytest.skip(f"no {case} capture in MIGSTREAM_LINUX_GUEST")
    if not GUEST_SCRIPT.exists() or shutil.which("qemu-system-x86_64") is None:
        pytest.skip("make-linux-guest.sh or qemu-system-x86_64 is not here")
    if shutil.which("apt-get") is None:
        pytest.skip("apt-get is needed to fetch the guest kernel")
    env = dict(os.environ, WORK=str(out.parent / "linux-guest-work"), OUT=str(out), KEEP_RAW="0")
    proc = subprocess.run(
        ["bash", str(GUEST_SCRIPT), case], env=env, capture_output=True, text=True, timeout=900, check=False
    )
    if proc.returncode != 0 or not done.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        pytest.skip(f"make-linux-guest.sh {case} failed (cannot fetch?): {tail[0]}")
    return out / case


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("case", GUEST_CASES)
def test_linux_guest_info_registers_line_for_line(tmp_path: Path, case: str) -> None:
    folder = _ensure_linux_guest(case)
    stream = tmp_path / "stream.mig"
    with lzma.open(folder / "stream.mig.xz") as fin, open(stream, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    want = (folder / "info-registers.txt").read_text()
    got = cpus_text(stream)
    equal, problems = compare(want, got, "x86_64")
    assert not problems, "\n".join(problems[:10])
    assert equal > 20


@pytest.mark.qemu
@pytest.mark.slow
def test_linux_guest_json_carries_vector_registers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _ensure_linux_guest("q35-max-512m")
    stream = tmp_path / "stream.mig"
    with lzma.open(folder / "stream.mig.xz") as fin, open(stream, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    assert main(["cpus", str(stream), "--json"]) == 0
    (cpu,) = json.loads(capsys.readouterr().out)
    regs = cpu["registers"]
    want = (folder / "info-registers.txt").read_text()
    for n, hi, lo in re.findall(r"XMM(\d\d)=([0-9a-f]{16}) ([0-9a-f]{16})", want):
        assert regs[f"xmm{int(n)}"] == f"0x{hi}{lo}"
    for n, q3, q2, q1, q0 in re.findall(r"YMM(\d\d)=(\w{16}) (\w{16}) (\w{16}) (\w{16})", want):
        assert regs[f"ymm{int(n)}"] == f"0x{q3}{q2}{q1}{q0}"
    assert re.search(r"XMM00=|YMM00=|ZMM00=", want)


# ------------------------------------------------------------------ aarch64 with the FPU on

#: A few AArch64 instructions (little-endian words) for a firmware that enables the FPU (and
#: SVE), puts values in registers and spins; the corpus vCPUs all have the FPU disabled.
_A64_FPEN = 0xD2A00600  # movz x0, #0x30, lsl #16: CPACR_EL1.FPEN = 3
_A64_FPEN_ZEN = 0xD2A00660  # movz x0, #0x33, lsl #16: FPEN = 3, ZEN = 3
_A64_MSR_CPACR = 0xD5181040  # msr cpacr_el1, x0
_A64_ISB = 0xD5033FDF
_A64_FMOV_D0 = 0x1E6E1000  # fmov d0, #1.0
_A64_FMOV_D1 = 0x1E6E1001  # fmov d1, #1.0
_A64_MOVZ_X1_3 = 0xD2800061  # movz x1, #3
_A64_MSR_ZCR = 0xD5181201  # msr zcr_el1, x1: 512-bit vectors
_A64_PTRUE_P0 = 0x2518E3E0  # ptrue p0.b
_A64_SPIN = 0x14000000  # b .
A64_CASES = {
    "fp-cortex-a57": (
        "cortex-a57",
        [_A64_FPEN, _A64_MSR_CPACR, _A64_ISB, _A64_FMOV_D0, _A64_FMOV_D1, _A64_SPIN],
    ),
    "fp-max": ("max", [_A64_FPEN, _A64_MSR_CPACR, _A64_ISB, _A64_FMOV_D0, _A64_FMOV_D1, _A64_SPIN]),
    "sve128": ("max", [_A64_FPEN_ZEN, _A64_MSR_CPACR, _A64_ISB, _A64_FMOV_D0, _A64_PTRUE_P0, _A64_SPIN]),
    "sve512": (
        "max",
        [_A64_FPEN_ZEN, _A64_MSR_CPACR, _A64_ISB, _A64_MOVZ_X1_3, _A64_MSR_ZCR, _A64_ISB]
        + [_A64_FMOV_D0, _A64_PTRUE_P0, _A64_SPIN],
    ),
}
#: Where the firmware goes (and the vCPU starts): above the device tree at the start of RAM.
A64_ENTRY = 0x4020_0000


@pytest.mark.qemu
@pytest.mark.parametrize("case", sorted(A64_CASES))
def test_aarch64_fpu_on_line_for_line(tmp_path: Path, case: str) -> None:
    import struct
    import time

    from qemu_harness import QemuGuest

    binary = shutil.which("qemu-system-aarch64")
    if binary is None:
        pytest.skip("qemu-system-aarch64 is not here")
    cpu, words = A64_CASES[case]
    firmware = tmp_path / "fw.bin"
    firmware.write_bytes(struct.pack(f"<{len(words)}I", *words))
    loader = f"loader,file={firmware},addr={A64_ENTRY:#x},cpu-num=0"
    with QemuGuest(
        binary=binary, machine="virt", memory="128M", extra_args=["-cpu", cpu, "-device", loader]
    ) as guest:
        guest.cont()
        time.sleep(0.5)
        guest.stop()
        want = guest.qmp("human-monitor-command", {"command-line": "info registers -a"})
        guest.migrate_to_file(tmp_path / "stream.mig")
        guest.quit()
    assert "FPU disabled" not in want
    equal, problems = compare(want, cpus_text(tmp_path / "stream.mig"), "aarch64")
    assert not problems, "\n".join(problems[:10])
    assert equal > 30
