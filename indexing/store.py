"""Chroma access in either mode: embedded on disk (one writer) or a Chroma server (`HttpClient`).

Collections are created without an embedding function, so Chroma can never be asked to embed
(and download a model) itself: every query passes our own embedding.
"""

from __future__ import annotations

from typing import Any

import chromadb
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.config import Settings as ChromaSettings
from chromadb.errors import NotFoundError

from config.settings import IndexSettings
from indexing.errors import NotAnIndexError, StoreUnavailableError
from indexing.layout import IndexLayout


def _client_settings() -> ChromaSettings:
    """A fresh object per client (HttpClient writes into the one it gets), equal for every client of a
    folder: Chroma refuses a second embedded client of one folder with other settings."""
    return ChromaSettings(anonymized_telemetry=False)


def open_client(settings: IndexSettings, layout: IndexLayout) -> ClientAPI:
    if settings.chroma_mode == "embedded":
        return chromadb.PersistentClient(path=str(layout.chroma), settings=_client_settings())
    token = settings.chroma_auth_token.get_secret_value() if settings.chroma_auth_token else None
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return chromadb.HttpClient(
            host=settings.chroma_host, port=settings.chroma_port, headers=headers, settings=_client_settings()
        )
    except Exception as exc:  # connection refused, TLS, auth: all surface here first
        raise StoreUnavailableError(
            f"cannot reach the Chroma server at {settings.chroma_host}:{settings.chroma_port} ({exc}); "
            "start one with `chroma run --path PATH --port PORT` or set index.chroma_mode=embedded"
        ) from None


def create_collection(client: ClientAPI, name: str, embed_model: str, dimension: int) -> Collection:
    """Get or create the collection; an existing one built with another model is refused by the caller."""
    return client.get_or_create_collection(
        name,
        configuration={"hnsw": {"space": "cosine"}},
        metadata={"embed_model": embed_model, "embed_dimension": dimension},
        embedding_function=None,
    )


def existing_collection(client: ClientAPI, name: str, where: str) -> Collection:
    try:
        return client.get_collection(name, embedding_function=None)
    except NotFoundError:
        raise NotAnIndexError(
            f"{where} has a manifest but Chroma has no collection {name!r}; "
            "check index.collection (and the Chroma server in http mode), or re-run the ingest"
        ) from None


def close_client(client: ClientAPI) -> None:
    """Release the client; for an embedded folder the last release drops Chroma's cached state."""
    close = getattr(client, "close", None)  # on the concrete clients, not on the ClientAPI protocol
    if close is not None:
        close()


def collection_ids(collection: Collection, where: dict[str, Any]) -> set[str]:
    return set(collection.get(where=where, include=[])["ids"])
