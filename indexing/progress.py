"""Ingest progress: a bar counted in files whose ETA moves with every embedded slice of chunks.

Files are the unit because their total is known up front; a batch's files advance in proportion
to its chunks embedded so far, so the bar and its ETA move smoothly even when one commit holds
hundreds of files. Quiet when stderr is not a terminal (CI) unless asked otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import BaseNode, TransformComponent
from tqdm import tqdm

_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total_fmt} files [{elapsed}<{remaining}{postfix}]"


class IngestProgress:
    def __init__(self, files: int, enabled: bool | None) -> None:
        disable = None if enabled is None else not enabled  # None: tqdm shows it only on a terminal
        self._bar = tqdm(total=files, desc="ingest", bar_format=_FORMAT, disable=disable, dynamic_ncols=True)
        self._started = time.perf_counter()
        self._chunks = 0
        self._base = 0.0
        self._files = 0

    def file_done(self) -> None:
        """A file that needed no embedding (unchanged, or failed)."""
        self._move(self._bar.n + 1)

    def batch_started(self, files: int) -> None:
        self._base, self._files = float(self._bar.n), files

    def chunks_embedded(self, done: int, total: int, step: int) -> None:
        self._chunks += step
        self._move(self._base + self._files * done / max(total, 1))

    def batch_done(self) -> None:
        self._move(self._base + self._files)

    def close(self) -> None:
        self._bar.close()

    def _move(self, n: float) -> None:
        self._bar.n = n
        rate = self._chunks / max(time.perf_counter() - self._started, 1e-9)
        self._bar.set_postfix_str(f"{self._chunks} chunks, {rate:.1f} chunks/s", refresh=False)
        self._bar.refresh()


class EmbedWithProgress(TransformComponent):
    """The pipeline's embedding step, one model batch at a time, reporting after each batch."""

    embed_model: BaseEmbedding
    _report: Callable[[int, int, int], None] = PrivateAttr()

    def __init__(self, embed_model: BaseEmbedding, report: Callable[[int, int, int], None]) -> None:
        super().__init__(embed_model=embed_model)
        self._report = report

    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        step = self.embed_model.embed_batch_size
        for start in range(0, len(nodes), step):
            part = nodes[start : start + step]
            self.embed_model(part)  # embeds the nodes' EMBED text and sets node.embedding, as in a plain pipeline
            self._report(start + len(part), len(nodes), len(part))
        return nodes
