"""Commands (``QEMU_VM_COMMAND`` records): number, length, and the payload of each.

QEMU: migration/savevm.c (loadvm_process_command, the mig_cmd_args table).
"""

from __future__ import annotations

from typing import Any

from migstream.errors import StreamFormatError
from migstream.wire.constants import MIG_CMD_LENGTHS, MigCmd
from migstream.wire.reader import Reader, decode_name


def read_command(r: Reader, start: int) -> tuple[MigCmd, dict[str, Any]]:
    """The command whose type byte was at ``start``: its number and decoded payload (``r`` moves past it)."""
    r.context = "command"
    num = r.be16("a command number")
    length = r.be16("a command length")
    try:
        cmd = MigCmd(num)
    except ValueError:
        raise StreamFormatError(
            f"unknown command {num} (payload length {length})",
            offset=start,
            field="command",
            expected=f"1..{int(max(MigCmd))}",
            found=num,
        ) from None
    if cmd == MigCmd.INVALID:
        raise StreamFormatError("invalid command 0", offset=start, field="command", found=num)
    allowed = MIG_CMD_LENGTHS[cmd]
    if allowed is not None and length not in allowed:
        raise StreamFormatError(
            f"wrong length for command {cmd.name}",
            offset=start,
            field="length",
            expected=" or ".join(map(str, allowed)),
            found=length,
        )
    r.need(length, f"the payload of command {cmd.name}")
    body = Reader(r.buf, r.pos, r.pos + length)
    body.context = f"command {cmd.name}"
    details = command_payload(cmd, body, length)
    r.pos += length
    return cmd, details


def command_payload(cmd: MigCmd, r: Reader, length: int) -> dict[str, Any]:
    if cmd == MigCmd.PING:
        return {"value": r.be32("the PING value")}
    if cmd == MigCmd.POSTCOPY_ADVISE:
        if length == 0:
            return {}
        return {
            "ram_pagesize_summary": r.be64("the page size summary"),
            "target_page_size": r.be64("the target page size"),
        }
    if cmd == MigCmd.PACKAGED:
        return {"length": r.be32("the package length")}
    if cmd == MigCmd.RECV_BITMAP:
        n = r.u8("a block name length")
        if n + 1 != length:
            raise StreamFormatError(
                "RECV_BITMAP length does not match its block name",
                offset=r.pos - 5,
                field="length",
                expected=n + 1,
                found=length,
            )
        return {"block": decode_name(r.take(n))}
    if cmd == MigCmd.POSTCOPY_RAM_DISCARD:
        if length < 3:
            raise StreamFormatError(
                "POSTCOPY_RAM_DISCARD too short",
                offset=r.pos - 4,
                field="length",
                expected=">= 3",
                found=length,
            )
        version = r.u8("the discard version")
        if version != 0:
            raise StreamFormatError(
                "unknown POSTCOPY_RAM_DISCARD version", offset=r.pos - 1, expected=0, found=version
            )
        n = r.u8("a block name length")
        name = decode_name(r.take(n, "the block name"))
        zero = r.u8("the name terminator")
        if zero != 0:
            raise StreamFormatError(
                "POSTCOPY_RAM_DISCARD block name is not NUL-terminated",
                offset=r.pos - 1,
                expected=0,
                found=zero,
            )
        if r.remaining % 16:
            raise StreamFormatError(
                "POSTCOPY_RAM_DISCARD ranges are not whole (start, length) pairs",
                offset=r.pos,
                field="length",
                expected=f"3 + {n} + 16*k",
                found=length,
            )
        ranges = [(r.be64("a range start"), r.be64("a range length")) for _ in range(r.remaining // 16)]
        return {"block": name, "ranges": [[a, b] for a, b in ranges]}
    return {}
