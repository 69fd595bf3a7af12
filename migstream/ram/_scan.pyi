from array import array

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
