"""`python -m tests.reliability.killable_ingest POINT N [FRACTION]`: an ingest (settings from RAG_
env) that holds still the N-th time it reaches POINT, so a test can SIGKILL it exactly there.

POINT is a stage of `indexing.pipeline.Stage` (between a batch's steps), or one inside a step:
`mid_vector_write` (FRACTION of the batch's chunks are in Chroma, the rest not yet) and
`in_finish` (the BM25 index of the new version is saved, the manifest not yet rewritten).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, cast

from llama_index.vector_stores.chroma import ChromaVectorStore

import indexing.pipeline
from config import load_settings
from indexing.manifest import Manifest
from indexing.pipeline import Stage, ingest
from tests.indexing.stalled_ingest import stall_at

STAGES = ("after_vector_write", "after_commit")


def stall_inside(point: str, nth: int, fraction: float) -> None:
    """Patch the write step that `point` names so that its `nth` call stalls partway."""
    calls = 0
    hold = stall_at(cast(Stage, point), 1)  # the shared "print STALLED, sleep forever"

    if point == "mid_vector_write":
        add = ChromaVectorStore.add

        def partial_add(self: ChromaVectorStore, nodes: Sequence[Any], **kwargs: Any) -> list[str]:
            nonlocal calls
            calls += 1
            if calls == nth:
                add(self, list(nodes[: int(len(nodes) * fraction)]), **kwargs)
                hold(cast(Stage, point))
            return add(self, list(nodes), **kwargs)

        ChromaVectorStore.add = partial_add  # type: ignore[method-assign]
    elif point == "in_finish":
        write = indexing.pipeline.write_manifest

        def late_write(path: Any, manifest: Manifest) -> None:
            nonlocal calls
            if manifest.bm25_dir is not None:  # the rewrite at the end, not the first empty manifest
                calls += 1
                if calls == nth:
                    hold(cast(Stage, point))
            write(path, manifest)

        indexing.pipeline.write_manifest = late_write
    else:
        raise SystemExit(f"unknown point {point!r}")


if __name__ == "__main__":
    point, nth = sys.argv[1], int(sys.argv[2])
    hook: Callable[[Stage], None] | None = None
    if point in STAGES:
        hook = stall_at(cast(Stage, point), nth)
    else:
        stall_inside(point, nth, float(sys.argv[3]) if len(sys.argv) > 3 else 0.5)
    ingest(load_settings().index, progress=False, on_stage=hook)
