"""VFIO device state (``vfio``): config, setup and data chunks between be64 markers.

QEMU: hw/vfio/migration.c (vfio_load_state).
"""

from __future__ import annotations

from migstream.errors import StreamFormatError
from migstream.sections.summary import Summary
from migstream.wire import constants as c
from migstream.wire.reader import Reader

_VFIO_NAMES = {
    c.VFIO_MIG_FLAG_END_OF_STATE: "END_OF_STATE",
    c.VFIO_MIG_FLAG_DEV_CONFIG_STATE: "DEV_CONFIG_STATE",
    c.VFIO_MIG_FLAG_DEV_SETUP_STATE: "DEV_SETUP_STATE",
    c.VFIO_MIG_FLAG_DEV_DATA_STATE: "DEV_DATA_STATE",
    c.VFIO_MIG_FLAG_DEV_INIT_DATA_SENT: "DEV_INIT_DATA_SENT",
    c.VFIO_MIG_FLAG_DEV_CONFIG_LOAD_READY: "DEV_CONFIG_LOAD_READY",
}
#: Largest VFIO data chunk accepted.
MAX_VFIO_CHUNK = 1 << 30


MAX_VFIO_CHUNK = 1 << 30


def decode_vfio(r: Reader, kind: str) -> Summary:
    """VFIO iterative data: tagged chunks up to END_OF_STATE / INIT_DATA_SENT."""
    s: Summary = {"data_bytes": 0}
    while True:
        start = r.pos
        tag = r.be64("a VFIO tag")
        if tag in (
            c.VFIO_MIG_FLAG_END_OF_STATE,
            c.VFIO_MIG_FLAG_DEV_INIT_DATA_SENT,
            c.VFIO_MIG_FLAG_DEV_CONFIG_LOAD_READY,
        ):
            s["end"] = _VFIO_NAMES[tag]
            return s
        if tag == c.VFIO_MIG_FLAG_DEV_SETUP_STATE:
            continue
        if tag == c.VFIO_MIG_FLAG_DEV_DATA_STATE:
            n = r.be64("a VFIO data length")
            r.bounded_length(n, MAX_VFIO_CHUNK, "VFIO data")
            r.skip(n, "VFIO data")
            s["data_bytes"] += n
            continue
        raise StreamFormatError("unknown VFIO tag", offset=start, section=r.context, found=f"{tag:#x}")
