"""``analyze-migration``: a drop-in for QEMU's ``scripts/analyze-migration.py``.

Same flags (``-f``, ``-d state|desc``, ``-m``, ``-x``) and, on every stream
QEMU's script reads, the same JSON; where the script fails, a correct answer or
one clear error line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from migstream.api import open as open_stream
from migstream.cli.common import run_guarded

PROG = "analyze-migration"


def _encode(data: object) -> str:
    return json.dumps(data, indent=4, separators=(",", ": "))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Analyze a QEMU migration stream (compatible with QEMU's analyze-migration.py).",
    )
    p.add_argument("-f", "--file", required=True, help="migration stream to read (- for standard input)")
    p.add_argument("-m", "--memory", action="store_true", help="dump RAM contents as well")
    p.add_argument("-d", "--dump", default="state", help='what to dump ("state" or "desc")')
    p.add_argument("-x", "--extract", action="store_true", help="extract contents into individual files")
    p.add_argument("--traceback", action="store_true", help="show the full Python traceback on errors")
    return p


def _run(args: argparse.Namespace) -> int:
    from migstream.outputs.analyze_migration import render_desc, render_state

    if not (args.extract or args.dump in ("state", "desc")):
        sys.stderr.write(f"{PROG}: error: please specify either -x, -d state or -d desc\n")
        return 2
    with open_stream(args.file) as stream:
        if args.extract:
            from migstream.outputs.extract import extract_compat

            for line in extract_compat(stream, "."):
                sys.stdout.write(line + "\n")
        elif args.dump == "state":
            sys.stdout.write(_encode(render_state(stream, memory=args.memory)) + "\n")
        else:
            sys.stdout.write(_encode(render_desc(stream)) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(PROG, lambda: _run(args), args.traceback)


if __name__ == "__main__":
    sys.exit(main())
