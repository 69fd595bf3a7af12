"""Comparing streams and descriptions: ``diff`` of two streams, ``check`` of a stream against a
target QEMU's ``-dump-vmstate``, ``check_desc`` of two dumps.

A layer above ``api``: it reads streams through :class:`migstream.api.Stream` only.
"""

from __future__ import annotations

from migstream.compare.check import check_file, check_stream
from migstream.compare.checkdesc import check_desc
from migstream.compare.diff import diff_streams
from migstream.compare.dump import VmstateDump, load_dump

__all__ = ["VmstateDump", "check_desc", "check_file", "check_stream", "diff_streams", "load_dump"]
