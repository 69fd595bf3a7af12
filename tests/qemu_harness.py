"""Drive a real ``qemu-system-x86_64`` to produce migration streams with known RAM content.

Dependency-free (standard library only) so that ``bench/`` can use it without pytest.
Every wait is bounded: socket reads carry a timeout, process waits carry a timeout and the
QEMU process is killed in a ``finally`` whatever happens.

Typical use::

    blobs = [Blob("b1", "ctr", "seed-b1", 1, 65536, 0x1000000)]
    with QemuGuest(machine="pc", memory="128M", blobs=blobs) as guest:
        guest.migrate_to_file(out_path)

Blob contents follow the corpus generator (see ``shared/corpus/README.md``):

* ``ctr``: the concatenation of ``sha256(b"<seed>:<i>")`` digests for i = 0, 1, ...,
  truncated to ``size``;
* ``stamped``: page i (4096 bytes) = ``b"QBLB" + be32(blob_no) + be64(i)`` followed by the
  first 4080 bytes of ``ctr(seed)``, the whole truncated to ``size``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QEMU_X86 = "qemu-system-x86_64"
PAGE_SIZE = 4096
GiB = 1 << 30
MiB = 1 << 20

GET_ANALYZE_MIGRATION = Path(__file__).resolve().parents[2] / "shared" / "tools" / "get-analyze-migration.sh"
ANALYZE_MIGRATION_CACHE = (
    Path(os.environ.get("MIGSTREAM_CACHE", Path.home() / ".cache" / "migstream"))
    / "qemu-scripts-trixie"
    / "analyze-migration.py"
)

# --------------------------------------------------------------------------- blobs


def ctr_bytes(seed: str | bytes, size: int) -> bytes:
    """``b"".join(sha256(b"%s:%d" % (seed, i)).digest() for i in 0..)[:size]``."""
    seed_b = seed.encode() if isinstance(seed, str) else seed
    prefix = hashlib.sha256(seed_b + b":")
    count = (size + 31) // 32
    parts: list[bytes] = []
    for i in range(count):
        h = prefix.copy()
        h.update(b"%d" % i)
        parts.append(h.digest())
    return b"".join(parts)[:size]


def stamped_bytes(seed: str | bytes, size: int, blob_no: int) -> bytes:
    """Pages that all differ (a stamp) yet compress well (the same 4080-byte tail)."""
    tail = ctr_bytes(seed, PAGE_SIZE - 16)
    pages = (size + PAGE_SIZE - 1) // PAGE_SIZE
    out = bytearray()
    for i in range(pages):
        out += b"QBLB" + struct.pack(">IQ", blob_no, i) + tail
    return bytes(out[:size])


def blob_bytes(kind: str, seed: str | bytes, size: int, blob_no: int) -> bytes:
    """Deterministic blob content, as the corpus generator makes it."""
    if kind == "ctr":
        return ctr_bytes(seed, size)
    if kind == "stamped":
        return stamped_bytes(seed, size, blob_no)
    raise ValueError(f"unknown blob kind {kind!r}")


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], offset: int = 0, length: int | None = None) -> str:
    """sha256 of ``length`` bytes of ``path`` from ``offset``; bytes past EOF count as zeros."""
    h = hashlib.sha256()
    remaining = length
    with open(path, "rb") as f:
        f.seek(offset)
        while remaining is None or remaining > 0:
            want = 8 * MiB if remaining is None else min(8 * MiB, remaining)
            chunk = f.read(want)
            if not chunk:
                break
            h.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
    if remaining:
        zeros = bytes(min(remaining, 8 * MiB))
        while remaining > 0:
            n = min(remaining, len(zeros))
            h.update(zeros[:n])
            remaining -= n
    return h.hexdigest()


def read_at(path: str | os.PathLike[str], offset: int, length: int) -> bytes:
    """``length`` bytes of ``path`` at ``offset``, zero-padded past EOF."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    return data + bytes(length - len(data))


@dataclass(frozen=True)
class Blob:
    """A blob placed at guest-physical address ``addr`` by a ``loader`` device."""

    name: str
    kind: str
    seed: str
    blob_no: int
    size: int
    addr: int

    def data(self) -> bytes:
        return blob_bytes(self.kind, self.seed, self.size, self.blob_no)

    def sha256(self) -> str:
        return sha256_hex(self.data())

    def write(self, directory: Path) -> Path:
        """Write the blob file into ``directory`` (reused when it already has the right size)."""
        path = directory / f"blob-{self.name}-{self.kind}-{self.size}-{_safe(self.seed)}.bin"
        if not (path.exists() and path.stat().st_size == self.size):
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(self.data())
            tmp.replace(path)
        return path

    def manifest(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "seed": self.seed,
            "blob_no": self.blob_no,
            "size": self.size,
            "addr": self.addr,
            "addr_hex": hex(self.addr),
        }


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:60]


# --------------------------------------------------------------------------- ELF cores


@dataclass
class ElfLoad:
    paddr: int
    offset: int
    filesz: int
    memsz: int


def elf_loads(path: str | os.PathLike[str]) -> list[ElfLoad]:
    """PT_LOAD segments of an ELF64 core, either byte order, PN_XNUM honoured."""
    with open(path, "rb") as f:
        ident = f.read(64)
        if ident[:4] != b"\x7fELF" or len(ident) < 64:
            raise ValueError("not an ELF file")
        if ident[4] != 2:
            raise ValueError("not ELF64")
        end = "<" if ident[5] == 1 else ">"
        (e_type,) = struct.unpack_from(end + "H", ident, 16)
        if e_type != 4:
            raise ValueError(f"e_type {e_type} is not ET_CORE")
        e_phoff, e_shoff = struct.unpack_from(end + "QQ", ident, 32)
        e_phentsize, e_phnum = struct.unpack_from(end + "HH", ident, 54)
        if e_phnum == 0xFFFF:
            f.seek(e_shoff)
            sh = f.read(64)
            e_phnum = struct.unpack_from(end + "I", sh, 44)[0]
        f.seek(e_phoff)
        table = f.read(e_phentsize * e_phnum)
    loads = []
    for i in range(e_phnum):
        p_type, _flags, p_offset, _vaddr, p_paddr, p_filesz, p_memsz = struct.unpack_from(
            end + "IIQQQQQ", table, i * e_phentsize
        )
        if p_type == 1:
            loads.append(ElfLoad(p_paddr, p_offset, p_filesz, p_memsz))
    return loads


def elf_read(path: str | os.PathLike[str], loads: list[ElfLoad], gpa: int, size: int) -> bytes:
    out = bytearray(size)
    with open(path, "rb") as f:
        for seg in loads:
            lo = max(gpa, seg.paddr)
            hi = min(gpa + size, seg.paddr + seg.memsz)
            if lo >= hi:
                continue
            file_hi = min(hi, seg.paddr + seg.filesz)
            if file_hi > lo:
                f.seek(seg.offset + lo - seg.paddr)
                out[lo - gpa : file_hi - gpa] = f.read(file_hi - lo)
    return bytes(out)


# --------------------------------------------------------------------------- x86 layout


def pc_ram_split(ram_size: int, machine: str = "pc") -> int:
    """Bytes of main RAM below 4 GiB for the x86 ``pc`` / ``q35`` machines (current types).

    The rest of RAM is mapped at GPA 4 GiB.
    """
    if machine.startswith("q35"):
        limit = 0x80000000
        return limit if ram_size >= 0xB0000000 else ram_size
    limit = 0xC0000000
    return limit if ram_size >= 0xE0000000 else ram_size


def gpa_to_ram_offset(gpa: int, ram_size: int, machine: str = "pc") -> int:
    """Offset inside ``pc.ram`` of guest-physical address ``gpa``."""
    low = pc_ram_split(ram_size, machine)
    if gpa < low:
        return gpa
    if gpa >= 4 * GiB and gpa - 4 * GiB < ram_size - low:
        return gpa - 4 * GiB + low
    raise ValueError(f"GPA {gpa:#x} is not in main RAM")


def parse_size(text: str | int) -> int:
    """``"128M"`` / ``"4G"`` / bytes as an int (QEMU ``-m`` default unit is MiB)."""
    if isinstance(text, int):
        return text
    units = {"K": 1 << 10, "M": MiB, "G": GiB, "T": 1 << 40}
    t = text.strip().upper()
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t) * MiB


# --------------------------------------------------------------------------- QMP


class QemuError(RuntimeError):
    """QEMU failed to start, a QMP command failed, or a wait ran out of time."""


def find_qemu(binary: str = QEMU_X86) -> str | None:
    env = os.environ.get("MIGSTREAM_QEMU")
    if env and binary == QEMU_X86:
        return env if os.access(env, os.X_OK) else None
    return shutil.which(binary)


def require_qemu(binary: str = QEMU_X86) -> str:
    """Path of the QEMU binary, or ``pytest.skip`` when it is not installed."""
    path = find_qemu(binary)
    if path is None:
        import pytest

        pytest.skip(f"{binary} is not installed (apt-get install qemu-system-x86)")
    return path


def qemu_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=False)
    return out.stdout.splitlines()[0] if out.stdout else ""


class QMP:
    """A minimal QMP client on a unix socket; every read waits at most ``timeout`` seconds."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._buf = b""
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._sock.connect(path)
        greeting = self._read_message(time.monotonic() + timeout)
        if "QMP" not in greeting:
            raise QemuError(f"unexpected QMP greeting: {greeting!r}")
        self.greeting = greeting
        self.execute("qmp_capabilities")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QemuError("timed out waiting for QMP")
            self._sock.settimeout(min(left, self.timeout))
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError as exc:
                raise QemuError("timed out waiting for QMP") from exc
            if not chunk:
                raise QemuError("QMP connection closed by QEMU")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        msg = json.loads(line)
        if not isinstance(msg, dict):
            raise QemuError(f"unexpected QMP message: {msg!r}")
        return msg

    def execute(
        self, command: str, arguments: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """Run one command; returns its ``return`` value, raises QemuError on ``error``."""
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = dict(arguments)
        self._sock.settimeout(self.timeout)
        self._sock.sendall(json.dumps(msg).encode() + b"\n")
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            reply = self._read_message(deadline)
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                err = reply["error"]
                raise QemuError(f"QMP {command} failed: {err.get('class')}: {err.get('desc')}")
            if "return" in reply:
                return reply["return"]
            raise QemuError(f"unexpected QMP reply: {reply!r}")


@dataclass
class MigrationResult:
    """What ``migrate_to_file`` observed."""

    path: Path
    size: int
    seconds: float
    query_migrate: dict[str, Any]
    status_after: str


@dataclass
class QemuGuest:
    """A QEMU process with a QMP socket; use as a context manager (QEMU is always killed)."""

    machine: str = "pc"
    memory: str = "128M"
    blobs: Sequence[Blob] = ()
    extra_args: Sequence[str] = ()
    paused: bool = True
    binary: str | None = None
    workdir: Path | None = None
    blob_dir: Path | None = None
    timeout: float = 60.0
    cmdline: list[str] = field(default_factory=list)
    _proc: subprocess.Popen[bytes] | None = None
    _qmp: QMP | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None
    _log: Path | None = None

    # -- lifecycle --------------------------------------------------------

    def __enter__(self) -> QemuGuest:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        binary = self.binary or find_qemu()
        if binary is None:
            raise QemuError(f"{QEMU_X86} not found")
        if self.workdir is None:
            # unix socket paths are limited to ~107 bytes: keep the directory short
            self._tmp = tempfile.TemporaryDirectory(prefix="mgq-")
            self.workdir = Path(self._tmp.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        blob_dir = self.blob_dir or self.workdir
        blob_dir.mkdir(parents=True, exist_ok=True)
        sock = self.workdir / "qmp.sock"
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        cmd = [
            binary,
            "-nodefaults",
            "-display",
            "none",
            "-accel",
            "tcg",
            "-machine",
            self.machine,
            "-m",
            self.memory,
            "-qmp",
            f"unix:{sock},server=on,wait=off",
        ]
        if self.paused:
            cmd.append("-S")
        for blob in self.blobs:
            path = blob.write(blob_dir)
            cmd += ["-device", f"loader,file={path},addr={blob.addr:#x},force-raw=on"]
        cmd += list(self.extra_args)
        self.cmdline = cmd
        self._log = self.workdir / "qemu.log"
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.timeout
        while True:
            if self._proc.poll() is not None:
                raise QemuError(f"QEMU exited with {self._proc.returncode} at start: {self.log()}")
            if sock.exists():
                try:
                    self._qmp = QMP(str(sock), timeout=self.timeout)
                    break
                except (ConnectionRefusedError, FileNotFoundError):
                    pass
            if time.monotonic() > deadline:
                raise QemuError(f"QEMU QMP socket did not appear in {self.timeout}s: {self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        if self._log is None or not self._log.exists():
            return ""
        return self._log.read_text(errors="replace").strip()

    def quit(self, timeout: float = 30.0) -> None:
        """Ask QEMU to quit, then wait (bounded) for it to exit."""
        if self._qmp is not None:
            with contextlib.suppress(QemuError, OSError):
                self._qmp.execute("quit", timeout=timeout)
            self._qmp.close()
            self._qmp = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill()

    def _kill(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def close(self) -> None:
        try:
            if self._proc is not None and self._proc.poll() is None:
                self.quit(timeout=10)
        finally:
            self._kill()
            if self._qmp is not None:
                self._qmp.close()
                self._qmp = None
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None

    # -- QMP --------------------------------------------------------------

    def qmp(
        self, command: str, arguments: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        if self._qmp is None:
            raise QemuError("QEMU is not running")
        return self._qmp.execute(command, arguments, timeout=timeout)

    def status(self) -> str:
        return str(self.qmp("query-status")["status"])

    def stop(self) -> None:
        self.qmp("stop")

    def cont(self) -> None:
        self.qmp("cont")

    def set_capabilities(self, capabilities: Mapping[str, bool]) -> None:
        if capabilities:
            caps = [{"capability": k, "state": bool(v)} for k, v in capabilities.items()]
            self.qmp("migrate-set-capabilities", {"capabilities": caps})

    def set_parameters(self, parameters: Mapping[str, Any]) -> None:
        if parameters:
            self.qmp("migrate-set-parameters", dict(parameters))

    def pmemsave(self, addr: int, size: int, path: str | os.PathLike[str], timeout: float = 120.0) -> bytes:
        """Guest-physical memory ``[addr, addr+size)`` as QEMU itself sees it (QMP ``pmemsave``)."""
        out = Path(path).resolve()
        self.qmp("pmemsave", {"val": addr, "size": size, "filename": str(out)}, timeout=timeout)
        return out.read_bytes()

    def migrate_to_file(
        self,
        path: str | os.PathLike[str],
        capabilities: Mapping[str, bool] | None = None,
        parameters: Mapping[str, Any] | None = None,
        timeout: float = 300.0,
        poll: float = 0.05,
        force_iterations: int = 0,
    ) -> MigrationResult:
        """``migrate "exec:cat > PATH"`` and poll ``query-migrate`` until completed / failed.

        ``force_iterations``: with a running guest, hold the migration in its iterative phase
        (tiny downtime limit, low bandwidth) until that many dirty-bitmap syncs happened, then
        let it complete.  Pages re-sent in later rounds are what XBZRLE encodes.
        """
        out = Path(path).resolve()
        self.set_capabilities(capabilities or {})
        # no bandwidth cap by default: a paused guest's RAM goes out in one pass
        params: dict[str, Any] = {"max-bandwidth": 64 * GiB}
        if force_iterations:
            params.update({"max-bandwidth": 4 * MiB, "downtime-limit": 1})
        params.update(parameters or {})
        self.set_parameters(params)
        held = force_iterations > 0
        start = time.monotonic()
        self.qmp("migrate", {"uri": f"exec:cat > {_shell_quote(str(out))}"})
        deadline = start + timeout
        info: dict[str, Any] = {}
        while True:
            info = self.qmp("query-migrate")
            status = info.get("status")
            if status == "completed":
                break
            syncs = int(info.get("ram", {}).get("dirty-sync-count", 0))
            if held and syncs >= force_iterations:
                self.set_parameters({"max-bandwidth": 64 * GiB, "downtime-limit": 10000})
                held = False
            if status in ("failed", "cancelled"):
                raise QemuError(f"migration {status}: {info.get('error-desc', '')} {self.log()}")
            if time.monotonic() > deadline:
                with contextlib.suppress(QemuError):
                    self.qmp("migrate_cancel")
                raise QemuError(f"migration did not complete in {timeout}s (status {status})")
            time.sleep(poll)
        seconds = time.monotonic() - start
        # "completed" is reported once the stream is flushed; the exec child may still be writing
        _wait_file_stable(out, deadline=time.monotonic() + 30)
        return MigrationResult(out, out.stat().st_size, seconds, info, self.status())

    def migrate_uri(self, uri: str, timeout: float = 120.0, poll: float = 0.05) -> dict[str, Any]:
        """``migrate`` to any URI (``file:``, ``tcp:`` ...) and wait for completion; returns query-migrate."""
        self.qmp("migrate", {"uri": uri})
        deadline = time.monotonic() + timeout
        while True:
            info: dict[str, Any] = self.qmp("query-migrate")
            status = info.get("status")
            if status == "completed":
                return info
            if status in ("failed", "cancelled"):
                raise QemuError(f"migration {status}: {info.get('error-desc', '')} {self.log()}")
            if time.monotonic() > deadline:
                with contextlib.suppress(QemuError):
                    self.qmp("migrate_cancel")
                raise QemuError(f"migration did not complete in {timeout}s (status {status})")
            time.sleep(poll)


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _wait_file_stable(path: Path, deadline: float) -> None:
    """Wait until ``path`` kept the same size over three polls (the writer has drained)."""
    last, same = -1, 0
    while time.monotonic() < deadline:
        size = path.stat().st_size if path.exists() else -1
        same = same + 1 if size == last and size >= 0 else 0
        if same >= 3:
            return
        last = size
        time.sleep(0.05)


def make_stream(
    out: str | os.PathLike[str],
    *,
    machine: str = "pc",
    memory: str = "128M",
    blobs: Sequence[Blob] = (),
    capabilities: Mapping[str, bool] | None = None,
    parameters: Mapping[str, Any] | None = None,
    extra_args: Sequence[str] = (),
    run_seconds: float = 0.0,
    blob_dir: Path | None = None,
    timeout: float = 300.0,
) -> MigrationResult:
    """Start a guest with ``blobs``, optionally let it run, migrate it into ``out``, quit."""
    with QemuGuest(
        machine=machine,
        memory=memory,
        blobs=blobs,
        extra_args=extra_args,
        blob_dir=blob_dir,
        timeout=min(timeout, 120.0),
    ) as guest:
        if run_seconds > 0:
            guest.cont()
            time.sleep(run_seconds)
            guest.stop()
        result = guest.migrate_to_file(out, capabilities, parameters, timeout=timeout)
        guest.quit()
    return result


# --------------------------------------------------------------------------- loop firmware

LOOP_FIRST_PAGE = 0x10000
LOOP_PAGES = 64


def loop_bios() -> bytes:
    """A 64 KiB x86 ``-bios`` image that never stops writing guest RAM.

    Real mode, no setup: for each of the 64 pages at 0x10000-0x4ffff it increments the dword at
    the start of the page (and invalidates its TLB entry), forever.  Gives a running guest a
    small, steady set of dirty pages (iterative precopy, XBZRLE re-sends).
    """
    code = bytes.fromhex(
        "b94000"  # 0x00 mov cx, 64
        "b80010"  # 0x03 mov ax, 0x1000   (segment of page 0x10000)
        "8ed8"  # 0x06 mov ds, ax
        "66ff060000"  # 0x08 inc dword [0]
        "0f013e0000"  # 0x0d invlpg [0]
        "050001"  # 0x12 add ax, 0x100    (next 4 KiB page)
        "e2ef"  # 0x15 loop 0x06
        "ebe7"  # 0x17 jmp 0x00
    )
    image = bytearray(b"\xf4" * 0x10000)  # hlt everywhere else
    image[: len(code)] = code
    image[0xFFF0:0xFFF5] = bytes.fromhex("ea000000f0")  # reset vector: jmp far f000:0000
    return bytes(image)


# --------------------------------------------------------------------------- baseline


def analyze_migration_script() -> Path | None:
    """QEMU's own analyze-migration.py when it is already cached (never downloaded here)."""
    env = os.environ.get("MIGSTREAM_ANALYZE_MIGRATION")
    if env:
        return Path(env) if Path(env).is_file() else None
    return ANALYZE_MIGRATION_CACHE if ANALYZE_MIGRATION_CACHE.is_file() else None


def run_analyze_migration(
    script: Path, stream: Path, args: Iterable[str], cwd: Path | None = None, timeout: float = 600.0
) -> subprocess.CompletedProcess[bytes]:
    import sys

    return subprocess.run(
        [sys.executable, str(script), "-f", str(stream), *args],
        cwd=cwd,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


# --------------------------------------------------------------------------- CLI


def migstream_command() -> list[str]:
    """How to run the CLI: ``$MIGSTREAM_CLI`` (shell-split), else the ``migstream`` console
    script next to ``sys.executable``, else ``python -m migstream.cli.main``."""
    import shlex
    import sys

    env = os.environ.get("MIGSTREAM_CLI")
    if env:
        return shlex.split(env)
    script = Path(sys.executable).parent / "migstream"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "migstream.cli.main"]


def compat_command() -> list[str]:
    """The ``analyze-migration`` drop-in: console script next to python, else ``-m``."""
    import shlex
    import sys

    env = os.environ.get("MIGSTREAM_COMPAT_CLI")
    if env:
        return shlex.split(env)
    script = Path(sys.executable).parent / "analyze-migration"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "migstream.cli.compat"]


def iter_chunks(path: Path, chunk: int = 8 * MiB) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while True:
            data = f.read(chunk)
            if not data:
                return
            yield data


def rss_anon(pid: int) -> int:
    """Anonymous resident memory of a process in bytes (RssAnon: a mapped input does not count)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
