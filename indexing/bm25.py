"""The BM25 half of hybrid retrieval: bm25s over stemmed tokens, persisted beside Chroma.

It is rebuilt from the docstore's stored tokens (never by re-reading files) at the end of any
ingest that changed the content, into a folder named after the index version; the manifest
names the current folder, so readers switch over atomically.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

import bm25s
import numpy as np
import Stemmer

logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s sets DEBUG on import, flooding any log handler
_IDS_FILE = "chunk_ids.json"
_local = threading.local()


def tokenize(texts: list[str]) -> list[list[str]]:
    """Lower-cased, English stop words removed, Snowball-stemmed (one stemmer per thread: not thread-safe)."""
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        stemmer = _local.stemmer = Stemmer.Stemmer("english")
    tokens = bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)
    return [list(t) for t in tokens]


class Bm25Index:
    """Chunk ids in corpus order plus the bm25s scores; an empty index answers nothing."""

    def __init__(self, ids: list[str], model: bm25s.BM25 | None) -> None:
        self.ids = ids
        self._model = model
        self._position = {chunk_id: i for i, chunk_id in enumerate(ids)}

    @classmethod
    def build(cls, corpus: Iterable[tuple[str, str]]) -> Bm25Index:
        """From (chunk id, space-joined tokens) pairs."""
        ids: list[str] = []
        tokens: list[list[str]] = []
        for chunk_id, joined in corpus:
            ids.append(chunk_id)
            tokens.append(joined.split())
        if not ids:
            return cls([], None)
        model = bm25s.BM25()
        model.index(tokens, show_progress=False)
        return cls(ids, model)

    def save(self, folder: Path, *, replace: bool = True) -> None:
        """Write to a temporary sibling, then rename: a reader never loads half an index.

        `replace=False` keeps a folder already there (a cache of one index version, which another
        process may have written first: same version, same content).
        """
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            if self._model is not None:
                self._model.save(str(tmp), show_progress=False)
            (tmp / _IDS_FILE).write_text(json.dumps(self.ids), encoding="utf-8")
            if replace and folder.exists():
                shutil.rmtree(folder)
            try:
                tmp.rename(folder)
            except OSError:
                if replace or not folder.is_dir():
                    raise
                shutil.rmtree(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, folder: Path) -> Bm25Index:
        ids = json.loads((folder / _IDS_FILE).read_text(encoding="utf-8"))
        if not ids:
            return cls([], None)
        return cls(ids, bm25s.BM25.load(str(folder), load_corpus=False, show_progress=False))

    def search(self, query: str, k: int, allowed: Iterable[str] | None = None) -> list[tuple[str, float]]:
        """Best `k` chunk ids with a positive score, optionally only among `allowed` ids."""
        terms = tokenize([query])[0]
        if self._model is None or k <= 0 or not terms:  # bm25s fails on a query of stop words only
            return []
        scores = np.asarray(self._model.get_scores(terms), dtype=np.float32)
        if allowed is not None:
            mask = np.zeros(len(self.ids), dtype=np.float32)
            positions = [self._position[i] for i in allowed if i in self._position]
            mask[positions] = 1.0
            scores = scores * mask
        k = min(k, len(self.ids))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self.ids[i], float(scores[i])) for i in top if scores[i] > 0]


def prune_versions(root: Path, keep: set[str]) -> None:
    """Drop BM25 folders of older versions (the previous one is kept for readers mid-switch)."""
    if not root.is_dir():
        return
    for child in root.iterdir():
        if child.name not in keep:
            shutil.rmtree(child, ignore_errors=True)
