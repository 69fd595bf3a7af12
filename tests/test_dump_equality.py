"""migstream's ELF core against QEMU's own ``dump-guest-memory`` of the same paused guest.

Each case starts a paused guest, takes QMP ``dump-guest-memory`` (paging off,
ELF), then migrates the same guest to a file and runs ``migstream memory
--format elf`` (and ``--format raw``) on the stream.  The oracle is QEMU's core:

* the same guest-physical coverage (adjacent ranges may merge);
* the same bytes in every page QEMU dumped, in the ELF core and in the raw image;
* the same notes, in order (name, type, size), and inside them the same
  registers, compared field by field.

A real booted Linux guest (``/work/shared/tools/make-linux-guest.sh``) is
compared the same way when its captures are at hand: ``$MIGSTREAM_LINUX_GUEST``,
else ``~/.cache/migstream/linux-guest-work`` (the script's WORK: raw
``<case>/qemu.core`` and ``<case>/stream.mig``, with the kernel and initramfs),
else ``~/.cache/migstream/linux-guest`` (its OUT: ``qemu-core.xz`` and
``stream.mig.xz``).  With ``MIGSTREAM_MAKE_LINUX_GUEST=1`` and none of them,
the script is run once into the WORK folder (a few minutes; it needs apt-get).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest
from elftools.elf.elffile import ELFFile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from qemu_harness import QemuGuest, find_qemu, migstream_command  # noqa: E402

pytestmark = pytest.mark.qemu

PAGE = 4096
#: A BIOS image for the pflash case (SeaBIOS boots from flash as well).
SEABIOS = Path("/usr/share/seabios/bios-256k.bin")
#: Largest guest-physical end for which the raw image is written and compared.
RAW_IMAGE_LIMIT = 1 << 40


@dataclass(frozen=True)
class Case:
    name: str
    binary: str
    machine: str
    memory: str
    args: tuple[str, ...] = ()
    #: Seconds the guest runs (its firmware) before it is paused; 0: paused from reset.
    run: float = 0
    #: A program loaded into guest RAM (``{prog}`` in ``args`` names its file).
    program: bytes = b""


#: aarch64: enable FP (CPACR_EL1.FPEN), x0 = 0x1234, d0 = x0, v1.d[1] = x0, x2 = 1, then spin:
#: the NT_PRFPREG note then holds non-zero vector registers.
AARCH64_FP_PROGRAM = struct.pack(
    "<8I", 0xD2A00601, 0xD5181041, 0xD5033FDF, 0xD2824680, 0x9E670000, 0x4E181C01, 0xD2800022, 0x14000000
)


CASES = [
    Case("x86-pc-vga", "qemu-system-x86_64", "pc", "128M", ("-device", "VGA")),
    Case("x86-q35-vga-2cpu", "qemu-system-x86_64", "q35", "128M", ("-smp", "2", "-device", "VGA")),
    Case("aarch64-virt", "qemu-system-aarch64", "virt", "128M", ("-cpu", "cortex-a57", "-smp", "2")),
    Case("ppc64-pseries", "qemu-system-ppc64", "pseries", "512M"),
    Case("s390x-ccw", "qemu-system-s390x", "s390-ccw-virtio", "128M"),
    Case(
        "aarch64-virt-fp-program",
        "qemu-system-aarch64",
        "virt",
        "128M",
        ("-cpu", "cortex-a57", "-device", "loader,file={prog},addr=0x40200000,cpu-num=0"),
        run=1,
        program=AARCH64_FP_PROGRAM,
    ),  # fmt: skip
    # isapc: ROMs over RAM, the ISA VGA's I/O at 0xa0000 and its VRAM at 0xe0000000.
    Case("x86-isapc-isa-vga", "qemu-system-x86_64", "isapc", "32M", ("-device", "isa-vga")),
    # pflash instead of pc.bios: the flash is not in the dump, the ISA BIOS is its own RAM block,
    # nothing reaches 4 GiB, so QEMU writes an ELF32 core; no VGA: RAM shows at 0xa0000.
    Case(
        "x86-pc-pflash", "qemu-system-x86_64", "pc", "128M", ("-drive", "if=pflash,format=raw,file={flash}")
    ),
    # Firmware ran: SeaBIOS programs PAM and BARs, SLOF and the s390 BIOS leave registers set.
    Case("x86-pc-seabios", "qemu-system-x86_64", "pc", "128M", ("-device", "VGA"), run=3),
    Case("x86-q35-seabios", "qemu-system-x86_64", "q35", "128M", ("-device", "VGA"), run=3),
    Case("ppc64-pseries-slof-vga", "qemu-system-ppc64", "pseries", "512M", ("-device", "VGA"), run=10),
    Case("s390x-ccw-bios", "qemu-system-s390x", "s390-ccw-virtio", "128M", ("-no-shutdown",), run=2),
]

#: Fields where migstream knowingly differs, per case: ``(note type, desc offset)`` -> why.
KNOWN_GAPS: dict[str, dict[tuple[int, int], str]] = {}

# ``pr_reg`` of NT_PRSTATUS per e_machine: (offset of pr_pid, offset of pr_reg, struct format, names).
# fmt: off
_X86_64 = [
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi",
    "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
]
_I386 = [
    "ebx", "ecx", "edx", "esi", "edi", "ebp", "eax", "ds", "_", "es", "_", "fs", "_", "gs", "_",
    "orig_eax", "eip", "cs", "_", "eflags", "esp", "ss", "_",
]
# fmt: on
PRSTATUS = {
    "EM_X86_64": (32, 112, "27Q", _X86_64),
    "EM_386": (24, 72, "7I8H2I2H2I2H", _I386),
    "EM_AARCH64": (32, 112, "34Q", [f"x{i}" for i in range(31)] + ["sp", "pc", "pstate"]),
    "EM_PPC64": (32, 112, "48Q", [f"gpr{i}" for i in range(32)] + [f"reg{i}" for i in range(32, 48)]),
    "EM_S390": (
        32,
        112,
        "18Q16I",
        ["psw_mask", "psw_addr"] + [f"r{i}" for i in range(16)] + [f"a{i}" for i in range(16)],
    ),
}  # fmt: skip


#: pyelftools names some note types: their numbers.
NOTE_TYPES = {"NT_PRSTATUS": 1, "NT_FPREGSET": 2}


@dataclass
class Core:
    machine: str
    elfclass: int
    little: bool
    loads: list[tuple[int, int, int]]  # gpa, size, file offset
    notes: list[tuple[str, int, bytes]]


def read_core(path: Path) -> Core:
    with open(path, "rb") as f:
        elf = ELFFile(f)
        segments = list(elf.iter_segments())
        loads = [(s["p_paddr"], s["p_filesz"], s["p_offset"]) for s in segments if s["p_type"] == "PT_LOAD"]
        notes = []
        for seg in segments:
            if seg["p_type"] != "PT_NOTE":
                continue
            for n in seg.iter_notes():
                f.seek(n["n_offset"] + 12 + (n["n_namesz"] + 3) // 4 * 4)
                ntype = n["n_type"]
                code = (
                    ntype if isinstance(ntype, int) else {"NT_PRSTATUS": 1, "NT_FPREGSET": 2}.get(ntype, -1)
                )
                notes.append((n["n_name"], code, f.read(n["n_descsz"])))
        return Core(elf["e_machine"], elf.elfclass, elf.little_endian, sorted(loads), notes)


def merged(loads: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for gpa, size, _ in loads:
        if out and out[-1][0] + out[-1][1] == gpa:
            out[-1][1] += size
        else:
            out.append([gpa, size])
    return [(a, b) for a, b in out]


def pages(f: BinaryIO, loads: list[tuple[int, int, int]]) -> Iterator[tuple[int, bytes]]:
    for gpa, size, offset in loads:
        for done in range(0, size, PAGE):
            f.seek(offset + done)
            yield gpa + done, f.read(min(PAGE, size - done))


def read_gpa(f: BinaryIO, loads: list[tuple[int, int, int]], gpa: int, n: int) -> bytes | None:
    for start, size, offset in loads:
        if start <= gpa and gpa + n <= start + size:
            f.seek(offset + gpa - start)
            return f.read(n)
    return None


def compare_cores(
    qemu: Path, mine: Path, raw: Path | None, gaps: dict[tuple[int, int], str]
) -> tuple[int, int]:
    """Assert equality; returns (pages compared, pages that differ)."""
    q, m = read_core(qemu), read_core(mine)
    assert (m.machine, m.elfclass, m.little) == (q.machine, q.elfclass, q.little)
    assert merged(m.loads) == merged(q.loads)
    compared = differ = 0
    bad: list[int] = []
    with open(qemu, "rb") as fq, open(mine, "rb") as fm, open(raw or os.devnull, "rb") as fr:
        for gpa, data in pages(fq, q.loads):
            compared += 1
            ok = read_gpa(fm, m.loads, gpa, len(data)) == data
            if raw is not None:
                fr.seek(gpa)
                got = fr.read(len(data))
                ok = ok and got + bytes(len(data) - len(got)) == data
            if not ok:
                differ += 1
                bad.append(gpa)
    assert differ == 0, f"{differ} of {compared} pages differ, first at {[hex(g) for g in bad[:8]]}"
    compare_notes(q, m, gaps)
    return compared, differ


def compare_notes(q: Core, m: Core, gaps: dict[tuple[int, int], str]) -> None:
    assert [(n, t, len(d)) for n, t, d in m.notes] == [(n, t, len(d)) for n, t, d in q.notes]
    e = "<" if q.little else ">"
    for (name, ntype, dq), (_, _, dm) in zip(q.notes, m.notes, strict=True):
        if name == "CORE" and ntype == 1 and q.machine in PRSTATUS:
            pid_at, reg_at, fmt, names = PRSTATUS[q.machine]
            assert dm[pid_at : pid_at + 4] == dq[pid_at : pid_at + 4], "pr_pid"
            rq = struct.unpack_from(e + fmt, dq, reg_at)
            rm = struct.unpack_from(e + fmt, dm, reg_at)
            diffs = {k: (hex(a), hex(b)) for k, a, b in zip(names, rq, rm, strict=False) if a != b}
            assert not diffs, f"pr_reg fields differ (qemu, migstream): {diffs}"
        # Every other byte, 8 at a time, with the offset named.
        for off in range(0, len(dq), 8):
            if dq[off : off + 8] != dm[off : off + 8] and (ntype, off) not in gaps:
                raise AssertionError(
                    f"note {name} type {ntype:#x} differs at +{off:#x}:"
                    f" qemu {dq[off : off + 8].hex()} migstream {dm[off : off + 8].hex()}"
                )


def migstream_memory(stream: Path, out: Path, fmt: str) -> None:
    cmd = [*migstream_command(), "memory", "--format", fmt, "-o", str(out), "--force", str(stream)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr


def _report(name: str, compared: int, differ: int) -> None:
    print(f"{name}: {compared} pages compared, {differ} differ")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_paused_guest_matches_dump_guest_memory(case: Case, tmp_path: Path) -> None:
    binary = find_qemu(case.binary)
    if binary is None:
        pytest.skip(f"{case.binary} is not installed")
    core, stream = tmp_path / "qemu.core", tmp_path / "stream.mig"
    paused = not case.run
    prog = tmp_path / "prog.bin"
    prog.write_bytes(case.program)
    flash = tmp_path / "flash.bin"
    if any("{flash}" in a for a in case.args):
        if not SEABIOS.exists():
            pytest.skip(f"{SEABIOS} (a BIOS to put in flash) is not installed")
        flash.write_bytes(SEABIOS.read_bytes())
    args = [a.replace("{prog}", str(prog)).replace("{flash}", str(flash)) for a in case.args]
    with QemuGuest(case.machine, case.memory, binary=binary, extra_args=args, paused=paused) as guest:
        if case.run:
            time.sleep(case.run)
            guest.stop()
        guest.qmp(
            "dump-guest-memory",
            {"paging": False, "protocol": f"file:{core}", "format": "elf"},
            timeout=300,
        )
        guest.migrate_to_file(stream)
    mine, raw = tmp_path / "mine.core", tmp_path / "mine.raw"
    migstream_memory(stream, mine, "elf")
    top = max(gpa + size for gpa, size, _ in read_core(core).loads)
    image: Path | None = None
    if top <= RAW_IMAGE_LIMIT:  # a raw image of the sPAPR PCI windows would need a 32 TiB file
        migstream_memory(stream, raw, "raw")
        image = raw
    compared, differ = compare_cores(core, mine, image, KNOWN_GAPS.get(case.name, {}))
    _report(case.name, compared, differ)
    assert compared > 0


LINUX_CASES = ["pc-1cpu", "q35-2cpu", "q35-max-512m"]
MAKE_LINUX_GUEST = Path(__file__).resolve().parents[2] / "shared" / "tools" / "make-linux-guest.sh"
CACHE = Path(os.environ.get("MIGSTREAM_CACHE", Path.home() / ".cache" / "migstream"))


def _linux_dirs() -> list[Path]:
    env = os.environ.get("MIGSTREAM_LINUX_GUEST")
    dirs = [Path(env)] if env else []
    return [*dirs, CACHE / "linux-guest-work", CACHE / "linux-guest"]


def _capture(folder: Path, raw: str, packed: str, tmp: Path) -> Path | None:
    """``folder/raw``, or ``folder/packed`` (xz) unpacked into ``tmp``; None when neither exists."""
    if (folder / raw).exists():
        return folder / raw
    if (folder / packed).exists():
        out = tmp / raw
        with open(out, "wb") as f:
            subprocess.run(["xz", "-dc", str(folder / packed)], stdout=f, check=True, timeout=600)
        return out
    return None


def _make_linux_guest() -> None:
    """Run make-linux-guest.sh once into the cache, when asked to and when it can run."""
    work = CACHE / "linux-guest-work"
    wanted = os.environ.get("MIGSTREAM_MAKE_LINUX_GUEST") == "1"
    if not wanted or (work / LINUX_CASES[0] / "stream.mig").exists() or not MAKE_LINUX_GUEST.exists():
        return
    if shutil.which("apt-get") is None or shutil.which("xz") is None:
        return
    env = {**os.environ, "WORK": str(work), "OUT": str(work / "out"), "KEEP_RAW": "1"}
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["bash", str(MAKE_LINUX_GUEST)], env=env, cwd=work, check=False, timeout=3600)


@pytest.mark.parametrize("name", LINUX_CASES)
def test_booted_linux_matches_dump_guest_memory(name: str, tmp_path: Path) -> None:
    _make_linux_guest()
    core = stream = None
    for folder in (d / name for d in _linux_dirs()):
        core = _capture(folder, "qemu.core", "qemu-core.xz", tmp_path)
        stream = _capture(folder, "stream.mig", "stream.mig.xz", tmp_path) if core else None
        if core is not None and stream is not None:
            break
    if core is None or stream is None:
        pytest.skip("no make-linux-guest.sh captures (see the module docstring)")
    mine, raw = tmp_path / "mine.core", tmp_path / "mine.raw"
    migstream_memory(stream, mine, "elf")
    migstream_memory(stream, raw, "raw")
    compared, differ = compare_cores(core, mine, raw, {})
    _report(f"linux {name}", compared, differ)
    assert compared > 60000


def _wait_serial(path: Path, marker: bytes, guest: QemuGuest, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and marker in path.read_bytes():
            return
        if guest.status() not in ("running", "prelaunch", "paused"):
            break
        time.sleep(0.5)
    raise AssertionError(
        f"guest never printed {marker!r}: {path.read_bytes()[-1000:] if path.exists() else b''!r}"
    )


@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_booted_linux_vbe_mode(machine: str, tmp_path: Path) -> None:
    """The kernel and initramfs of make-linux-guest.sh booted with ``vga=0x317``: the BIOS leaves
    the VGA in a VBE mode, so QEMU maps VRAM (chain 4) at 0xa0000 and the BIOS maps the BARs."""
    _make_linux_guest()
    work = next((d for d in _linux_dirs() if (d / "vmlinuz").exists()), None)
    binary = find_qemu("qemu-system-x86_64")
    if work is None or not (work / "initramfs.cpio.gz").exists() or binary is None:
        pytest.skip("no make-linux-guest.sh kernel and initramfs (see the module docstring)")
    kernel, initrd = work / "vmlinuz", work / "initramfs.cpio.gz"
    serial = tmp_path / "serial.log"
    args = (
        "-device", "VGA", "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", "console=ttyS0 panic=-1 vga=0x317", "-serial", f"file:{serial}", "-no-reboot",
    )  # fmt: skip
    core, stream = tmp_path / "qemu.core", tmp_path / "stream.mig"
    with QemuGuest(machine=machine, memory="256M", binary=binary, extra_args=args, paused=False) as guest:
        _wait_serial(serial, b"\nREADY", guest, 600)
        guest.stop()
        guest.qmp(
            "dump-guest-memory", {"paging": False, "protocol": f"file:{core}", "format": "elf"}, timeout=300
        )
        guest.migrate_to_file(stream)
    mine, raw = tmp_path / "mine.core", tmp_path / "mine.raw"
    migstream_memory(stream, mine, "elf")
    migstream_memory(stream, raw, "raw")
    compared, differ = compare_cores(core, mine, raw, {})
    _report(f"linux vbe {machine}", compared, differ)
    loads = merged(read_core(core).loads)
    assert any(gpa <= 0xA0000 < gpa + size for gpa, size in loads), "the VBE window is in QEMU's dump"
