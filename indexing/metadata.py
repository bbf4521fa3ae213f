"""The metadata every chunk carries, and which of it retrieval may filter on.

LlamaIndex's ChromaVectorStore adds its own bookkeeping keys (`_node_content`, `_node_type`,
`doc_id`, `document_id`, `ref_doc_id`) beside ours; retrieval reads only ours, so prompts and
citations never see them.
"""

from __future__ import annotations

from typing import Any

from indexing.errors import FilterError

SOURCE = "source"
FILE_TYPE = "file_type"
TITLE = "title"
PAGE = "page"
HEADING = "heading"
CHUNK = "chunk"
CONTENT_HASH = "content_hash"
DOC_HASH = "doc_hash"

EMBEDDED_KEYS = (TITLE, HEADING)
"""Keys prepended to the chunk text for the embedding and BM25: they give a chunk its context."""
FILTER_TYPES: dict[str, type] = {SOURCE: str, FILE_TYPE: str, TITLE: str, HEADING: str, PAGE: int}
HEADING_SEPARATOR = " > "


def hidden_keys(metadata: dict[str, Any]) -> list[str]:
    """Keys of `metadata` the embedding and the LLM should not see."""
    return [key for key in metadata if key not in EMBEDDED_KEYS]


def chroma_where(filters: dict[str, str] | None) -> dict[str, Any] | None:
    """Equality filters on our metadata, as a Chroma `where` clause; unknown keys are an error."""
    if not filters:
        return None
    clauses: list[dict[str, Any]] = []
    for key, value in sorted(filters.items()):
        kind = FILTER_TYPES.get(key)
        if kind is None:
            raise FilterError(f"cannot filter on {key!r}: filterable keys are {', '.join(sorted(FILTER_TYPES))}")
        try:
            clauses.append({key: kind(value)})
        except ValueError:
            raise FilterError(f"filter {key}={value!r}: expected {kind.__name__}") from None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}
