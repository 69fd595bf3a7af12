"""Wire constants of the QEMU migration stream, each declared once, named as QEMU names them.

QEMU: migration/savevm.c, migration/ram.c, migration/multifd.h, migration/block.c,
migration/block-dirty-bitmap.c, hw/s390x/s390-stattrib.c, hw/vfio/migration.c.
"""

from __future__ import annotations

from enum import IntEnum

QEMU_VM_FILE_MAGIC = 0x5145564D  # "QEVM"
QEMU_VM_FILE_VERSION = 3
QEMU_VM_FILE_VERSION_COMPAT = 2


class RecordType(IntEnum):
    """The top-level record type byte (QEMU_VM_*)."""

    EOF = 0x00
    SECTION_START = 0x01
    SECTION_PART = 0x02
    SECTION_END = 0x03
    SECTION_FULL = 0x04
    SUBSECTION = 0x05
    VMDESCRIPTION = 0x06
    CONFIGURATION = 0x07
    COMMAND = 0x08
    SECTION_FOOTER = 0x7E


SECTION_TYPES = frozenset(
    {RecordType.SECTION_START, RecordType.SECTION_PART, RecordType.SECTION_END, RecordType.SECTION_FULL}
)
#: Section records whose header carries idstr, instance_id and version_id.
SECTION_HEADER_TYPES = frozenset({RecordType.SECTION_START, RecordType.SECTION_FULL})


class MigCmd(IntEnum):
    """QEMU_VM_COMMAND numbers (MIG_CMD_*), QEMU >= 3.1 numbering."""

    INVALID = 0
    OPEN_RETURN_PATH = 1
    PING = 2
    POSTCOPY_ADVISE = 3
    POSTCOPY_LISTEN = 4
    POSTCOPY_RUN = 5
    POSTCOPY_RAM_DISCARD = 6
    PACKAGED = 7
    ENABLE_COLO = 8
    POSTCOPY_RESUME = 9
    RECV_BITMAP = 10
    SWITCHOVER_START = 11


#: Allowed payload lengths per command (None: variable, checked by its decoder).
MIG_CMD_LENGTHS: dict[MigCmd, tuple[int, ...] | None] = {
    MigCmd.OPEN_RETURN_PATH: (0,),
    MigCmd.PING: (4,),
    MigCmd.POSTCOPY_ADVISE: (0, 16),
    MigCmd.POSTCOPY_LISTEN: (0,),
    MigCmd.POSTCOPY_RUN: (0,),
    MigCmd.POSTCOPY_RAM_DISCARD: None,
    MigCmd.PACKAGED: (4,),
    MigCmd.ENABLE_COLO: (0,),
    MigCmd.POSTCOPY_RESUME: (0,),
    MigCmd.RECV_BITMAP: None,
    MigCmd.SWITCHOVER_START: (0,),
}

#: Largest PACKAGED payload QEMU accepts (since 2.12).
MAX_VM_CMD_PACKAGED_SIZE = (1 << 32) - 1


class RamFlag(IntEnum):
    """RAM_SAVE_FLAG_* bits in the low bits of each RAM record word."""

    FULL = 0x001
    ZERO = 0x002
    MEM_SIZE = 0x004
    PAGE = 0x008
    EOS = 0x010
    CONTINUE = 0x020
    XBZRLE = 0x040
    HOOK = 0x080
    COMPRESS_PAGE = 0x100
    MULTIFD_FLUSH = 0x200


ENCODING_FLAG_XBZRLE = 0x01
MAPPED_RAM_HEADER_SIZE = 28
MAPPED_RAM_VERSION = 1

#: Block migration ("block" section) record flags (BLK_MIG_FLAG_*).
BLK_MIG_FLAG_DEVICE_BLOCK = 0x01
BLK_MIG_FLAG_EOS = 0x02
BLK_MIG_FLAG_PROGRESS = 0x04
BLK_MIG_FLAG_ZERO_BLOCK = 0x08
BLK_MIG_FLAGS_MASK = 0x1FF
BLK_MIG_BLOCK_SIZE = 1 << 20

#: Dirty bitmap section chunk flags (DIRTY_BITMAP_MIG_FLAG_*).
DIRTY_BITMAP_MIG_FLAG_EOS = 0x01
DIRTY_BITMAP_MIG_FLAG_ZEROES = 0x02
DIRTY_BITMAP_MIG_FLAG_BITMAP_NAME = 0x04
DIRTY_BITMAP_MIG_FLAG_DEVICE_NAME = 0x08
DIRTY_BITMAP_MIG_FLAG_START = 0x10
DIRTY_BITMAP_MIG_FLAG_COMPLETE = 0x20
DIRTY_BITMAP_MIG_FLAG_BITS = 0x40
DIRTY_BITMAP_MIG_EXTRA_FLAGS = 0x80

#: s390 storage attribute records (STATTR_FLAG_*).
STATTR_FLAG_EOS = 0x01
STATTR_FLAG_MORE = 0x02
STATTR_FLAG_ERROR = 0x04
STATTR_FLAG_DONE = 0x08

#: s390 storage keys blob (S390_SKEYS_SAVE_FLAG_*).
S390_SKEYS_SAVE_FLAG_EOS = 0x01
S390_SKEYS_SAVE_FLAG_SKEYS = 0x02
S390_SKEYS_SAVE_FLAG_ERROR = 0x04

#: pseries hash page table entry size.
HASH_PTE_SIZE_64 = 16
HTAB_NO_HPT = 0xFFFFFFFF

#: VFIO migration tags.
VFIO_MIG_FLAG_END_OF_STATE = 0xFFFFFFFFEF100001
VFIO_MIG_FLAG_DEV_CONFIG_STATE = 0xFFFFFFFFEF100002
VFIO_MIG_FLAG_DEV_SETUP_STATE = 0xFFFFFFFFEF100003
VFIO_MIG_FLAG_DEV_DATA_STATE = 0xFFFFFFFFEF100004
VFIO_MIG_FLAG_DEV_INIT_DATA_SENT = 0xFFFFFFFFEF100005
VFIO_MIG_FLAG_DEV_CONFIG_LOAD_READY = 0xFFFFFFFFEF100006

#: Multifd channel packets.
MULTIFD_MAGIC = 0x11223344
MULTIFD_VERSION = 1
MULTIFD_FLAG_SYNC = 0x1
MULTIFD_FLAG_COMPRESSION_MASK = 0x3E
MULTIFD_FLAG_DEVICE_STATE = 0x40
MULTIFD_INITIAL_PACKET_SIZE = 64
MULTIFD_PACKET_HEADER_SIZE = 320
MULTIFD_PACKET_BYTES = 512 * 1024  # pages per packet = this / page size

#: NULL slot of an array of pointers.
VMS_NULLPTR_MARKER = 0x30
