from array import array

from typing_extensions import Buffer

def scan(
    buf: memoryview | bytes,
    pos: int,
    end: int,
    page_size: int,
    sizes: array[int],
    by_name: dict[str, int],
    current_block: int,
    /,
) -> tuple[int, int, bytes, int, int, int, int, int]: ...

def page_totals(
    block: array[int], kind: array[int], count: array[int], nblocks: int, /
) -> list[tuple[int, int, int]] | None: ...

def write_pages(
    buf: memoryview | bytes,
    fd: int,
    dst: Buffer,
    src: Buffer,
    stride: Buffer,
    count: Buffer,
    page_size: int,
    /,
) -> int: ...
