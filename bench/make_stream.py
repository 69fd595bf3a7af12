#!/usr/bin/env python3
"""Build (once, cached under bench/out/) a large migration stream with the installed QEMU.

Full: a 4 GiB ``pc`` guest (3 GiB low RAM + 1 GiB at GPA 4 GiB), paused at reset, with 1 GiB
of ``ctr`` (incompressible) data in 4 x 256 MiB blobs placed by ``loader`` devices, two of them
above 4 GiB, migrated with ``exec:cat > FILE``.  ``--quick``: 512 MiB guest, 2 x 64 MiB.

``--synthetic LAYOUT`` writes a stream with the test builder instead (no QEMU), in the page
layouts that decide how fast the RAM records are scanned:

* ``scattered``: 4 GiB guest, every 4th page data, the others zero pages (the first pass over a
  guest that has booted and used its memory), ~1.1 GB;
* ``sparse``: 64 GiB guest, 1 page in 64 data (16.5 M zero-page records), ~1.2 GB;
* ``contiguous``: 4 GiB guest, its first GiB data, then zero pages, ~1.1 GB.

Writes ``<name>.mig`` and ``<name>.json`` (blobs with sha256, QEMU version, timings).
A stream is rebuilt only when its JSON is missing or describes another configuration.

    python bench/make_stream.py [--quick | --synthetic LAYOUT|all] [--out DIR] [--force]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from builder import RamBlock, StreamBuilder  # noqa: E402
from qemu_harness import (  # noqa: E402
    Blob,
    GiB,
    MiB,
    find_qemu,
    make_stream,
    qemu_version,
    sha256_file,
)

DEFAULT_OUT = HERE / "out"


@dataclass(frozen=True)
class Config:
    name: str
    memory: str
    ram_size: int
    blobs: tuple[Blob, ...]

    def key(self) -> dict[str, Any]:
        return {"name": self.name, "memory": self.memory, "blobs": [b.manifest() for b in self.blobs]}


FULL = Config(
    "pc-4G-1G-data",
    "4G",
    4 * GiB,
    (
        Blob("d1", "ctr", "migstream-bench-d1", 1, 256 * MiB, 0x10000000),  # 256 MiB
        Blob("d2", "ctr", "migstream-bench-d2", 2, 256 * MiB, 0x80000000),  # 2 GiB
        Blob("d3", "ctr", "migstream-bench-d3", 3, 256 * MiB, 0x100000000),  # 4 GiB (high RAM)
        Blob("d4", "ctr", "migstream-bench-d4", 4, 256 * MiB - 4096 + 123, 0x120000000 + 0x345),
    ),
)

QUICK = Config(
    "pc-512M-128M-data",
    "512M",
    512 * MiB,
    (
        Blob("q1", "ctr", "migstream-bench-q1", 1, 64 * MiB, 0x4000000),
        Blob("q2", "ctr", "migstream-bench-q2", 2, 64 * MiB - 4096 + 77, 0x10000000 + 0x123),
    ),
)


def _write_blob(args: tuple[Blob, str]) -> tuple[str, str, float]:
    blob, directory = args
    start = time.perf_counter()
    path = blob.write(Path(directory))
    return blob.name, str(path), time.perf_counter() - start


def build(config: Config, out_dir: Path = DEFAULT_OUT, force: bool = False, verbose: bool = True) -> Path:
    """Return the path of the stream for ``config``, building it when needed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stream = out_dir / f"{config.name}.mig"
    meta_path = out_dir / f"{config.name}.json"
    if not force and stream.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("config") == config.key() and meta.get("size") == stream.stat().st_size:
            if verbose:
                print(f"cached: {stream} ({stream.stat().st_size} bytes)", file=sys.stderr)
            return stream
    qemu = find_qemu()
    if qemu is None:
        raise SystemExit("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    blob_dir = out_dir / "blobs"
    blob_dir.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    hashes: dict[str, str] = {}
    with ProcessPoolExecutor(max_workers=min(4, len(config.blobs))) as pool:
        for name, path, secs in pool.map(_write_blob, [(b, str(blob_dir)) for b in config.blobs]):
            hashes[name] = sha256_file(path)
            if verbose:
                print(f"blob {name}: {path} ({secs:.1f}s)", file=sys.stderr)
    t_blobs = time.perf_counter() - t0
    t1 = time.perf_counter()
    tmp = stream.with_suffix(".mig.tmp")
    result = make_stream(tmp, machine="pc", memory=config.memory, blobs=config.blobs,
                         blob_dir=blob_dir, timeout=1800)
    t_qemu = time.perf_counter() - t1
    tmp.replace(stream)
    meta = {
        "config": config.key(),
        "ram_size": config.ram_size,
        "machine": "pc",
        "qemu": qemu_version(qemu),
        "size": stream.stat().st_size,
        "blob_sha256": hashes,
        "seconds": {
            "blobs": round(t_blobs, 2),
            "qemu_total": round(t_qemu, 2),
            "migrate": round(result.seconds, 2),
        },
        "query_migrate": result.query_migrate,
    }
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    if verbose:
        print(f"built: {stream} ({meta['size']} bytes) blobs {t_blobs:.1f}s, QEMU start+migrate+quit "
              f"{t_qemu:.1f}s (migrate {result.seconds:.1f}s)", file=sys.stderr)
    return stream


@dataclass(frozen=True)
class Synthetic:
    """A builder-made stream: one big ``pc.ram`` block in one page layout, plus two small blocks."""

    name: str
    ram_size: int
    #: k: every k-th page is data, the others zero pages; 0: ``data_pages`` data pages, then zeros.
    data_every: int
    data_pages: int = 0
    #: Pages per RAM section (QEMU sends the pages in many sections, each ending with EOS).
    section_pages: int = 1 << 16

    def key(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ram_size": self.ram_size,
            "data_every": self.data_every,
            "data_pages": self.data_pages,
            "section_pages": self.section_pages,
            "generator": 2,
        }


PS = 4096
SYNTHETIC = {
    "scattered": Synthetic("synth-4G-every4th", 4 * GiB, 4),
    "sparse": Synthetic("synth-64G-1in64", 64 * GiB, 64),
    "contiguous": Synthetic("synth-4G-1G-contiguous", 4 * GiB, 0, GiB // PS),
}
SMALL_BLOCKS = (RamBlock("pc.bios", 256 * 1024), RamBlock("vga.vram", 16 * MiB))


def _drain(b: StreamBuilder, f: Any) -> None:
    """Write what the builder holds so far and empty it (its record log offsets are not used)."""
    f.write(b.buf)
    del b.buf[:]


def write_synthetic(cfg: Synthetic, path: Path) -> None:
    """Header, configuration, RAM START (block list), RAM PARTs of ``section_pages`` pages, END, EOF."""
    page = bytes(range(256)) * (PS // 256)
    total = cfg.ram_size // PS
    k = max(cfg.data_every, 1)
    b = StreamBuilder(page_size=PS)
    b.header()
    b.configuration("pc-i440fx-10.0")
    b.ram_start(1, [RamBlock("pc.ram", cfg.ram_size), *SMALL_BLOCKS])
    with open(path, "wb") as f:
        done = 0
        while done < total:
            b.section_part(1)
            n = min(cfg.section_pages, total - done)
            if done == 0:  # the first group names the block
                for i in range(k):
                    if cfg.data_every and i == k - 1 or not cfg.data_every and i < cfg.data_pages:
                        b.ram_page("pc.ram", i * PS, i.to_bytes(8, "big") + page[8:])
                    else:
                        b.ram_zero("pc.ram", i * PS)
                first, n_rest = k, n - k
            else:
                first, n_rest = done, n
            if cfg.data_every:
                b.ram_pattern("pc.ram", first, n_rest, cfg.data_every, page)
            else:  # contiguous: data pages, then zero pages
                n_data = max(0, min(first + n_rest, cfg.data_pages) - first)
                if n_data:
                    b.ram_pattern("pc.ram", first, n_data, 1, page)
                if n_rest - n_data:
                    b.ram_pattern("pc.ram", first + n_data, n_rest - n_data, 0, page)
            done += n
            b.ram_eos()
            _drain(b, f)
        b.section_part(1)
        for blk in SMALL_BLOCKS:
            b.ram_zero(blk.name, 0)
            b.ram_pattern(blk.name, 1, blk.used_length // PS - 1, 0, page)
        b.ram_eos()
        b.section_end(1)
        b.ram_eos()
        b.eof()
        b.close_section()
        # A minimal description, as QEMU writes one, so that `state` and QEMU's script run too.
        b.vmdescription()
        _drain(b, f)


def build_synthetic(cfg: Synthetic, out_dir: Path = DEFAULT_OUT, force: bool = False,
                    verbose: bool = True) -> Path:
    """Return the path of the builder-made stream for ``cfg``, writing it when needed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stream = out_dir / f"{cfg.name}.mig"
    meta_path = out_dir / f"{cfg.name}.json"
    if not force and stream.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("config") == cfg.key() and meta.get("size") == stream.stat().st_size:
            if verbose:
                print(f"cached: {stream} ({stream.stat().st_size} bytes)", file=sys.stderr)
            return stream
    t0 = time.perf_counter()
    tmp = stream.with_suffix(".mig.tmp")
    write_synthetic(cfg, tmp)
    tmp.replace(stream)
    meta = {"config": cfg.key(), "size": stream.stat().st_size, "seconds": round(time.perf_counter() - t0, 2)}
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    if verbose:
        print(f"built: {stream} ({meta['size']} bytes) in {meta['seconds']}s", file=sys.stderr)
    return stream


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="512 MiB guest with 128 MiB of data")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="cache directory (default bench/out)")
    ap.add_argument("--force", action="store_true", help="rebuild even when cached")
    ap.add_argument("--synthetic", choices=[*SYNTHETIC, "all"],
                    help="a builder-made stream in this page layout (no QEMU)")
    args = ap.parse_args(argv)
    if args.synthetic:
        names = list(SYNTHETIC) if args.synthetic == "all" else [args.synthetic]
        for name in names:
            print(build_synthetic(SYNTHETIC[name], args.out, args.force))
        return 0
    stream = build(QUICK if args.quick else FULL, args.out, args.force)
    print(stream)
    return 0


if __name__ == "__main__":
    sys.exit(main())
