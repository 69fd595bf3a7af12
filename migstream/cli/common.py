"""What both command-line programs share: error reporting and output helpers."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from migstream.errors import MigstreamError, TruncatedError

#: Exit status when the stream ends early: the output holds everything read up to the cut.
EXIT_PARTIAL = 3


def one_line(text: str) -> str:
    return " ".join(text.split())


def run_guarded(prog: str, body: Callable[[], int], traceback: bool) -> int:
    """Run ``body``; turn any failure into one stderr line and a non-zero exit (unless ``traceback``)."""
    try:
        return body()
    except MigstreamError as exc:
        if traceback:
            raise
        sys.stderr.write(f"{prog}: error: {one_line(str(exc))}\n")
        return 1
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); nothing more to say.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep interpreter shutdown quiet
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    except MemoryError:
        if traceback:
            raise
        sys.stderr.write(f"{prog}: error: out of memory\n")
        return 1
    except OSError as exc:
        if traceback:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        sys.stderr.write(f"{prog}: error:{where} {exc.strerror or exc}\n")
        return 1
    except Exception as exc:  # noqa: BLE001 - the contract: never a traceback without --traceback
        if traceback:
            raise
        sys.stderr.write(
            f"{prog}: internal error: {type(exc).__name__}: {one_line(str(exc))} "
            f"(run with --traceback and report it)\n"
        )
        return 2


def partial_exit(prog: str, truncated: TruncatedError | None) -> int:
    """0, or (after one stderr line saying where the stream ends) the partial exit status."""
    if truncated is None:
        return 0
    where = f"{truncated.offset:#x}" if truncated.offset is not None else "its start"
    sys.stderr.write(
        f"{prog}: partial: the output holds everything read up to offset {where}, "
        f"where the stream ends early: {one_line(str(truncated))}\n"
    )
    return EXIT_PARTIAL


def print_json(data: Any, *, indent: int | None = 2) -> None:
    sys.stdout.write(json.dumps(data, indent=indent))
    sys.stdout.write("\n")
