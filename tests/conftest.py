"""Shared test fixtures: where the corpus of real QEMU streams is, and decompressed copies of it."""

from __future__ import annotations

import json
import lzma
import shutil
from pathlib import Path
from typing import Any

import pytest

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def manifest() -> dict[str, Any]:
    path = CORPUS / "MANIFEST.json"
    if not path.is_file():
        return {"streams": []}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def corpus_streams() -> list[dict[str, Any]]:
    """Every stream of the corpus that was generated (failed generations have no files)."""
    return [s for s in manifest()["streams"] if not s.get("failed")]


def stream_ids() -> list[str]:
    return [s["id"] for s in corpus_streams()]


class CorpusCache:
    """Decompresses corpus files once per test session."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def raw(self, stream_id: str, name: str = "stream.mig") -> Path:
        src = CORPUS / stream_id / f"{name}.xz"
        if not src.is_file():
            pytest.skip(f"{stream_id}: no {name} in the corpus")
        dst = self.root / stream_id.replace("/", "__") / name
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_suffix(".part")
            with lzma.open(src) as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
            tmp.rename(dst)
        return dst

    def json(self, stream_id: str, name: str) -> Any:
        src = CORPUS / stream_id / f"{name}.xz"
        if not src.is_file():
            return None
        with lzma.open(src) as f:
            return json.load(f)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> CorpusCache:
    if not CORPUS.is_dir():
        pytest.skip("the stream corpus is not here (../shared/corpus)")
    return CorpusCache(tmp_path_factory.mktemp("corpus"))
