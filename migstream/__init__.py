"""migstream: read QEMU migration and savevm streams.

>>> import migstream
>>> with migstream.open("vm.mig") as s:
...     print(s.machine, [b.name for b in s.ram_blocks])
"""

from migstream.api import Stream, load_description, open
from migstream.errors import (
    ContainerError,
    DescriptionError,
    LimitError,
    MigstreamError,
    StreamFormatError,
    TruncatedError,
    UnsupportedError,
    UsageError,
)

__version__ = "0.1.0"

__all__ = [
    "ContainerError",
    "DescriptionError",
    "LimitError",
    "MigstreamError",
    "Stream",
    "StreamFormatError",
    "TruncatedError",
    "UnsupportedError",
    "UsageError",
    "__version__",
    "load_description",
    "open",
]
