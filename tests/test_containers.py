"""Input containers: every way of holding a stream gives back exactly the stream's bytes.

Streams come from the corpus (``../shared/corpus`` next to the repository);
compressed copies, libvirt save images and synthetic qcow2 images are built
in ``tmp_path`` by this file's own small writers, independent of the reader.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import random
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from migstream.containers import open_source
from migstream.errors import ContainerError, MigstreamError, UsageError

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"
STREAMS = ["qemu-10.0/pc-paused-min", "qemu-7.2/pc-old-machine"]
SAVEVM = ["qemu-10.0/pc-savevm-qcow2", "qemu-7.2/pc-savevm-qcow2"]

needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not found at {CORPUS}")
needs_lzop = pytest.mark.skipif(shutil.which("lzop") is None, reason="lzop command missing")
needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None,
    reason="qemu-system-x86_64/qemu-img missing",
)

pytestmark = needs_corpus


# -- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Decompressed corpus streams by corpus directory."""
    return {
        name: lzma.decompress((CORPUS / name / "stream.mig.xz").read_bytes()) for name in STREAMS + SAVEVM
    }


@pytest.fixture(scope="module")
def small(plain: dict[str, bytes]) -> bytes:
    return plain[STREAMS[0]]


def read_all(target: object, **kwargs: object) -> tuple[bytes, str, dict[str, object], int]:
    with open_source(target, **kwargs) as src:  # type: ignore[arg-type]
        return bytes(src.buffer), src.container, src.details, src.base


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- writers ----------------------------------------------------------------------------------------------


def lzop_compress(data: bytes) -> bytes:
    return subprocess.run(["lzop", "-c"], input=data, stdout=subprocess.PIPE, check=True).stdout


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "xz": lambda data: lzma.compress(data, preset=0),
    "gzip": lambda data: gzip.compress(data, compresslevel=1),
    "bzip2": lambda data: bz2.compress(data, compresslevel=1),
    "zstd": lambda data: zstandard.ZstdCompressor(level=1).compress(data),
    "lzop": lzop_compress,
}

LIBVIRT_FORMATS = {"raw": 0, "gzip": 1, "bzip2": 2, "xz": 3, "lzop": 4, "zstd": 5, "sparse": 6}
XML = "<domain type='kvm'>\n  <name>guest</name>\n</domain>\n"
COOKIE = "<cookie>\n  <cpu mode='custom'/>\n</cookie>\n"


def libvirt_image(
    payload: bytes,
    fmt: int,
    *,
    cookie: str | None = COOKIE,
    order: str = "<",
    version: int = 2,
    magic: bytes = b"LibvirtQemudSave",
    padding: int = 4096,
    was_running: int = 1,
) -> bytes:
    xml = XML.encode() + b"\0"
    extra = cookie.encode() + b"\0" if cookie is not None else b""
    data = xml + extra + bytes(padding)
    cookie_offset = len(xml) if cookie is not None else 0
    header = (
        magic + struct.pack(f"{order}5I", version, len(data), was_running, fmt, cookie_offset) + bytes(56)
    )
    assert len(header) == 92
    return header + data + payload


class Qcow2Writer:
    """A minimal qcow2 writer: header, snapshot table, per-snapshot L1/L2 tables, data clusters.

    Refcounts are not written (the reader does not need them).  Each snapshot
    stores ``vmstate`` past ``disk_size`` the way QEMU does.
    """

    def __init__(
        self,
        *,
        cluster_bits: int = 16,
        version: int = 3,
        extended_l2: bool = False,
        compression: str | None = None,
        disk_size: int = 64 << 20,
    ) -> None:
        self.cluster_bits = cluster_bits
        self.cluster = 1 << cluster_bits
        self.version = version
        self.extended = extended_l2
        self.compression = compression
        self.disk_size = disk_size
        self.entry = 16 if extended_l2 else 8
        self.per_l1 = self.cluster * (self.cluster // self.entry)
        self.image = bytearray(3 * self.cluster)  # header, snapshot table, refcount table
        self.snapshots: list[bytes] = []

    def _alloc(self, length: int) -> int:
        offset = len(self.image)
        self.image += bytes(-(-length // self.cluster) * self.cluster)
        return offset

    def _compress(self, chunk: bytes) -> bytes:
        if self.compression == "zstd":
            return zstandard.ZstdCompressor(level=1).compress(chunk)
        packer = zlib.compressobj(1, zlib.DEFLATED, -12)
        return packer.compress(chunk) + packer.flush()

    def add_snapshot(
        self,
        vmstate: bytes,
        *,
        name: str = "snap1",
        snap_id: str = "1",
        holes: bool = True,
        extra_size: int = 24,
        vm_state_size: int | None = None,
    ) -> None:
        first = -(-self.disk_size // self.per_l1)
        count = -(-len(vmstate) // self.per_l1)
        l1 = [0] * (first + count)
        packed = bytearray()
        for index in range(count):
            part = vmstate[index * self.per_l1 : (index + 1) * self.per_l1]
            l1[first + index] = self._add_l2(part, holes, packed) | (1 << 63)
        l1_offset = self._alloc(8 * len(l1))
        self.image[l1_offset : l1_offset + 8 * len(l1)] = struct.pack(f">{len(l1)}Q", *l1)
        size = len(vmstate) if vm_state_size is None else vm_state_size
        extra = struct.pack(">QQQ", size, self.disk_size, (1 << 64) - 1)[:extra_size]
        entry = struct.pack(
            ">QIHHIIQII",
            l1_offset,
            len(l1),
            len(snap_id),
            len(name),
            1_700_000_000,
            0,
            0,
            size & 0xFFFFFFFF if extra_size < 8 else 0,
            extra_size,
        )
        entry += extra + snap_id.encode() + name.encode()
        entry += bytes(-len(entry) % 8)
        self.snapshots.append(entry)

    def _add_l2(self, part: bytes, holes: bool, packed: bytearray) -> int:
        words: list[int] = []
        for start in range(0, len(part), self.cluster):
            chunk = part[start : start + self.cluster].ljust(self.cluster, b"\0")
            words += self._cluster_entry(chunk, holes)
        words += [0] * (self.cluster // 8 - len(words))
        l2_offset = self._alloc(self.cluster)
        self.image[l2_offset : l2_offset + self.cluster] = struct.pack(f">{self.cluster // 8}Q", *words)
        return l2_offset

    def _cluster_entry(self, chunk: bytes, holes: bool) -> list[int]:
        bitmap = [] if not self.extended else [(1 << 32) - 1]
        if holes and not any(chunk):
            # Zero cluster: flag in the entry (normal L2) or "all zero" subclusters (extended L2).
            return [0, 0xFFFFFFFF << 32] if self.extended else [1]
        if self.compression:
            blob = self._compress(chunk)
            host = len(self.image) + 100  # deliberately not sector aligned
            self.image += bytes(100) + blob
            self.image += bytes(-len(self.image) % self.cluster)
            shift = 62 - (self.cluster_bits - 8)
            sectors = (host + len(blob) - 1) // 512 - host // 512
            return [(1 << 62) | (sectors << shift) | host] + ([0] if self.extended else [])
        host = self._alloc(self.cluster)
        self.image[host : host + self.cluster] = chunk
        return [(1 << 63) | host] + bitmap

    def build(self, *, nb_snapshots: int | None = None) -> bytes:
        table = b"".join(self.snapshots)
        snap_offset = self.cluster
        if len(table) > self.cluster:
            snap_offset = self._alloc(len(table))
        self.image[snap_offset : snap_offset + len(table)] = table
        count = len(self.snapshots) if nb_snapshots is None else nb_snapshots
        header = struct.pack(
            ">4sIQIIQIIQQIIQ",
            b"QFI\xfb",
            self.version,
            0,
            0,
            self.cluster_bits,
            self.disk_size,
            0,
            0,
            0,
            2 * self.cluster,
            1,
            count,
            snap_offset,
        )
        if self.version == 3:
            incompat = (1 << 4 if self.extended else 0) | (1 << 3 if self.compression == "zstd" else 0)
            header += struct.pack(">QQQII", incompat, 0, 0, 4, 112)
            header += bytes([1 if self.compression == "zstd" else 0]) + bytes(7)
        self.image[: len(header)] = header
        return bytes(self.image)


def qcow2_image(vmstate: bytes, **kwargs: object) -> bytes:
    writer = Qcow2Writer(**kwargs)  # type: ignore[arg-type]
    writer.add_snapshot(vmstate)
    return writer.build()


def patch(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def ends_with_vmdesc(stream: bytes) -> bool:
    """The stream ends with QEMU's JSON VM description (0x06, be32 length, JSON)."""
    start = stream.rfind(b'{"page_size"')
    if start < 5 or stream[start - 5] != 0x06:
        return False
    (length,) = struct.unpack(">I", stream[start - 4 : start])
    return start + length == len(stream) and isinstance(json.loads(stream[start:]), dict)


# -- raw, compressed, stdin --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", STREAMS)
def test_raw_file_is_mapped_in_place(tmp_path: Path, plain: dict[str, bytes], name: str) -> None:
    data, container, details, base = read_all(write(tmp_path / "s", plain[name]))
    assert (data, container, details, base) == (plain[name], "raw", {}, 0)


@pytest.mark.parametrize("name", STREAMS)
def test_corpus_xz_file(plain: dict[str, bytes], name: str) -> None:
    data, container, details, _ = read_all(CORPUS / name / "stream.mig.xz")
    assert data == plain[name]
    assert container == "xz"
    assert details == {"compression": "xz"}


@pytest.mark.parametrize("name", STREAMS)
@pytest.mark.parametrize("kind", ["gzip", "bzip2", "zstd", pytest.param("lzop", marks=needs_lzop)])
def test_compressed_copies(tmp_path: Path, plain: dict[str, bytes], kind: str, name: str) -> None:
    # Named ".bin": recognition never looks at the name.
    path = write(tmp_path / "stream.bin", COMPRESSORS[kind](plain[name]))
    data, container, details, _ = read_all(path)
    assert data == plain[name]
    assert container == kind
    assert details == {"compression": kind}


def test_multi_member_and_concatenated_streams(tmp_path: Path, small: bytes) -> None:
    half = len(small) // 2
    for kind in ("gzip", "bzip2", "xz", "zstd"):
        joined = COMPRESSORS[kind](small[:half]) + COMPRESSORS[kind](small[half:])
        assert read_all(write(tmp_path / kind, joined))[0] == small, kind


def test_nested_compression(tmp_path: Path, small: bytes) -> None:
    data, container, details, _ = read_all(
        write(tmp_path / "s", COMPRESSORS["xz"](COMPRESSORS["gzip"](small)))
    )
    assert data == small
    assert container == "xz+gzip"
    assert details == {"compression": "xz+gzip"}


def test_decompression_cap(tmp_path: Path, small: bytes) -> None:
    path = write(tmp_path / "s", COMPRESSORS["zstd"](small))
    with pytest.raises(ContainerError, match="size limit"):
        open_source(path, max_size=len(small) - 1)
    assert read_all(path, max_size=len(small))[0] == small


def test_compression_bomb_stops(tmp_path: Path) -> None:
    bomb = write(tmp_path / "bomb", gzip.compress(b"QEVM" + bytes(64 << 20), compresslevel=9))
    with pytest.raises(ContainerError, match="limit"):
        open_source(bomb, max_size=16 << 20)


def run_stdin(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    code = (
        "import sys, hashlib\n"
        "from migstream.containers import open_source\n"
        "from migstream.errors import MigstreamError\n"
        "try:\n"
        "    s = open_source('-')\n"
        "except MigstreamError as e:\n"
        "    print('ERROR', e); sys.exit(3)\n"
        "print(s.container, s.size, hashlib.sha256(s.buffer).hexdigest())\n"
    )
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, timeout=120, **kwargs)  # type: ignore[call-overload,no-any-return]


@pytest.mark.parametrize("kind", ["raw", "xz", "zstd"])
def test_stdin_pipe(small: bytes, kind: str) -> None:
    import hashlib

    payload = small if kind == "raw" else COMPRESSORS[kind](small)
    result = run_stdin([], input=payload)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split() == [kind, str(len(small)), hashlib.sha256(small).hexdigest()]


def test_stdin_from_xz_process(small: bytes) -> None:
    import hashlib

    source = CORPUS / STREAMS[0] / "stream.mig.xz"
    with subprocess.Popen(["xz", "-dc", str(source)], stdout=subprocess.PIPE) as xz:
        result = run_stdin([], stdin=xz.stdout)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split() == ["raw", str(len(small)), hashlib.sha256(small).hexdigest()]


def test_stdin_redirected_regular_file(tmp_path: Path, small: bytes) -> None:
    path = write(tmp_path / "s.gz", COMPRESSORS["gzip"](small))
    with path.open("rb") as handle:
        result = run_stdin([], stdin=handle)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split()[:2] == ["gzip", str(len(small))]


def test_stdin_garbage_is_one_clean_error() -> None:
    result = run_stdin([], input=b"hello world, not a stream")
    assert result.returncode == 3
    assert result.stdout.decode().strip() == (
        "ERROR <stdin>: not a QEMU migration stream (nor a known container): found magic '68 65 6c 6c'"
    )
    assert result.stderr == b""


def test_file_objects(tmp_path: Path, small: bytes) -> None:
    # non-seekable / no descriptor: spooled
    assert read_all(io.BytesIO(COMPRESSORS["bzip2"](small)))[:2] == (small, "bzip2")
    # a regular file positioned after a prefix: used in place from its position
    path = write(tmp_path / "prefixed", b"some prefix" + small)
    with path.open("rb") as handle:
        handle.seek(len(b"some prefix"))
        data, container, _, base = read_all(handle)
        assert handle.tell() == len(b"some prefix")  # its position is left alone
    assert (data, container, base) == (small, "raw", len(b"some prefix"))


def test_no_temporary_files_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small: bytes) -> None:
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    src = open_source(write(tmp_path / "s", COMPRESSORS["xz"](COMPRESSORS["gzip"](small))))
    assert list(scratch.iterdir()) == []  # unlinked at creation
    src.close()
    with pytest.raises(ContainerError):
        open_source(write(tmp_path / "bad", COMPRESSORS["gzip"](small)[:-100]))
    assert list(scratch.iterdir()) == []


# -- libvirt -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", STREAMS)
@pytest.mark.parametrize(
    "fmt", ["raw", "gzip", "bzip2", "xz", pytest.param("lzop", marks=needs_lzop), "zstd"]
)
def test_libvirt_formats(tmp_path: Path, plain: dict[str, bytes], fmt: str, name: str) -> None:
    stream = plain[name]
    payload = stream if fmt == "raw" else COMPRESSORS[fmt](stream)
    image = libvirt_image(payload, LIBVIRT_FORMATS[fmt])
    data, container, details, base = read_all(write(tmp_path / "guest.save", image))
    assert data == stream
    assert container == ("libvirt-save" if fmt == "raw" else f"libvirt-save+{fmt}")
    info = details["libvirt"]
    assert isinstance(info, dict)
    assert info["format"] == fmt
    assert info["xml"] == XML
    assert info["cookie"] == COOKIE
    assert info["was_running"] == 1
    assert info["byte_order"] == "little"
    if fmt == "raw":
        assert base == len(image) - len(stream) == info["stream_offset"]
    else:
        assert details["compression"] == fmt


def test_libvirt_byte_swapped_header(tmp_path: Path, small: bytes) -> None:
    image = libvirt_image(small, 0, order=">", was_running=0)
    data, container, details, base = read_all(write(tmp_path / "be.save", image))
    assert (data, container, base) == (small, "libvirt-save", len(image) - len(small))
    assert details["libvirt"]["byte_order"] == "big"  # type: ignore[index]
    assert details["libvirt"]["was_running"] == 0  # type: ignore[index]


def test_libvirt_without_cookie_and_sparse(tmp_path: Path, small: bytes) -> None:
    image = libvirt_image(small, 6, cookie=None, padding=65536)
    data, container, details, base = read_all(write(tmp_path / "s.save", image))
    assert (data, container, base) == (small, "libvirt-save", len(image) - len(small))
    assert details["libvirt"]["cookie"] is None  # type: ignore[index]
    assert details["libvirt"]["format"] == "sparse"  # type: ignore[index]


def test_libvirt_version1_ignores_format(tmp_path: Path, small: bytes) -> None:
    image = libvirt_image(small, 1, version=1)
    assert read_all(write(tmp_path / "v1.save", image))[:2] == (small, "libvirt-save")


LIBVIRT_BAD: dict[str, tuple[dict[str, Any], str]] = {
    "partial": (dict(magic=b"LibvirtQemudPart"), "incomplete"),
    "version": (dict(version=3), "version"),
    "format": (dict(fmt=9), "unknown format 9"),
    "not-a-stream": (dict(fmt=1), "gzip"),  # says gzip, holds a raw stream
}


@pytest.mark.parametrize("case", sorted(LIBVIRT_BAD))
def test_libvirt_bad_headers(tmp_path: Path, small: bytes, case: str) -> None:
    options, message = LIBVIRT_BAD[case]
    options = dict(options)
    fmt = int(options.pop("fmt", 0))
    image = libvirt_image(small[:4096], fmt, **options)
    with pytest.raises(ContainerError, match=message):
        open_source(write(tmp_path / "bad.save", image))


def test_libvirt_lengths_checked(tmp_path: Path, small: bytes) -> None:
    image = libvirt_image(small[:4096], 0)
    for offset, value, message in [
        (20, 0xFFFFFF00, "data_len"),
        (20, 0, "data_len"),
        (32, 0xFFFFFF, "cookieOffset"),
    ]:
        with pytest.raises(ContainerError, match=message):
            open_source(write(tmp_path / "bad.save", patch(image, offset, "<I", value)))
    for cut in (10, 16, 50, 91, 92, 200):
        with pytest.raises(ContainerError):
            open_source(write(tmp_path / "cut.save", image[:cut]))


def test_libvirt_without_stream(tmp_path: Path) -> None:
    with pytest.raises(ContainerError, match="no data inside the libvirt-save container"):
        open_source(write(tmp_path / "empty.save", libvirt_image(b"", 0)))


# -- qcow2 -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SAVEVM)
def test_qcow2_corpus(tmp_path: Path, plain: dict[str, bytes], name: str) -> None:
    stream = plain[name]
    data, container, details, _ = read_all(CORPUS / name / "disk.qcow2.xz")
    assert data == stream
    assert container == "xz+qcow2-snapshot"
    disk = write(tmp_path / "disk.img", lzma.decompress((CORPUS / name / "disk.qcow2.xz").read_bytes()))
    data, container, details, _ = read_all(disk)
    assert (data, container) == (stream, "qcow2-snapshot")
    info = details["qcow2"]
    assert isinstance(info, dict)
    assert (info["snapshot"], info["id"], info["vm_state_size"]) == ("snap1", "1", len(stream))
    assert info["vm_state_offset"] == 512 << 20
    assert [s["name"] for s in info["snapshots"]] == ["snap1"]
    assert read_all(disk, snapshot="snap1")[0] == stream
    assert read_all(disk, snapshot="1")[0] == stream


QCOW2_VARIANTS: dict[str, dict[str, Any]] = {
    "v3": {},
    "v2": {"version": 2},
    "extended-l2": {"extended_l2": True},
    "4k-clusters": {"cluster_bits": 12, "disk_size": (5 << 20) + 123},
    "2m-clusters": {"cluster_bits": 21},
    "512-clusters": {"cluster_bits": 9, "disk_size": 1 << 20},
    "zlib": {"compression": "zlib"},
    "zstd": {"compression": "zstd"},
    "extended-l2-zlib": {"extended_l2": True, "compression": "zlib", "cluster_bits": 14},
}


@pytest.mark.parametrize("variant", sorted(QCOW2_VARIANTS))
def test_qcow2_synthetic(tmp_path: Path, small: bytes, variant: str) -> None:
    # A zero run spanning whole clusters exercises holes / zero clusters.
    stream = small[:300_000] + bytes(5 << 20) + small[300_000:]
    image = qcow2_image(stream, **QCOW2_VARIANTS[variant])
    path = write(tmp_path / "img", image)
    data, container, details, _ = read_all(path)
    assert data == stream
    assert container == "qcow2-snapshot"
    with open_source(path) as src:
        allocated = os.fstat(src.fd).st_blocks * 512
        if "compression" not in QCOW2_VARIANTS[variant]:
            assert allocated < len(stream) - (1 << 20)  # the zero clusters stayed holes


def test_qcow2_vmstate_across_l2_tables(tmp_path: Path, small: bytes) -> None:
    # 4 KiB clusters: one L2 table maps 2 MiB, so the stream spans two L2 tables.
    image = qcow2_image(small, cluster_bits=12, disk_size=3 << 20)
    assert read_all(write(tmp_path / "img", image))[0] == small


def test_qcow2_snapshot_selection(tmp_path: Path, small: bytes) -> None:
    writer = Qcow2Writer()
    writer.add_snapshot(small[:100_000] + b"A", name="first", snap_id="1")
    writer.add_snapshot(small[:200_000] + b"B", name="second", snap_id="2")
    writer.add_snapshot(b"", name="disk-only", snap_id="3")
    path = write(tmp_path / "img", writer.build())
    data, _, details, _ = read_all(path)
    assert data.endswith(b"B")  # the last snapshot holding a VM state
    assert details["qcow2"]["snapshot"] == "second"  # type: ignore[index]
    assert [s["name"] for s in details["qcow2"]["snapshots"]] == ["first", "second", "disk-only"]  # type: ignore[index]
    assert read_all(path, snapshot="first")[0].endswith(b"A")
    assert read_all(path, snapshot="2")[0].endswith(b"B")
    with pytest.raises(ContainerError, match="no VM state"):
        open_source(path, snapshot="disk-only")
    with pytest.raises(ContainerError, match="no snapshot named or numbered 'nope'"):
        open_source(path, snapshot="nope")


def test_qcow2_short_extra_data(tmp_path: Path, small: bytes) -> None:
    # No extra data (old images): 32-bit vm_state_size, disk size from the header.
    writer = Qcow2Writer(version=2)
    writer.add_snapshot(small, extra_size=0)
    assert read_all(write(tmp_path / "img", writer.build()))[0] == small


def test_qcow2_without_usable_snapshot(tmp_path: Path, small: bytes) -> None:
    with pytest.raises(ContainerError, match="no internal snapshot"):
        open_source(write(tmp_path / "none", Qcow2Writer().build()))
    writer = Qcow2Writer()
    writer.add_snapshot(b"", name="d1")
    with pytest.raises(ContainerError, match="none holds a VM state"):
        open_source(write(tmp_path / "diskonly", writer.build()))


def test_snapshot_selector_needs_qcow2(tmp_path: Path, small: bytes) -> None:
    with pytest.raises(UsageError):
        open_source(write(tmp_path / "s", small), snapshot="snap1")


@needs_qemu
@pytest.mark.qemu
@pytest.mark.parametrize(
    "options", ["extended_l2=on,cluster_size=16384", "compat=0.10,cluster_size=4096", "cluster_size=2097152"]
)
def test_qcow2_written_by_qemu(tmp_path: Path, options: str) -> None:
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", options, str(disk), "100M"], check=True)
    qemu = [
        "qemu-system-x86_64",
        "-nodefaults",
        "-display",
        "none",
        "-machine",
        "pc",
        "-m",
        "16",
        "-S",
        "-accel",
        "tcg",
        "-drive",
        f"file={disk},if=ide,format=qcow2",
        "-monitor",
        "stdio",
    ]
    commands = b"savevm first\nsavevm second\nquit\n"
    subprocess.run(qemu, input=commands, capture_output=True, timeout=120, check=True)
    listing = subprocess.run(
        ["qemu-img", "snapshot", "-l", str(disk)], capture_output=True, check=True
    ).stdout
    assert b"second" in listing
    for selector in (None, "first"):
        data, container, details, _ = read_all(disk, snapshot=selector)
        assert container == "qcow2-snapshot"
        assert data.startswith(b"QEVM\0\0\0\3")
        assert ends_with_vmdesc(data)
        assert details["qcow2"]["snapshot"] == (selector or "second")  # type: ignore[index]


# -- hostile input -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_qcow2(small: bytes) -> bytes:
    return qcow2_image(small[:200_000], cluster_bits=12, disk_size=1 << 20)


def qcow2_snapshot_entry(image: bytes) -> int:
    (offset,) = struct.unpack_from(">Q", image, 64)
    return int(offset)


QCOW2_HOSTILE: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "cluster_bits-big": (lambda im: patch(im, 20, ">I", 40), "cluster_bits 40"),
    "cluster_bits-small": (lambda im: patch(im, 20, ">I", 3), "cluster_bits 3"),
    "nb_snapshots-absurd": (lambda im: patch(im, 60, ">I", 0xFFFFFFFF), "nb_snapshots"),
    "nb_snapshots-more": (lambda im: patch(im, 60, ">I", 5000), "snapshot table entry"),
    "snapshots_offset-past-eof": (lambda im: patch(im, 64, ">Q", 1 << 50), "past the end"),
    "version": (lambda im: patch(im, 4, ">I", 7), "version 7"),
    "encrypted": (lambda im: patch(im, 32, ">I", 1), "encrypted"),
    "unknown-feature": (lambda im: patch(im, 72, ">Q", 1 << 40), "unknown incompatible"),
    "data-file": (lambda im: patch(im, 72, ">Q", 1 << 2), "external data file"),
    "header_length": (lambda im: patch(im, 100, ">I", 8), "header_length"),
    "l1-past-eof": (lambda im: patch(im, qcow2_snapshot_entry(im), ">Q", 1 << 40), "L1 table"),
    "l1-misaligned": (lambda im: patch(im, qcow2_snapshot_entry(im), ">Q", 4097), "not cluster aligned"),
    "l1-size-absurd": (lambda im: patch(im, qcow2_snapshot_entry(im) + 8, ">I", 0xFFFFFFFF), "L1 table"),
    "l1-too-short": (lambda im: patch(im, qcow2_snapshot_entry(im) + 8, ">I", 1), "does not reach"),
    "vm_state_size-huge": (lambda im: patch(im, qcow2_snapshot_entry(im) + 40, ">Q", 1 << 62), "limit"),
    "vm_state_size-past-l1": (lambda im: patch(im, qcow2_snapshot_entry(im) + 40, ">Q", 1 << 30), "reach"),
    "extra-data-huge": (lambda im: patch(im, qcow2_snapshot_entry(im) + 36, ">I", 1 << 30), "extra data"),
    "name-past-eof": (
        lambda im: patch(im[: qcow2_snapshot_entry(im) + 70], qcow2_snapshot_entry(im) + 14, ">H", 60000),
        "past the end",
    ),
    "truncated-header": (lambda im: im[:50], "truncated"),
    "truncated-data": (lambda im: im[: len(im) // 2], "past the end"),
}


@pytest.mark.parametrize("case", sorted(QCOW2_HOSTILE))
def test_qcow2_hostile(tmp_path: Path, good_qcow2: bytes, case: str) -> None:
    mutate, message = QCOW2_HOSTILE[case]
    with pytest.raises(ContainerError, match=message):
        open_source(write(tmp_path / "bad.qcow2", mutate(good_qcow2)))


def test_qcow2_l2_pointing_past_eof(tmp_path: Path, good_qcow2: bytes) -> None:
    entry = qcow2_snapshot_entry(good_qcow2)
    (l1_offset,) = struct.unpack_from(">Q", good_qcow2, entry)
    first = -(-(1 << 20) // (4096 * 512))
    bad = patch(good_qcow2, l1_offset + 8 * first, ">Q", 1 << 45)
    with pytest.raises(ContainerError, match="past the end"):
        open_source(write(tmp_path / "bad.qcow2", bad))


def test_qcow2_corrupt_compressed_cluster(tmp_path: Path, small: bytes) -> None:
    image = bytearray(qcow2_image(small[:100_000], compression="zlib"))
    start = image.find(zlib.compressobj(1, zlib.DEFLATED, -12).compress(small[:65536])[:16])
    assert start > 0
    image[start : start + 64] = os.urandom(64)
    with pytest.raises(ContainerError, match="compressed cluster"):
        open_source(write(tmp_path / "bad.qcow2", bytes(image)))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"garbage!" * 100, "found magic '67 61 72 62'"),
        (b"QEV", "found magic '51 45 56'"),
        (b"\xfd7zXZ\x00" + b"\x00" * 50, "xz-compressed data is corrupt"),
        (b"\x1f\x8b" + b"\xff" * 50, "gzip-compressed data is corrupt"),
        (b"BZh9" + b"\xff" * 50, "bzip2-compressed data is corrupt"),
        (b"\x28\xb5\x2f\xfd" + b"\xff" * 50, "zstd-compressed data is corrupt"),
    ],
)
def test_garbage(tmp_path: Path, content: bytes, message: str) -> None:
    with pytest.raises(ContainerError, match=message) as info:
        open_source(write(tmp_path / "junk", content))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["xz", "gzip", "bzip2", "zstd", pytest.param("lzop", marks=needs_lzop)])
def test_truncated_compressed(tmp_path: Path, small: bytes, kind: str) -> None:
    packed = COMPRESSORS[kind](small)
    with pytest.raises(ContainerError, match=kind):
        open_source(write(tmp_path / "cut", packed[: len(packed) // 2]))


def test_lzop_command_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ContainerError, match="lzop command"):
        open_source(write(tmp_path / "s.lzo", b"\x89LZO\x00\r\n\x1a\n" + bytes(40)))


def test_paths_that_are_not_files(tmp_path: Path) -> None:
    with pytest.raises(ContainerError, match="cannot open"):
        open_source(tmp_path / "missing")
    with pytest.raises(ContainerError, match="directory"):
        open_source(tmp_path)


def mutants(image: bytes, region: int, seed: int, count: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    for _ in range(count):
        data = bytearray(image)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(min(region, len(data)))] = rng.randrange(256)
        yield bytes(data[: rng.choice([len(data), rng.randrange(1, len(data))])])


@pytest.mark.parametrize("kind", ["libvirt", "qcow2"])
def test_random_corruption_raises_only_migstream_errors(
    tmp_path: Path, small: bytes, good_qcow2: bytes, kind: str
) -> None:
    if kind == "libvirt":
        image, region = libvirt_image(COMPRESSORS["gzip"](small[:50_000]), 1, padding=64), 400
    else:
        # mutate the header, the snapshot table, the L1 and the first L2 table
        image, region = good_qcow2, 6 * 4096
    path = tmp_path / "mutant"
    for mutant in mutants(image, region, seed=1234, count=300):
        path.write_bytes(mutant)
        try:
            with open_source(path) as src:
                assert src.size <= 1 << 40
        except MigstreamError as exc:
            assert "\n" not in str(exc)
