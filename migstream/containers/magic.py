"""Content sniffing: which container do the first bytes announce?

Only the content counts, never the file name.  :func:`sniff` returns one of
the ``KIND_*`` names or ``None``.
"""

from __future__ import annotations

import re

QEMU_VM_FILE_MAGIC = b"QEVM"  # be32 0x5145564D
QEMU_SAVE_MAGIC = b"LibvirtQemudSave"
QEMU_SAVE_PARTIAL = b"LibvirtQemudPart"
QCOW_MAGIC = b"QFI\xfb"
XZ_MAGIC = b"\xfd7zXZ\x00"
GZIP_MAGIC = b"\x1f\x8b"
BZIP2_MAGIC = re.compile(rb"BZh[1-9]")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_SKIPPABLE = re.compile(rb"[\x50-\x5f]\x2a\x4d\x18", re.DOTALL)
LZOP_MAGIC = b"\x89LZO\x00\r\n\x1a\n"

SNIFF_BYTES = 16
"""Bytes needed by :func:`sniff` (the longest magic, libvirt's)."""

KIND_RAW = "raw"
KIND_XZ = "xz"
KIND_GZIP = "gzip"
KIND_BZIP2 = "bzip2"
KIND_ZSTD = "zstd"
KIND_LZOP = "lzop"
KIND_LIBVIRT = "libvirt-save"
KIND_LIBVIRT_PARTIAL = "libvirt-partial"
KIND_QCOW2 = "qcow2-snapshot"

COMPRESSIONS = (KIND_XZ, KIND_GZIP, KIND_BZIP2, KIND_ZSTD, KIND_LZOP)


def sniff(head: bytes) -> str | None:
    """The container kind whose magic starts ``head``, or ``None``."""
    if head.startswith(QEMU_VM_FILE_MAGIC):
        return KIND_RAW
    if head.startswith(QEMU_SAVE_MAGIC):
        return KIND_LIBVIRT
    if head.startswith(QEMU_SAVE_PARTIAL):
        return KIND_LIBVIRT_PARTIAL
    if head.startswith(QCOW_MAGIC):
        return KIND_QCOW2
    if head.startswith(XZ_MAGIC):
        return KIND_XZ
    if head.startswith(GZIP_MAGIC):
        return KIND_GZIP
    if BZIP2_MAGIC.match(head):
        return KIND_BZIP2
    if head.startswith(ZSTD_MAGIC) or ZSTD_SKIPPABLE.match(head):
        return KIND_ZSTD
    if head.startswith(LZOP_MAGIC):
        return KIND_LZOP
    return None


def show_magic(head: bytes) -> str:
    """The first four bytes as ``'xx xx xx xx'`` for error messages."""
    return head[:4].hex(" ")
