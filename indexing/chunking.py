"""Structure-aware chunking as a LlamaIndex transform: Markdown sections, then sentence windows.

Sizes are counted with the embedding model's own tokenizer and capped at its input window, so
no chunk has a tail the embedding never sees. Each chunk gets a content-addressed id (a hash of
its source, number, text and metadata): writing the same chunk twice is a no-op, and the index
version can be derived from the ids alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.node_parser import MarkdownNodeParser, SentenceSplitter
from llama_index.core.schema import BaseNode, Document, MetadataMode, NodeRelationship, TextNode, TransformComponent

from indexing.metadata import CHUNK, CONTENT_HASH, FILE_TYPE, HEADING, HEADING_SEPARATOR, SOURCE, TITLE, hidden_keys

log = logging.getLogger(__name__)

CHUNKER_VERSION = "2"
"""Bump when chunk boundaries or metadata change, so every file is re-chunked on its next ingest."""
STRUCTURED_TYPES = ("markdown", "html")
MAX_LABEL_CHARS = 120
"""Titles and headings are cut to this length: they ride along in every chunk's embedding."""
_PATH_SEPARATOR = "\x1f"
_WINDOW_MARGIN = 16
_HEADING = re.compile(r"^#{1,6}\s+(\S.*?)\s*#*\s*$")

TokenCounter = Callable[[str], list[int]]


class Chunker(TransformComponent):
    """Documents in, chunk nodes out, numbered per source file (across PDF pages) with stable ids."""

    chunk_size: int
    chunk_overlap: int
    _markdown: MarkdownNodeParser = PrivateAttr()
    _sentences: SentenceSplitter = PrivateAttr()

    def __init__(self, chunk_size: int, chunk_overlap: int, tokenizer: TokenCounter) -> None:
        if chunk_overlap >= chunk_size:
            raise ValueError(f"chunk_overlap ({chunk_overlap}) must be smaller than chunk_size ({chunk_size})")
        super().__init__(chunk_size=chunk_size, chunk_overlap=chunk_overlap)
        self._markdown = MarkdownNodeParser(header_path_separator=_PATH_SEPARATOR, include_prev_next_rel=False)
        self._sentences = SentenceSplitter(
            chunk_size=chunk_size, chunk_overlap=chunk_overlap, tokenizer=tokenizer, include_prev_next_rel=False
        )

    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[BaseNode]:
        chunks: list[BaseNode] = []
        numbers: dict[str, int] = {}
        for doc in nodes:
            if not isinstance(doc, Document):
                raise TypeError(f"Chunker expects Documents, got {type(doc).__name__}")
            doc.metadata = _clip_labels(doc.metadata)
            origin = doc.as_related_node_info()
            source = str(doc.metadata.get(SOURCE, doc.id_))
            for piece in self._sentences(self._sections(doc)):
                if not piece.get_content(MetadataMode.NONE).strip():
                    continue
                number = numbers.get(source, 0)
                numbers[source] = number + 1
                chunks.append(_finish(piece, doc, origin, number))
        return chunks

    def _sections(self, doc: Document) -> list[BaseNode]:
        if doc.metadata.get(FILE_TYPE) not in STRUCTURED_TYPES:
            return [doc]
        sections: list[BaseNode] = []
        for section in self._markdown.get_nodes_from_node(doc):
            text = section.get_content(MetadataMode.NONE)
            first, _, body = text.partition("\n")
            own = _HEADING.match(first)
            if own and not body.strip():
                continue  # a heading with nothing under it: its name lives on in the next section's path
            parents = [p for p in str(section.metadata.pop("header_path", "")).split(_PATH_SEPARATOR) if p]
            path = [*parents, own.group(1)] if own else parents
            if path:
                section.metadata[HEADING] = HEADING_SEPARATOR.join(path)
            section.metadata = _clip_labels(section.metadata)
            section.excluded_embed_metadata_keys = hidden_keys(section.metadata)
            section.excluded_llm_metadata_keys = hidden_keys(section.metadata)
            sections.append(section)
        return sections


def _clip_labels(metadata: dict[str, Any]) -> dict[str, Any]:
    clipped = dict(metadata)
    for key in (TITLE, HEADING):
        value = clipped.get(key)
        if isinstance(value, str) and len(value) > MAX_LABEL_CHARS:
            clipped[key] = value[: MAX_LABEL_CHARS - 1].rstrip() + "…"
    return clipped


def _finish(piece: BaseNode, doc: Document, origin: Any, number: int) -> TextNode:
    text = piece.get_content(MetadataMode.NONE)
    metadata = dict(doc.metadata)
    if HEADING in piece.metadata:
        metadata[HEADING] = piece.metadata[HEADING]
    metadata[CHUNK] = number
    metadata[CONTENT_HASH] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return TextNode(
        id_=chunk_id(metadata, text),
        text=text,
        metadata=metadata,
        excluded_embed_metadata_keys=hidden_keys(metadata),
        excluded_llm_metadata_keys=hidden_keys(metadata),
        relationships={NodeRelationship.SOURCE: origin},
    )


def chunk_id(metadata: dict[str, Any], text: str) -> str:
    payload = json.dumps([metadata, text], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def model_tokenizer(embed_model: Any) -> TokenCounter:
    """The embedding model's tokenizer without its padding and truncation, as a token counter."""
    from indexing.embeddings import embedding_tokenizer

    tokenizer = embedding_tokenizer(embed_model)
    tokenizer.no_padding()
    tokenizer.no_truncation()

    def count(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False).ids)

    return count


def effective_chunk_size(requested: int, embed_model: Any) -> int:
    """The requested size, capped at what the model embeds.

    The margin covers [CLS]/[SEP], the blank line between the metadata and the text, and the
    splitter's estimate of joined sentences, which runs a few tokens short.
    """
    window = int(getattr(embed_model, "max_length", 0) or 0)
    cap = window - _WINDOW_MARGIN
    if window and requested > cap:
        log.info("chunk_size %d exceeds the embedding window (%d tokens): chunks capped at %d", requested, window, cap)
        return cap
    return requested
