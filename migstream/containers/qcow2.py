"""The VM state of an internal snapshot inside a qcow2 image (``savevm``).

QEMU: block/qcow2-snapshot.c (qcow2_snapshot_create), docs/interop/qcow2.txt.

QEMU stores a snapshot's VM state as if it were guest data placed just past
the virtual disk, at the first L1 boundary after the disk size, and maps it
through the snapshot's own L1 table.  :func:`extract_vmstate` walks that
mapping and copies the allocated clusters into an unlinked temporary file
(holes stay holes), which then holds exactly ``vm_state_size`` bytes of
stream.

Every length and offset read from the image is checked before it is used:
cluster size, snapshot count and entry sizes, L1/L2 tables inside the file,
the VM state inside the reach of the snapshot's L1 table.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import zstandard

from migstream.containers._io import copy_range, new_temp_fd, pread_exact, pread_upto, temp_cap, write_all
from migstream.containers.magic import QCOW_MAGIC
from migstream.errors import ContainerError

# Header (big-endian).  Version 2 ends after snapshots_offset; version 3 adds
# the feature bitmaps, refcount_order and header_length, then optional fields.
QCOW_HEADER_V2 = struct.Struct(">4sIQIIQIIQQIIQ")
QCOW_HEADER_V3 = struct.Struct(">QQQII")
QCOW_COMPRESSION_TYPE_OFFSET = 104
QCOW_VERSIONS = (2, 3)

MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
QCOW_MAX_SNAPSHOTS = 65536
QCOW_MAX_SNAPSHOT_EXTRA_DATA = 1024
QCOW_MAX_SNAPSHOTS_SIZE = 64 << 20
QCOW_MAX_L1_SIZE = 32 << 20  # bytes

QCOW2_INCOMPAT_DIRTY = 1 << 0
QCOW2_INCOMPAT_CORRUPT = 1 << 1
QCOW2_INCOMPAT_DATA_FILE = 1 << 2
QCOW2_INCOMPAT_COMPRESSION = 1 << 3
QCOW2_INCOMPAT_EXTL2 = 1 << 4
QCOW2_INCOMPAT_KNOWN = (
    QCOW2_INCOMPAT_DIRTY
    | QCOW2_INCOMPAT_CORRUPT
    | QCOW2_INCOMPAT_DATA_FILE
    | QCOW2_INCOMPAT_COMPRESSION
    | QCOW2_INCOMPAT_EXTL2
)

QCOW2_COMPRESSION_TYPE_ZLIB = 0
QCOW2_COMPRESSION_TYPE_ZSTD = 1
QCOW2_COMPRESSED_SECTOR_SIZE = 512

L1E_SIZE = 8
L2E_SIZE_NORMAL = 8
L2E_SIZE_EXTENDED = 16
L1E_OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00
L2E_OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00
QCOW_OFLAG_COMPRESSED = 1 << 62
QCOW_OFLAG_ZERO = 1 << 0
QCOW_EXTL2_SUBCLUSTERS_PER_CLUSTER = 32

# Snapshot table entry (big-endian), followed by extra data, id string, name.
QCOW_SNAPSHOT_HEADER = struct.Struct(">QIHHIIQII")
QCOW_SNAPSHOT_EXTRA = struct.Struct(">QQQ")  # vm_state_size_large, disk_size, icount
QCOW_SNAPSHOT_ALIGN = 8


@dataclass(frozen=True)
class QcowHeader:
    version: int
    cluster_bits: int
    size: int
    crypt_method: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible_features: int
    compression_type: int

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def extended_l2(self) -> bool:
        return bool(self.incompatible_features & QCOW2_INCOMPAT_EXTL2)

    @property
    def l2_entry_size(self) -> int:
        return L2E_SIZE_EXTENDED if self.extended_l2 else L2E_SIZE_NORMAL

    @property
    def l2_entries(self) -> int:
        return self.cluster_size // self.l2_entry_size

    @property
    def bytes_per_l1(self) -> int:
        """Guest bytes mapped by one L1 entry (one full L2 table)."""
        return self.cluster_size * self.l2_entries


@dataclass(frozen=True)
class QcowSnapshot:
    l1_table_offset: int
    l1_size: int
    id: str
    name: str
    date_sec: int
    date_nsec: int
    vm_clock_nsec: int
    vm_state_size: int
    disk_size: int | None
    icount: int | None

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "vm_state_size": self.vm_state_size,
            "date_sec": self.date_sec,
            "date_nsec": self.date_nsec,
            "vm_clock_nsec": self.vm_clock_nsec,
        }


class _Image:
    """Positional reads inside the image at ``[base, base + size)`` of a descriptor."""

    def __init__(self, fd: int, base: int, size: int) -> None:
        self.fd = fd
        self.base = base
        self.size = size

    def read(self, offset: int, length: int, what: str) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ContainerError(
                f"qcow2 {what} at offset {offset:#x} (+{length:#x}) is past the end of the image "
                f"({self.size:#x} bytes)"
            )
        return pread_exact(self.fd, self.base + offset, length, f"qcow2 {what}")


def read_header(img: _Image) -> QcowHeader:
    raw = pread_upto(img.fd, img.base, min(img.size, QCOW_COMPRESSION_TYPE_OFFSET + 1))
    if len(raw) < QCOW_HEADER_V2.size:
        raise ContainerError(
            f"qcow2 image is truncated: {len(raw)} bytes, a header needs {QCOW_HEADER_V2.size}"
        )
    (
        magic,
        version,
        _backing_offset,
        _backing_size,
        cluster_bits,
        size,
        crypt_method,
        _l1_size,
        _l1_offset,
        _refcount_offset,
        _refcount_clusters,
        nb_snapshots,
        snapshots_offset,
    ) = QCOW_HEADER_V2.unpack_from(raw)
    if magic != QCOW_MAGIC:
        raise ContainerError(f"not a qcow2 image: magic {magic.hex(' ')}")
    if version not in QCOW_VERSIONS:
        raise ContainerError(f"qcow2 version {version} is not supported (only 2 and 3)")
    incompatible, compression_type = _v3_fields(raw) if version == 3 else (0, QCOW2_COMPRESSION_TYPE_ZLIB)
    header = QcowHeader(
        version=version,
        cluster_bits=cluster_bits,
        size=size,
        crypt_method=crypt_method,
        nb_snapshots=nb_snapshots,
        snapshots_offset=snapshots_offset,
        incompatible_features=incompatible,
        compression_type=compression_type,
    )
    _check_header(header)
    return header


def _v3_fields(raw: bytes) -> tuple[int, int]:
    end = QCOW_HEADER_V2.size + QCOW_HEADER_V3.size
    if len(raw) < end:
        raise ContainerError(f"qcow2 v3 header is truncated: {len(raw)} bytes, needs {end}")
    incompatible, _compatible, _autoclear, _refcount_order, header_length = QCOW_HEADER_V3.unpack_from(
        raw, QCOW_HEADER_V2.size
    )
    if header_length < end:
        raise ContainerError(f"qcow2 v3 header_length {header_length} is below the minimum {end}")
    compression_type = QCOW2_COMPRESSION_TYPE_ZLIB
    if header_length > QCOW_COMPRESSION_TYPE_OFFSET and len(raw) > QCOW_COMPRESSION_TYPE_OFFSET:
        compression_type = raw[QCOW_COMPRESSION_TYPE_OFFSET]
    return incompatible, compression_type


def _check_header(header: QcowHeader) -> None:
    if not MIN_CLUSTER_BITS <= header.cluster_bits <= MAX_CLUSTER_BITS:
        raise ContainerError(
            f"qcow2 cluster_bits {header.cluster_bits} is out of range "
            f"({MIN_CLUSTER_BITS}..{MAX_CLUSTER_BITS})"
        )
    if header.crypt_method != 0:
        raise ContainerError("encrypted qcow2 images are not supported")
    unknown = header.incompatible_features & ~QCOW2_INCOMPAT_KNOWN
    if unknown:
        raise ContainerError(f"qcow2 image uses unknown incompatible features {unknown:#x}")
    if header.incompatible_features & QCOW2_INCOMPAT_DATA_FILE:
        raise ContainerError("qcow2 images with an external data file are not supported")
    if header.compression_type not in (QCOW2_COMPRESSION_TYPE_ZLIB, QCOW2_COMPRESSION_TYPE_ZSTD):
        raise ContainerError(f"qcow2 compression type {header.compression_type} is unknown")
    if header.nb_snapshots > QCOW_MAX_SNAPSHOTS:
        raise ContainerError(
            f"qcow2 nb_snapshots {header.nb_snapshots} exceeds the limit {QCOW_MAX_SNAPSHOTS}"
        )


def read_snapshots(img: _Image, header: QcowHeader) -> list[QcowSnapshot]:
    """The snapshot table, in table order."""
    if header.nb_snapshots and header.snapshots_offset % QCOW_SNAPSHOT_ALIGN:
        raise ContainerError(f"qcow2 snapshots_offset {header.snapshots_offset:#x} is misaligned")
    snapshots: list[QcowSnapshot] = []
    offset = header.snapshots_offset
    for index in range(header.nb_snapshots):
        if offset - header.snapshots_offset > QCOW_MAX_SNAPSHOTS_SIZE:
            raise ContainerError(f"qcow2 snapshot table exceeds {QCOW_MAX_SNAPSHOTS_SIZE} bytes")
        snapshot, length = _read_snapshot(img, offset, index)
        snapshots.append(snapshot)
        offset += length
    return snapshots


def _read_snapshot(img: _Image, offset: int, index: int) -> tuple[QcowSnapshot, int]:
    what = f"snapshot table entry {index}"
    (l1_offset, l1_size, id_size, name_size, date_sec, date_nsec, vm_clock, vm_state_size32, extra_size) = (
        QCOW_SNAPSHOT_HEADER.unpack(img.read(offset, QCOW_SNAPSHOT_HEADER.size, what))
    )
    if extra_size > QCOW_MAX_SNAPSHOT_EXTRA_DATA:
        raise ContainerError(f"qcow2 {what}: extra data size {extra_size} > {QCOW_MAX_SNAPSHOT_EXTRA_DATA}")
    body = img.read(offset + QCOW_SNAPSHOT_HEADER.size, extra_size + id_size + name_size, what)
    extra = body[:extra_size].ljust(QCOW_SNAPSHOT_EXTRA.size, b"\0")
    vm_state_large, disk_size, icount = QCOW_SNAPSHOT_EXTRA.unpack_from(extra)
    length = QCOW_SNAPSHOT_HEADER.size + len(body)
    length += -length % QCOW_SNAPSHOT_ALIGN
    snapshot = QcowSnapshot(
        l1_table_offset=l1_offset,
        l1_size=l1_size,
        id=body[extra_size : extra_size + id_size].decode("utf-8", "replace"),
        name=body[extra_size + id_size :].decode("utf-8", "replace"),
        date_sec=date_sec,
        date_nsec=date_nsec,
        vm_clock_nsec=vm_clock,
        vm_state_size=vm_state_large if extra_size >= 8 else vm_state_size32,
        disk_size=disk_size if extra_size >= 16 else None,
        icount=icount if extra_size >= 24 and icount != (1 << 64) - 1 else None,
    )
    return snapshot, length


def select_snapshot(snapshots: list[QcowSnapshot], selector: str | None) -> QcowSnapshot:
    """The snapshot named (or else numbered) ``selector``; by default the last one with a VM state."""
    if not snapshots:
        raise ContainerError("qcow2 image has no internal snapshot, so no VM state")
    if selector is None:
        with_state = [s for s in snapshots if s.vm_state_size > 0]
        if not with_state:
            raise ContainerError(
                f"qcow2 image has {len(snapshots)} snapshot(s), none holds a VM state (disk-only snapshots)"
            )
        return with_state[-1]
    for key in ("name", "id"):
        matches = [s for s in snapshots if getattr(s, key) == selector]
        if matches:
            chosen = matches[-1]
            if chosen.vm_state_size == 0:
                raise ContainerError(f"qcow2 snapshot {selector!r} holds no VM state (disk-only snapshot)")
            return chosen
    known = ", ".join(f"{s.id}:{s.name}" for s in snapshots)
    raise ContainerError(f"qcow2 image has no snapshot named or numbered {selector!r} (it has {known})")


def extract_vmstate(
    fd: int, base: int, size: int, *, snapshot: str | None, limit: int
) -> tuple[int, int, dict[str, Any]]:
    """Copy the VM state of a snapshot of the qcow2 image at ``[base, base + size)`` of ``fd``.

    Returns ``(temp_fd, vm_state_size, details)``; the caller owns ``temp_fd``.
    """
    img = _Image(fd, base, size)
    header = read_header(img)
    snapshots = read_snapshots(img, header)
    chosen = select_snapshot(snapshots, snapshot)
    layout = _VmStateLayout(header, chosen, limit)
    l1 = layout.read_l1(img)
    out = new_temp_fd()
    try:
        _Copier(img, header, out).copy(l1, chosen.vm_state_size)
    except BaseException:
        os.close(out)
        raise
    details = {
        "snapshot": chosen.name,
        "id": chosen.id,
        "vm_state_size": chosen.vm_state_size,
        "vm_state_offset": layout.start,
        "disk_size": layout.disk_size,
        "cluster_size": header.cluster_size,
        "version": header.version,
        "extended_l2": header.extended_l2,
        "snapshots": [s.summary() for s in snapshots],
    }
    return out, chosen.vm_state_size, details


class _VmStateLayout:
    """Where the VM state of one snapshot lives in the guest address space, checked."""

    def __init__(self, header: QcowHeader, snap: QcowSnapshot, limit: int) -> None:
        per_l1 = header.bytes_per_l1
        self.disk_size = snap.disk_size if snap.disk_size is not None else header.size
        self.first_l1 = -(-self.disk_size // per_l1)
        self.start = self.first_l1 * per_l1
        self.l1_count = -(-snap.vm_state_size // per_l1)
        self.snap = snap
        self.header = header
        where = f"qcow2 snapshot {snap.name!r}"
        temp_cap(limit).check(snap.vm_state_size, f"{where}: its VM state ({snap.vm_state_size} bytes)")
        if snap.l1_size * L1E_SIZE > QCOW_MAX_L1_SIZE:
            raise ContainerError(f"{where}: L1 table of {snap.l1_size} entries is larger than allowed")
        if snap.l1_table_offset % header.cluster_size:
            raise ContainerError(f"{where}: L1 table offset {snap.l1_table_offset:#x} is not cluster aligned")
        if self.first_l1 + self.l1_count > snap.l1_size:
            raise ContainerError(
                f"{where}: its L1 table ({snap.l1_size} entries) does not reach the VM state "
                f"(entries {self.first_l1}..{self.first_l1 + self.l1_count - 1})"
            )

    def read_l1(self, img: _Image) -> list[int]:
        """The L1 entries covering the VM state (the whole table must lie inside the file)."""
        table_bytes = self.snap.l1_size * L1E_SIZE
        if self.snap.l1_table_offset == 0 or self.snap.l1_table_offset + table_bytes > img.size:
            raise ContainerError(
                f"qcow2 snapshot {self.snap.name!r}: L1 table at {self.snap.l1_table_offset:#x} "
                f"({self.snap.l1_size} entries) runs past the end of the image ({img.size:#x} bytes)"
            )
        first = self.snap.l1_table_offset + self.first_l1 * L1E_SIZE
        raw = img.read(first, self.l1_count * L1E_SIZE, "snapshot L1 table")
        return list(struct.unpack(f">{self.l1_count}Q", raw))


class _Copier:
    """Copies guest clusters to the temporary file, merging contiguous host runs."""

    def __init__(self, img: _Image, header: QcowHeader, out: int) -> None:
        self.img = img
        self.header = header
        self.out = out
        self._run_host = 0
        self._run_dst = 0
        self._run_len = 0
        # Host clusters already used by the VM state (L2 tables, data, compressed data): a
        # cluster used twice would make a small image expand into a huge temporary file.
        self._used: dict[int, str] = {}

    def _claim(self, host: int, what: str) -> None:
        cluster = host - host % self.header.cluster_size
        other = self._used.get(cluster)
        if other is not None:
            raise ContainerError(
                f"qcow2 {what} at {host:#x} uses host cluster {cluster:#x}, already used as {other} "
                "of the same VM state (shared or looping clusters); refusing the image"
            )
        self._used[cluster] = what

    def copy(self, l1: list[int], total: int) -> None:
        per_l1 = self.header.bytes_per_l1
        for index, entry in enumerate(l1):
            dst = index * per_l1
            l2_offset = entry & L1E_OFFSET_MASK
            if l2_offset:
                self._copy_l2(l2_offset, dst, min(per_l1, total - dst))
        self._flush()
        try:  # sized last: a bad mapping is refused before the file takes its full (sparse) size
            os.ftruncate(self.out, total)
        except OSError as exc:
            raise ContainerError(f"cannot size the temporary file to {total} bytes: {exc.strerror}") from None

    def _copy_l2(self, l2_offset: int, dst: int, length: int) -> None:
        cluster = self.header.cluster_size
        if l2_offset % cluster:
            raise ContainerError(f"qcow2 L2 table offset {l2_offset:#x} is not cluster aligned")
        self._claim(l2_offset, "an L2 table")
        words = struct.unpack(f">{cluster // 8}Q", self.img.read(l2_offset, cluster, "L2 table"))
        step = self.header.l2_entry_size // 8
        for index in range(-(-length // cluster)):
            entry = words[index * step]
            bitmap = words[index * step + 1] if step == 2 else None
            pos = dst + index * cluster
            self._copy_cluster(entry, bitmap, pos, min(cluster, dst + length - pos))

    def _copy_cluster(self, entry: int, bitmap: int | None, dst: int, length: int) -> None:
        if entry & QCOW_OFLAG_COMPRESSED:
            self._copy_compressed(entry, dst, length)
            return
        host = entry & L2E_OFFSET_MASK
        if bitmap is None:
            if host and not entry & QCOW_OFLAG_ZERO:
                self._claim_data(host)
                self._copy_data(host, dst, length)
            return
        if bitmap & 0xFFFF_FFFF & ~(bitmap >> 32):
            self._claim_data(host)
        sub = self.header.cluster_size // QCOW_EXTL2_SUBCLUSTERS_PER_CLUSTER
        for index in range(-(-length // sub)):
            allocated = bitmap >> index & 1
            zero = bitmap >> (32 + index) & 1
            if allocated and not zero:
                self._copy_data(host, dst + index * sub, min(sub, length - index * sub), index * sub)

    def _claim_data(self, host: int) -> None:
        if host % self.header.cluster_size:
            raise ContainerError(f"qcow2 data cluster offset {host:#x} is not cluster aligned")
        if host >= self.img.size:
            raise ContainerError(f"qcow2 data cluster at {host:#x} lies past the image end")
        self._claim(host, "a data cluster")

    def _copy_data(self, host: int, dst: int, length: int, within: int = 0) -> None:
        src = host + within
        if self._run_len and self._run_host + self._run_len == src and self._run_dst + self._run_len == dst:
            self._run_len += length
            return
        self._flush()
        self._run_host, self._run_dst, self._run_len = src, dst, length

    def _flush(self) -> None:
        if self._run_len:
            available = max(0, min(self._run_len, self.img.size - self._run_host))
            copy_range(self.img.fd, self.img.base + self._run_host, self.out, self._run_dst, available)
            self._run_len = 0

    def _copy_compressed(self, entry: int, dst: int, length: int) -> None:
        bits = self.header.cluster_bits
        shift = 62 - (bits - 8)
        host = entry & ((1 << shift) - 1)
        sectors = ((entry >> shift) & ((1 << (bits - 8)) - 1)) + 1
        stored = sectors * QCOW2_COMPRESSED_SECTOR_SIZE - host % QCOW2_COMPRESSED_SECTOR_SIZE
        if host >= self.img.size:
            raise ContainerError(f"qcow2 compressed cluster at {host:#x} is past the end of the image")
        if host in self._used:
            raise ContainerError(
                f"qcow2 compressed cluster at {host:#x} is used twice by the same VM state; refusing it"
            )
        self._used[host] = "compressed data"
        data = pread_upto(self.img.fd, self.img.base + host, min(stored, self.img.size - host))
        plain = self._inflate(data, host)
        self._flush()
        write_all(self.out, plain[:length], dst)

    def _inflate(self, data: bytes, host: int) -> bytes:
        cluster = self.header.cluster_size
        try:
            if self.header.compression_type == QCOW2_COMPRESSION_TYPE_ZSTD:
                plain = _read_upto(zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)), cluster)
            else:
                plain = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data, cluster)
        except (zlib.error, zstandard.ZstdError, ValueError, MemoryError) as exc:
            raise ContainerError(f"qcow2 compressed cluster at {host:#x} is corrupt: {exc}") from None
        if len(plain) != cluster:
            raise ContainerError(
                f"qcow2 compressed cluster at {host:#x} decompresses to {len(plain)} bytes, not {cluster}"
            )
        return plain


def _read_upto(reader: Any, length: int) -> bytes:
    parts: list[bytes] = []
    while length > 0:
        chunk = reader.read(length)
        if not chunk:
            break
        parts.append(chunk)
        length -= len(chunk)
    return b"".join(parts)
