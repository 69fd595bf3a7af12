"""``migstream diff``, ``migstream check`` and ``migstream check-desc``.

All three exit 0 (equal / loads / compatible), 1 (different / fails / breaking) or 2 (error,
including usage errors), like ``diff``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from migstream.api import open as open_stream
from migstream.cli.common import one_line, print_json, run_guarded
from migstream.errors import UsageError

PROG = "migstream"
EXIT_ERROR = 2


def _guarded(args: argparse.Namespace, body: Callable[[], int]) -> int:
    """``run_guarded`` with the error exit of these commands (2), kept apart from 1 (a difference)."""
    result: list[int] = []

    def run() -> int:
        result.append(body())
        return 0

    status = run_guarded(PROG, run, bool(getattr(args, "traceback", False)))
    if result and status == 0:
        return result[0]
    return 130 if status == 130 else EXIT_ERROR


# -- diff ------------------------------------------------------------------------------------------


def cmd_diff(args: argparse.Namespace) -> int:
    return _guarded(args, lambda: _diff(args))


def _diff(args: argparse.Namespace) -> int:
    from migstream.compare.diff import diff_streams

    if args.devices_only and args.memory_only:
        raise UsageError("--devices-only and --memory-only exclude each other")
    desc_a = args.desc_a or args.desc
    desc_b = args.desc_b or args.desc
    with open_stream(args.a, desc=desc_a) as a, open_stream(args.b, desc=desc_b) as b:
        for name, s in (("A", a), ("B", b)):
            if s.truncated is not None:
                sys.stderr.write(f"{PROG}: note: {name} ends early: {one_line(str(s.truncated))}\n")
        result = diff_streams(
            a, b, ignore=args.ignore, devices=not args.memory_only, memory=not args.devices_only
        )
    if args.json:
        print_json(result.to_json())
    else:
        sys.stdout.write(_diff_text(result.to_json(), args.a, args.b))
    return 0 if result.equal else 1


def _short(v: Any) -> str:
    text = str(v)
    return text if len(text) <= 48 else text[:45] + "..."


def _diff_text(doc: dict[str, Any], name_a: str, name_b: str) -> str:
    out = [f"A: {name_a}", f"B: {name_b}"]
    for side in ("only_a", "only_b"):
        for sec in doc["sections"][side]:
            out.append(f"section only in {side[-1].upper()}: {sec}")
    for dev in doc["devices"]:
        out.append(
            f"device {dev['section']} (instance {dev['instance']}): {len(dev['fields'])} field(s) differ"
        )
        for f in dev["fields"][:50]:
            out.append(f"  {f['path']}: {_short(f['a'])} -> {_short(f['b'])}")
        if len(dev["fields"]) > 50:
            out.append(f"  ... {len(dev['fields']) - 50} more (--json lists all)")
    for r in doc["ram"]:
        if r["pages_differ"] == 0 and r["size_a"] == r["size_b"]:
            continue
        sizes = "" if r["size_a"] == r["size_b"] else f" (size {r['size_a']} vs {r['size_b']})"
        out.append(f"RAM {r['block']}: {r['pages_differ']} page(s) differ{sizes}")
        for lo, hi in r["ranges"][:20]:
            out.append(f"  [{lo:#x}, {hi:#x})")
        if len(r["ranges"]) > 20:
            out.append(f"  ... {len(r['ranges']) - 20} more ranges")
    same = sum(1 for r in doc["ram"] if r["pages_differ"] == 0 and r["size_a"] == r["size_b"])
    if doc["ram"]:
        out.append(f"RAM blocks equal: {same} of {len(doc['ram'])}")
    for note in doc["notes"]:
        out.append(f"note: {note}")
    out.append("equal" if doc["equal"] else "different")
    return "\n".join(out) + "\n"


# -- check -----------------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    return _guarded(args, lambda: _check(args))


def _check(args: argparse.Namespace) -> int:
    from migstream.compare.check import LIMITS, check_file
    from migstream.compare.dump import load_dump

    dump = load_dump(args.against)
    result = check_file(args.input, dump, desc=args.desc)
    if args.json:
        print_json(result.to_json())
    else:
        out = [f"target machine: {dump.machine}"]
        for f in result.findings:
            where = f" at {f.offset:#x}" if f.offset is not None else ""
            field = f" {f.field}" if f.field else ""
            out.append(f"{f.severity}: {f.section} (instance {f.instance}){where}{field}: {f.message}")
        if result.unchecked:
            out.append(f"not in the dump (not checked): {', '.join(result.unchecked)}")
        out.append("what a dump cannot reveal:")
        out.extend(f"  - {text}" for text in LIMITS)
        out.append(f"verdict: {'predicted to load' if result.verdict == 'loads' else 'predicted to FAIL'}")
        sys.stdout.write("\n".join(out) + "\n")
    return 0 if result.verdict == "loads" else 1


# -- check-desc ------------------------------------------------------------------------------------


def cmd_check_desc(args: argparse.Namespace) -> int:
    return _guarded(args, lambda: _check_desc(args))


def _check_desc(args: argparse.Namespace) -> int:
    from migstream.compare.checkdesc import check_desc
    from migstream.compare.dump import load_dump

    result = check_desc(load_dump(args.old), load_dump(args.new))
    if args.json:
        print_json(result.to_json())
    else:
        doc = result.to_json()
        out = [f"machine: {doc['machine']['old']} -> {doc['machine']['new']}"]
        out.extend(f"added: {n}" for n in doc["sections"]["added"])
        out.extend(f"removed: {n}" for n in doc["sections"]["removed"])
        for ch in doc["changes"]:
            parts = [f"{k} {v}" for k, v in ch.items() if k != "section"]
            out.append(f"changed: {ch['section']}: {'; '.join(parts) or 'layout'}")
        for f in result.findings:
            field = f" {f.field}" if f.field else ""
            out.append(f"{f.severity}: {f.section}{field}: {f.message}")
        out.append(f"verdict: {doc['verdict']}")
        sys.stdout.write("\n".join(out) + "\n")
    return 1 if result.breaking else 0


# -- registration ----------------------------------------------------------------------------------


def add_compare_commands(sub: Any) -> None:
    """Register ``diff``, ``check`` and ``check-desc`` on the ``migstream`` subparsers."""

    def hidden_traceback(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    sp = sub.add_parser("diff", help="what differs between two streams (exit 0 equal, 1 different, 2 error)")
    sp.add_argument("a", metavar="A", help="first stream (any container)")
    sp.add_argument("b", metavar="B", help="second stream (any container)")
    sp.add_argument("--json", action="store_true", help="one JSON object (see the CLI contract)")
    sp.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="PATH",
        help="skip fields, sections or RAM blocks matching this glob (repeatable; e.g. 'mc146818rtc.*')",
    )
    sp.add_argument("--devices-only", action="store_true", help="compare device state only")
    sp.add_argument("--memory-only", action="store_true", help="compare RAM only")
    sp.add_argument("--desc", metavar="FILE", help="VM description for both streams when they carry none")
    sp.add_argument("--desc-a", metavar="FILE", help="VM description for A")
    sp.add_argument("--desc-b", metavar="FILE", help="VM description for B")
    hidden_traceback(sp)
    sp.set_defaults(func=cmd_diff)

    sp = sub.add_parser("check", help="predict whether a target QEMU loads a stream, from its -dump-vmstate")
    sp.add_argument("input", metavar="STREAM", help="the stream (any container)")
    sp.add_argument(
        "--against",
        required=True,
        metavar="DUMP",
        help="the target's -dump-vmstate JSON (plain or compressed)",
    )
    sp.add_argument("--desc", metavar="FILE", help="VM description for a stream that has none")
    sp.add_argument("--json", action="store_true", help="one JSON object (see the CLI contract)")
    hidden_traceback(sp)
    sp.set_defaults(func=cmd_check)

    sp = sub.add_parser("check-desc", help="compare two -dump-vmstate files (old QEMU, new QEMU)")
    sp.add_argument("old", metavar="OLD.json", help="the writer's dump (plain or compressed)")
    sp.add_argument("new", metavar="NEW.json", help="the reader's dump (plain or compressed)")
    sp.add_argument("--json", action="store_true", help="one JSON object")
    hidden_traceback(sp)
    sp.set_defaults(func=cmd_check_desc)
