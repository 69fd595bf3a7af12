"""The ``migstream`` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from migstream import __version__  # noqa: F401
from migstream.api import Stream
from migstream.api import open as open_stream
from migstream.cli.common import partial_exit, print_json, run_guarded
from migstream.cli.compare import add_compare_commands
from migstream.cli.progress import Progress
from migstream.cli.receive import add_receive_parser
from migstream.errors import UsageError

PROG = "migstream"


def _parse_map(values: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in values:
        name, sep, addr = item.rpartition("=")
        if not sep or not name:
            raise UsageError(f"--map takes BLOCK=GPA, got {item!r}")
        try:
            out[name] = int(addr, 0)
        except ValueError:
            raise UsageError(f"--map: {addr!r} is not an address") from None
        if not 0 <= out[name] < 1 << 64:
            raise UsageError(f"--map {name}: the address {addr} does not fit 64 bits")
    return out


def _open(
    args: argparse.Namespace,
    inputs: Sequence[str] | None = None,
    *,
    pages: bool = True,
    output: str | None = None,
) -> Stream:
    """The stream named on the command line.

    ``pages=False``: no guest memory is read (a pipe is read once).  ``output``:
    where guest memory goes; a pipe or compressed input is read once and its
    pages are staged beside it (on that filesystem, not in TMPDIR).
    """
    paths = list(inputs if inputs is not None else [args.input])
    stage_dir = None
    if output is not None:
        stage_dir = os.path.dirname(os.path.abspath(output.rstrip("/") or output)) or "."
    return open_stream(
        paths[0],
        desc=getattr(args, "desc", None),
        channels=paths[1:],
        snapshot=getattr(args, "snapshot", None),
        pages=pages,
        stage_dir=stage_dir,
    )


def _data_bytes(stream: Stream) -> int:
    pm = stream.pagemap()
    return sum(pm.data_bytes(b.index) for b in stream.ram_blocks)


def _staged_note(stream: Stream) -> None:
    if stream.stage is not None:
        sys.stderr.write(
            f"{PROG}: note: the input was read once; its pages were written as they came into an "
            f"unlinked file beside the output ({_data_bytes(stream)} bytes), "
            "then copied into place\n"
        )


def cmd_info(args: argparse.Namespace) -> int:
    from migstream.outputs.info import info_json, info_text

    with _open(args, args.inputs, pages=False) as stream:
        if args.json:
            print_json(info_json(stream), indent=None if args.compact else 2)
        else:
            sys.stdout.write(info_text(stream, all_records=args.all))
        return partial_exit(PROG, stream.truncated)


def cmd_state(args: argparse.Namespace) -> int:
    from migstream.outputs.state_json import flat_lines, state_document

    with _open(args, pages=False) as stream:
        stream.require_state()
        if args.flat:
            for line in flat_lines(stream, device=args.device):
                sys.stdout.write(line + "\n")
            return partial_exit(PROG, stream.truncated)
        print_json(
            state_document(stream, device=args.device, offsets=args.offsets),
            indent=None if args.compact else 2,
        )
        return partial_exit(PROG, stream.truncated)


def cmd_desc(args: argparse.Namespace) -> int:
    with _open(args, pages=False) as stream:
        if not stream.has_own_description:
            raise UsageError("the stream has no VM description (suppress-vmdesc, postcopy, or QEMU < 2.3)")
        print_json(stream.vmdesc, indent=None if args.compact else 2)
    return 0


def cmd_cpus(args: argparse.Namespace) -> int:
    with _open(args, pages=False) as stream:
        cpus = stream.cpus()
        if args.json:
            print_json([c.to_json() for c in cpus])
        else:
            from migstream.arch import format_cpus

            sys.stdout.write(format_cpus(cpus))
        return partial_exit(PROG, stream.truncated)


def cmd_memory(args: argparse.Namespace) -> int:
    from migstream.outputs.memory import data_bytes, write_memory

    with _open(args, args.inputs, pages=bool(args.output), output=args.output) as stream:
        progress = None
        if args.output and sys.stderr.isatty():
            mmap_ = stream.memory_map(_parse_map(args.map))
            progress = Progress("memory", data_bytes(stream.pagemap(), mmap_.placements))
        try:
            report, notes = write_memory(
                stream,
                args.output,
                fmt=args.format,
                overrides=_parse_map(args.map),
                print_map=args.print_map,
                force=args.force,
                progress=progress,
            )
        finally:
            if progress is not None:
                progress.close()
        for note in notes:
            sys.stderr.write(f"{PROG}: note: {note}\n")
        _staged_note(stream)
        if report:
            sys.stdout.write(report)
        return partial_exit(PROG, stream.truncated if args.output else None)


def cmd_extract(args: argparse.Namespace) -> int:
    from migstream.outputs.extract import extract

    with _open(args, args.inputs, output=args.output) as stream:
        progress = None
        if sys.stderr.isatty():
            progress = Progress("extract", _data_bytes(stream))
        try:
            for line in extract(stream, args.output, force=args.force, progress=progress):
                sys.stdout.write(line + "\n")
        finally:
            if progress is not None:
                progress.close()
        _staged_note(stream)
        return partial_exit(PROG, stream.truncated)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Read QEMU migration and savevm streams.")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    p.add_argument("--traceback", action="store_true", help="show the full Python traceback on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def common(sp: argparse.ArgumentParser, multi: bool = False) -> None:
        if multi:
            sp.add_argument(
                "inputs",
                nargs="+",
                metavar="INPUT",
                help="the stream (path or - for standard input), then any multifd channel captures",
            )
        else:
            sp.add_argument("input", metavar="INPUT", help="the stream (path, or - for standard input)")
        sp.add_argument(
            "--snapshot", help="qcow2 images: the internal snapshot to read (name or id; default last)"
        )
        # SUPPRESS as the default: `migstream --traceback CMD` must not be reset by the subcommand.
        sp.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    sp = sub.add_parser("info", help="records, sections, commands, RAM blocks, version hints")
    common(sp, multi=True)
    sp.add_argument("--json", action="store_true", help="one JSON object (see the CLI contract)")
    sp.add_argument("--compact", action="store_true", help="JSON on one line")
    sp.add_argument("--all", action="store_true", help="list every record (text form)")
    sp.set_defaults(func=cmd_info)

    sp = sub.add_parser("state", help="decoded device state as typed JSON")
    common(sp)
    sp.add_argument("--desc", metavar="FILE", help="VM description (JSON) for a stream that has none")
    sp.add_argument("--json", action="store_true", help="JSON output (the default; --flat gives lines)")
    sp.add_argument("--offsets", action="store_true", help="every value as {value, type, offset, size}")
    sp.add_argument("--flat", action="store_true", help="one line per value: path, type, offset, value")
    sp.add_argument("--device", metavar="IDSTR", help="only the sections with this idstr")
    sp.add_argument("--compact", action="store_true", help="JSON on one line")
    sp.set_defaults(func=cmd_state)

    sp = sub.add_parser("desc", help="the stream's JSON VM description")
    common(sp)
    sp.add_argument("--compact", action="store_true", help="JSON on one line")
    sp.set_defaults(func=cmd_desc)

    sp = sub.add_parser("cpus", help="vCPU registers")
    common(sp)
    sp.add_argument("--desc", metavar="FILE", help="VM description (JSON) for a stream that has none")
    sp.add_argument("--json", action="store_true", help="JSON list, one object per vCPU")
    sp.set_defaults(func=cmd_cpus)

    sp = sub.add_parser("memory", help="guest-physical memory image (raw or ELF core)")
    common(sp, multi=True)
    sp.add_argument("-o", "--output", help="output file")
    sp.add_argument("--format", choices=("raw", "elf"), default="raw")
    sp.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="BLOCK=GPA",
        help="place a RAM block at a guest-physical address (repeatable)",
    )
    sp.add_argument("--print-map", action="store_true", help="show the block -> guest-physical map")
    sp.add_argument("--desc", metavar="FILE", help="VM description (JSON), for CPU notes in ELF output")
    sp.add_argument("--force", action="store_true", help="overwrite OUT")
    sp.set_defaults(func=cmd_memory)

    sp = sub.add_parser("extract", help="desc.json, state.json and one sparse file per RAM block")
    common(sp, multi=True)
    sp.add_argument("-o", "--output", required=True, metavar="DIR")
    sp.add_argument("--desc", metavar="FILE", help="VM description (JSON) for a stream that has none")
    sp.add_argument("--force", action="store_true", help="overwrite files in DIR")
    sp.set_defaults(func=cmd_extract)
    add_compare_commands(sub)
    add_receive_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    return run_guarded(PROG, lambda: int(args.func(args)), args.traceback)


if __name__ == "__main__":
    sys.exit(main())
