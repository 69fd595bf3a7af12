"""Multifd channel captures: packets whose headers list the block offsets of their pages.

QEMU: migration/multifd.c (multifd_send_fill_packet, multifd_recv_unfill_packet).

Each channel starts with a 64-byte initial packet, then packets of a fixed-size
header (320 bytes + 8 bytes per page slot) followed by the page bytes
(uncompressed multifd only).  Pages are added to the stream's run table with
the channel number, ordered by the packets' global sequence numbers.
"""

from __future__ import annotations

import os
import tempfile
import zlib
from collections.abc import Sequence

import numpy as np

from migstream.containers.source import Source
from migstream.errors import StreamFormatError, UnsupportedError
from migstream.ram.model import PageKind, RamIndex
from migstream.wire import constants as c
from migstream.wire.reader import Reader, decode_name

#: packet_num is a uint64 counter from 0; pages are ordered by it as a signed 64-bit value.
MAX_PACKET_NUM = (1 << 63) - 1


def _packets(
    channels: list[Source], channel: int, ps: int
) -> list[tuple[int, int, str, np.ndarray, np.ndarray, int]]:
    """(packet_num, channel, block, normal offsets, zero offsets, payload offset) per data packet.

    A compressed channel is replaced in ``channels`` by its inflated copy.
    """
    src = channels[channel - 1]
    slots = c.MULTIFD_PACKET_BYTES // ps
    header = c.MULTIFD_PACKET_HEADER_SIZE + 8 * slots
    r = Reader(src.buffer)
    r.context = f"multifd channel {channel} ({src.name})"
    magic = r.be32("the multifd magic")
    if magic != c.MULTIFD_MAGIC:
        raise StreamFormatError(
            "not a multifd channel capture",
            offset=0,
            section=r.context,
            expected=f"{c.MULTIFD_MAGIC:#x}",
            found=f"{magic:#x}",
        )
    r.pos = c.MULTIFD_INITIAL_PACKET_SIZE
    r.need(0, "the initial packet")
    out = []
    inflater: _Inflater | None = None
    while r.remaining:
        start = r.pos
        r.need(c.MULTIFD_PACKET_HEADER_SIZE, "a multifd packet header")
        magic = r.be32("the packet magic")
        version = r.be32("the packet version")
        flags = r.be32("the packet flags")
        if magic != c.MULTIFD_MAGIC or version != c.MULTIFD_VERSION:
            raise StreamFormatError(
                "bad multifd packet header",
                offset=start,
                section=r.context,
                expected=f"{c.MULTIFD_MAGIC:#x} v{c.MULTIFD_VERSION}",
                found=f"{magic:#x} v{version}",
            )
        if flags & c.MULTIFD_FLAG_DEVICE_STATE:
            raise UnsupportedError(
                "multifd device-state packets are not read yet", offset=start, section=r.context
            )
        method = (flags & c.MULTIFD_FLAG_COMPRESSION_MASK) >> 1
        r.be32("pages_alloc")
        normal = r.be32("normal_pages")
        next_size = r.be32("next_packet_size")
        num = r.be64("packet_num")
        if num > MAX_PACKET_NUM:
            raise StreamFormatError(
                "multifd packet number out of range",
                offset=start + 24,
                section=r.context,
                expected=f"<= {MAX_PACKET_NUM:#x}",
                found=num,
            )
        zero = r.be32("zero_pages")
        r.pos = start + 64
        block = decode_name(bytes(r.take(256, "the block name")).split(b"\0", 1)[0])
        if normal + zero > slots:
            raise StreamFormatError(
                "multifd packet lists more pages than it has slots",
                offset=start,
                section=r.context,
                expected=f"<= {slots}",
                found=normal + zero,
            )
        r.need(header - c.MULTIFD_PACKET_HEADER_SIZE, "the packet's page offsets")
        offs = np.frombuffer(src.buffer, dtype=">u8", count=slots, offset=r.pos)
        r.pos = start + header
        if method and inflater is None:
            inflater = _Inflater(method, f"{src.name} (inflated)", start, r.context)
        elif method and inflater is not None and inflater.method != method:
            raise StreamFormatError(
                "multifd packets of one channel use different compression",
                offset=start,
                section=r.context,
                expected=inflater.method,
                found=method,
            )
        if method:
            # Compressed payload: one continuous stream per channel; this packet's part
            # inflates to exactly its pages.
            assert inflater is not None
            r.need(next_size, "the packet's compressed pages")
            payload = inflater.feed(r.buf[r.pos : r.pos + next_size], normal * ps, start)
            r.pos += next_size
        else:
            # Uncompressed payload: exactly the listed pages.  (Older sources leave a
            # stale size in packets that carry no page.)
            if normal and next_size != normal * ps:
                raise StreamFormatError(
                    "multifd payload size does not match its page count",
                    offset=start,
                    section=r.context,
                    expected=normal * ps,
                    found=next_size,
                )
            r.need(normal * ps, "the packet's pages")
            payload = r.pos
            r.pos += normal * ps
        if normal or zero:
            pages = offs[:normal].astype(np.uint64)
            zeros = offs[normal : normal + zero].astype(np.uint64)
            out.append((num, channel, block, pages, zeros, payload))
    if inflater is not None:
        # From now on this channel's pages are read from the inflated copy.
        channels[channel - 1] = inflater.finish()
        src.close()
    return out


#: Compression methods of multifd packets (flag bits 1-5, shifted down).
MULTIFD_COMPRESSION_NAMES = {1: "zlib", 2: "zstd", 4: "qpl", 8: "uadk", 16: "qatzip"}
_FEED = 4096  # compressed bytes fed at a time, so that no packet can inflate far beyond its pages


class _Inflater:
    """Inflates one channel's continuous zlib/zstd stream into an unlinked temporary file."""

    def __init__(self, method: int, name: str, offset: int, context: str | None) -> None:
        self.method = method
        self.name = name
        self.context = context
        kind = MULTIFD_COMPRESSION_NAMES.get(method, f"method {method}")
        self._errors: tuple[type[Exception], ...] = (zlib.error,)
        if method == 1:
            self._zlib = zlib.decompressobj()
        elif method == 2:
            import zstandard

            self._zstd = zstandard.ZstdDecompressor().decompressobj()
            self._errors = (zstandard.ZstdError,)
        else:
            raise UnsupportedError(f"multifd {kind} compression is not read", offset=offset, section=context)
        self.kind = kind
        fd, path = tempfile.mkstemp(prefix="migstream-multifd-")
        os.unlink(path)
        self.fd = fd
        self.size = 0

    def _inflate(self, data: bytes, room: int) -> bytes:
        if self.method == 1:
            out = self._zlib.decompress(data, room + 1)
            if self._zlib.unconsumed_tail:
                return out + b"\0"  # more than the room: reported by the caller
            return out
        return bytes(self._zstd.decompress(data))

    def feed(self, data: memoryview, expected: int, offset: int) -> int:
        """Inflate one packet's payload; returns where its pages start in the inflated copy."""
        start = self.size
        produced = bytearray()
        try:
            for pos in range(0, len(data), _FEED):
                produced += self._inflate(bytes(data[pos : pos + _FEED]), expected - len(produced))
                if len(produced) > expected:
                    break
        except self._errors as exc:
            raise StreamFormatError(
                f"multifd {self.kind} data does not inflate: {exc}", offset=offset, section=self.context
            ) from None
        if len(produced) != expected:
            raise StreamFormatError(
                f"multifd {self.kind} packet inflates to the wrong size",
                offset=offset,
                section=self.context,
                expected=expected,
                found=len(produced),
            )
        view = memoryview(produced)
        while view:
            n = os.pwrite(self.fd, view, self.size)
            view = view[n:]
            self.size += n
        return start

    def finish(self) -> Source:
        return Source(self.name, self.fd, 0, self.size, container=f"multifd-{self.kind}")


def index_channels(ram: RamIndex, channels: Sequence[Source]) -> tuple[Source, ...]:
    """Add the pages of every multifd channel capture to ``ram``'s run table.

    Returns the channels to read pages from (compressed ones replaced by their inflated copies).
    """
    by_name = {b.name: b.index for b in ram.blocks}
    ps = ram.page_size
    packets = []
    sources = list(channels)
    for ch in range(1, len(sources) + 1):
        packets.extend(_packets(sources, ch, ps))
    packets.sort(key=lambda p: p[0])
    runs = ram.runs
    for num, ch, block, normal, zero, payload in packets:
        bi = by_name.get(block)
        if bi is None:
            raise StreamFormatError(
                "multifd packet names a RAM block that is not in the block list",
                section=f"multifd channel {ch}",
                found=repr(block),
            )
        size = ram.blocks[bi].size
        for offsets, kind in ((normal, PageKind.MULTIFD), (zero, PageKind.MULTIFD_ZERO)):
            if not len(offsets):
                continue
            # Unsigned: an offset of 2**63 or more is out of range, not negative.
            if (offsets % ps).any() or (offsets >= size).any():
                raise StreamFormatError(
                    "multifd page offset outside its block or not page aligned",
                    section=f"multifd channel {ch}",
                    field=block,
                )
            offsets = offsets.astype(np.int64)
            breaks = np.flatnonzero(np.diff(offsets) != ps) + 1
            bounds = [0, *breaks.tolist(), len(offsets)]
            for a, b in zip(bounds[:-1], bounds[1:]):
                data = payload + a * ps if kind == PageKind.MULTIFD else 0
                runs.add(bi, int(offsets[a]), b - a, kind, data, ps, 0, num, ch)
    return tuple(sources)
