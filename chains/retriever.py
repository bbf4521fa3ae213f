"""The index as a LangChain `BaseRetriever`, for chains and agents.

It lives in `chains`, not `indexing`: the index knows nothing of LangChain (the layers point
app -> chains -> indexing, enforced by `make lint`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field

if TYPE_CHECKING:
    from indexing.retrieval import Mode, Passage


class IndexRetriever(BaseRetriever):
    """Passages as Documents: `page_content` is the chunk text, metadata our clean keys plus the score.

    `IndexRetriever(retriever=open_retriever(settings.index), k=4)`. `k`, `mode` and `filters` are
    defaults; each may be overridden per call (`invoke(q, k=3, filters={"source": "faq.md"})`).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    retriever: Any
    """The HybridRetriever doing the work (typed loosely so importing this module loads no index code)."""
    k: int | None = Field(None, ge=1)
    """Passages per call; None means the retriever's `index.top_k`."""
    mode: str = "hybrid"
    filters: dict[str, str] | None = None

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        mode: Mode | None = None,
        filters: dict[str, str] | None = None,
    ) -> list[Document]:
        passages = self.retriever.retrieve(query, k or self.k, filters or self.filters, mode or self.mode)
        return [to_document(p) for p in passages]

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        mode: Mode | None = None,
        filters: dict[str, str] | None = None,
    ) -> list[Document]:
        passages = await self.retriever.aretrieve(query, k or self.k, filters or self.filters, mode or self.mode)
        return [to_document(p) for p in passages]


def to_document(passage: Passage) -> Document:
    metadata = {
        "source": passage.source,
        "title": passage.title,
        "page": passage.page,
        "heading": passage.heading,
        "chunk": passage.chunk,
        "score": passage.score,
    }
    return Document(
        id=passage.node_id, page_content=passage.text, metadata={k: v for k, v in metadata.items() if v is not None}
    )
