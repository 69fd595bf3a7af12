#!/usr/bin/env python3
"""Build (once, cached under bench/out/) a large migration stream with the installed QEMU.

Full: a 4 GiB ``pc`` guest (3 GiB low RAM + 1 GiB at GPA 4 GiB), paused at reset, with 1 GiB
of ``ctr`` (incompressible) data in 4 x 256 MiB blobs placed by ``loader`` devices, two of them
above 4 GiB, migrated with ``exec:cat > FILE``.  ``--quick``: 512 MiB guest, 2 x 64 MiB.

Writes ``<name>.mig`` and ``<name>.json`` (blobs with sha256, QEMU version, timings).
A stream is rebuilt only when its JSON is missing or describes another configuration.

    python bench/make_stream.py [--quick] [--out DIR] [--force]
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="512 MiB guest with 128 MiB of data")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="cache directory (default bench/out)")
    ap.add_argument("--force", action="store_true", help="rebuild even when cached")
    args = ap.parse_args(argv)
    stream = build(QUICK if args.quick else FULL, args.out, args.force)
    print(stream)
    return 0


if __name__ == "__main__":
    sys.exit(main())
