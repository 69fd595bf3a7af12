"""``migstream receive ADDRESS -o DIR``: be the target of a live migration and keep its channels."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from migstream.api import open as open_stream
from migstream.containers.receive import DEFAULT_TIMEOUT, Address, receive
from migstream.errors import UsageError

PROG = "migstream"


def cmd_receive(args: argparse.Namespace) -> int:
    if args.memory and os.path.lexists(args.memory) and not args.force:
        raise UsageError(f"{args.memory} exists (use --force to overwrite)")
    if args.keep and not args.memory:
        raise UsageError("--keep goes with --memory")
    created = not os.path.exists(args.output)

    def listening(address: Address) -> None:
        sys.stderr.write(f"{PROG}: listening on {address}\n")
        sys.stderr.flush()

    result = receive(args.address, args.output, force=args.force, timeout=args.timeout, listening=listening)
    files = [result.stream, *result.channels]
    total = result.stream_bytes + sum(result.channel_bytes)
    sys.stderr.write(
        f"{PROG}: received the stream and {len(result.channels)} multifd channel(s), "
        f"{total} bytes in {result.seconds:.1f} s\n"
    )
    if not args.memory:
        for path in files:
            sys.stdout.write(f"{path}\n")
        return 0
    return _memory(args, files, created)


def _memory(args: argparse.Namespace, files: list[Path], created: bool) -> int:
    from migstream.cli.common import partial_exit
    from migstream.outputs.memory import write_memory

    with open_stream(str(files[0]), channels=[str(p) for p in files[1:]]) as stream:
        _, notes = write_memory(stream, args.memory, force=args.force)
        truncated = stream.truncated
    for note in notes:
        sys.stderr.write(f"{PROG}: note: {note}\n")
    if args.keep:
        for path in files:
            sys.stdout.write(f"{path}\n")
    else:
        for path in files:
            path.unlink()
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(args.output)
    return partial_exit(PROG, truncated)


def add_receive_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sp = sub.add_parser("receive", help="be the target of a live migration: keep its stream and channels")
    sp.add_argument("address", metavar="ADDRESS", help="where to listen: tcp:HOST:PORT or unix:PATH")
    sp.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="stream.mig and multifd-N.bin go here"
    )
    sp.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up after this long without a byte or a connection (default {DEFAULT_TIMEOUT:g})",
    )
    sp.add_argument("--force", action="store_true", help="replace an earlier capture in DIR (and OUT)")
    sp.add_argument("--memory", metavar="OUT", help="then write the guest-physical image (raw) to OUT")
    sp.add_argument("--keep", action="store_true", help="with --memory: keep the captured files")
    sp.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sp.set_defaults(func=cmd_receive)
