"""The ONNX embedding backends: same vectors as torch, exported once, damaged exports rebuilt,
and an index only ever queried or extended with the backend it was built with."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from config.settings import IndexSettings
from indexing.embeddings import (
    OFFLINE_MINILM,
    embedding_backend,
    export,
    load_embedding,
    resolve_model_path,
)
from indexing.embeddings.onnx import export_folder, load_onnx_embedding
from indexing.errors import EmbeddingMismatchError
from indexing.manifest import read_manifest, read_manifest_for_model
from indexing.pipeline import ingest
from indexing.report import IngestReport
from indexing.retrieval import open_retriever
from tests.indexing.index_fixtures import ASTRONOMY, COOKING, GARDENING

SOURCE = Path(resolve_model_path(OFFLINE_MINILM))
PASSAGES = [p.strip() for p in (ASTRONOMY + "\n\n" + COOKING).split("\n\n") if p.strip()] + [GARDENING, "x" * 3000]
QUESTIONS = ["Which planet has a Great Red Spot?", "How long should sourdough ferment?", "  tomatoes  ", ""]
MIN_COSINE = {"onnx": 0.999, "onnx-int8": 0.97}
"""int8 is approximate: real passages stay above 0.985, a degenerate run of one letter at 0.978."""


@pytest.fixture(scope="session")
def torch_model() -> Any:
    return load_embedding(OFFLINE_MINILM, 64, "torch")


@pytest.fixture(scope="session")
def first_use(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Both ONNX backends loaded once into an empty cache folder, recording every export step run."""
    cache = tmp_path_factory.mktemp("onnx-cache")
    steps: list[str] = []
    real_export, real_quantize = export.export_sentence_transformer, export.quantize_int8
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(export, "export_sentence_transformer", lambda *a: (steps.append("export"), real_export(*a))[1])
        mp.setattr(export, "quantize_int8", lambda *a: (steps.append("quantize"), real_quantize(*a))[1])
        for backend in ("onnx", "onnx-int8"):
            load_onnx_embedding(str(SOURCE), backend, 64, cache)
    return cache, steps


@pytest.fixture
def cache_copy(first_use: tuple[Path, list[str]], tmp_path: Path) -> Path:
    """A private copy of the exports, free to damage."""
    return Path(shutil.copytree(first_use[0], tmp_path / "cache"))


@pytest.fixture
def no_exports(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any) -> None:
        raise AssertionError("the export ran again although a valid one was cached")

    monkeypatch.setattr(export, "export_sentence_transformer", refuse)
    monkeypatch.setattr(export, "quantize_int8", refuse)


def cosines(a: Any, b: Any) -> np.ndarray:
    return np.asarray((np.asarray(a) * np.asarray(b)).sum(axis=1))


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_onnx_vectors_agree_with_torch_on_real_text(
    backend: str, first_use: tuple[Path, list[str]], torch_model: Any
) -> None:
    model = load_onnx_embedding(str(SOURCE), backend, 64, first_use[0])  # type: ignore[arg-type]
    texts = cosines(model.get_text_embedding_batch(PASSAGES), torch_model.get_text_embedding_batch(PASSAGES))
    queries = cosines(
        [model.get_query_embedding(q) for q in QUESTIONS], [torch_model.get_query_embedding(q) for q in QUESTIONS]
    )
    assert len(texts) == len(PASSAGES) and len(queries) == len(QUESTIONS)
    assert min(texts.min(), queries.min()) > MIN_COSINE[backend], (texts, queries)
    assert model.max_length == torch_model.max_length == 256  # long texts truncated where torch truncates them
    assert embedding_backend(model) == backend and embedding_backend(torch_model) == "torch"


def test_the_export_is_made_once_and_reused(first_use: tuple[Path, list[str]], no_exports: None) -> None:
    cache, steps = first_use
    assert steps == ["export", "quantize"]  # int8 is quantized from the fp32 export, not exported again
    folders = {b: export_folder(SOURCE, b, cache) for b in ("onnx", "onnx-int8")}
    stamps = {b: (f / "model.onnx").stat().st_mtime_ns for b, f in folders.items()}
    for backend in folders:
        again = load_onnx_embedding(str(SOURCE), backend, 64, cache)  # type: ignore[arg-type]
        assert len(again.get_query_embedding("still works")) == 384
    assert {b: (f / "model.onnx").stat().st_mtime_ns for b, f in folders.items()} == stamps
    assert sorted(p.name for p in cache.iterdir()) == sorted(f.name for f in folders.values())  # no leftovers


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def zero_the_middle(path: Path) -> None:
    """Same size, still a readable file: only the vectors can tell."""
    data = bytearray(path.read_bytes())
    quarter = len(data) // 4
    data[quarter : 3 * quarter] = bytes(2 * quarter)
    path.write_bytes(bytes(data))


def garbage_meta(path: Path) -> None:
    (path.parent / "meta.json").write_text("{not json", encoding="utf-8")


@pytest.mark.parametrize(
    ("backend", "damage"),
    [("onnx", truncate), ("onnx-int8", zero_the_middle), ("onnx-int8", garbage_meta)],
    ids=["fp32-truncated", "int8-zeroed-weights", "int8-garbage-meta"],
)
def test_a_damaged_export_is_detected_and_rebuilt(
    backend: str,
    damage: Callable[[Path], None],
    cache_copy: Path,
    torch_model: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model_file = export_folder(SOURCE, backend, cache_copy) / "model.onnx"  # type: ignore[arg-type]
    intact = model_file.read_bytes()
    damage(model_file)
    with caplog.at_level(logging.WARNING, logger="indexing.embeddings.onnx"):
        model = load_onnx_embedding(str(SOURCE), backend, 64, cache_copy)  # type: ignore[arg-type]
    assert any("is damaged" in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)
    assert (
        cosines(model.get_text_embedding_batch(PASSAGES), torch_model.get_text_embedding_batch(PASSAGES)).min()
        > (MIN_COSINE[backend])
    )
    assert model_file.stat().st_size == len(intact)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="indexing.embeddings.onnx"):
        load_onnx_embedding(str(SOURCE), backend, 64, cache_copy)  # type: ignore[arg-type]
    assert not caplog.records  # the rebuilt export passes the checks


def test_unknown_backend_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="must be one of torch, onnx, onnx-int8, not 'tensorrt'"):
        load_embedding(OFFLINE_MINILM, 64, "tensorrt")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="embed_backend"):
        IndexSettings(embed_backend="tensorrt")  # type: ignore[arg-type]


def test_loading_a_local_model_leaves_hf_hub_offline_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert load_embedding(OFFLINE_MINILM, 3, "torch").get_query_embedding("probe")  # batch 3: a fresh load
    assert "HF_HUB_OFFLINE" not in os.environ


@pytest.fixture
def onnx_index(settings: IndexSettings, embed_model: Any) -> Iterator[IndexSettings]:
    assert embedding_backend(embed_model) == settings.embed_backend == "onnx"  # the default, the fixture's model
    report: IngestReport = ingest(settings, progress=False, embed_model=embed_model)
    assert report.ok, report.summary()
    yield settings


def test_the_manifest_records_the_backend_and_another_one_is_refused(
    onnx_index: IndexSettings, torch_model: Any
) -> None:
    manifest_path = onnx_index.index_dir / "manifest.json"
    before = manifest_path.read_bytes()
    assert read_manifest(manifest_path).embed_backend == "onnx"
    as_torch = onnx_index.model_copy(update={"embed_backend": "torch"})
    expected = r"embedded with the 'onnx' backend but index.embed_backend is 'torch'.*RAG_INDEX__EMBED_BACKEND=onnx"
    with pytest.raises(EmbeddingMismatchError, match=expected):
        open_retriever(as_torch)
    with pytest.raises(EmbeddingMismatchError, match=r"embedded with the 'onnx' backend"):
        open_retriever(onnx_index, embed_model=torch_model)  # the model decides when one is passed
    with pytest.raises(EmbeddingMismatchError, match=expected):
        ingest(as_torch, progress=False)
    assert manifest_path.read_bytes() == before  # refused before anything was written
    assert open_retriever(onnx_index).retrieve("Great Red Spot", top_k=1)[0].source == "astronomy.md"


def test_a_manifest_from_before_backends_reads_as_torch(tmp_path: Path, onnx_index: IndexSettings) -> None:
    raw = json.loads((onnx_index.index_dir / "manifest.json").read_text(encoding="utf-8"))
    del raw["embed_backend"]
    old = tmp_path / "old-manifest.json"
    old.write_text(json.dumps(raw), encoding="utf-8")
    assert read_manifest_for_model(old, OFFLINE_MINILM, "torch").embed_backend == "torch"
    with pytest.raises(EmbeddingMismatchError, match=r"'torch' backend but index.embed_backend is 'onnx'"):
        read_manifest_for_model(old, OFFLINE_MINILM, "onnx")
