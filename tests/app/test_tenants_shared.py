"""Tenants in shared mode: two API replicas (two `python -m app.api` processes) over one PostgreSQL
and one Chroma server serve two tenants, each key's state in its own schema and its own
collections. The tenants ask the same question over different documents (as in test_tenants.py);
the session's vLLM server answers."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chromadb
import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import make_url

from app.store import ChatStore
from app.tenants import KeysFile, TenantError, ensure_schema, tenant_schema, tenant_settings
from config import SettingsError, load_settings
from config.settings import Settings, sqlalchemy_url
from indexing.layout import IndexLayout
from indexing.lock import writer_lock
from tests.app.replicas import Replica, Shared, checkpointed_texts, replica_pair
from tests.app.test_tenants import DOCS, QUESTION
from tests.llm_server import LLMServer
from tests.shared_servers import fresh_database


def shared_settings(tmp_path: Path, url: str = "postgresql://rag:s3cret@db:5432/rag?sslmode=require") -> Settings:
    return load_settings(
        "test",
        state={"mode": "shared", "postgres_url": url},
        api={"keys_file": tmp_path / "keys.json", "tenants_dir": tmp_path / "tenants"},
    )


def test_each_tenant_gets_its_own_schema_collections_and_ingest_lock(tmp_path: Path) -> None:
    base = shared_settings(tmp_path)
    acme, globex = tenant_settings(base, "acme"), tenant_settings(base, "globex")

    for name, settings in (("acme", acme), ("globex", globex)):
        assert settings.state.postgres_url is not None
        url = settings.state.postgres_url.get_secret_value()
        # Every client of PostgreSQL gets the tenant's URL: the turn store, the agent's saver, the lock, the cache.
        assert settings.index.state_url == settings.cache.state_url == settings.state.postgres_url
        parsed = conninfo_to_dict(url)  # as libpq (psycopg, LangGraph's pool) reads it
        assert parsed["options"] == f'-csearch_path="tenant_{name}"'
        assert (parsed["password"], parsed["sslmode"], parsed["dbname"]) == ("s3cret", "require", "rag")
        assert make_url(sqlalchemy_url(url)).query["options"] == parsed["options"]  # as SQLAlchemy reads it
        assert settings.cache.collection_prefix == f"{name}-"
        assert "s3cret" not in repr(settings)
    assert acme.index.collection != globex.index.collection
    layout = IndexLayout(tmp_path / "index")
    assert writer_lock(acme.index, layout).name != writer_lock(globex.index, layout).name
    assert base.state.postgres_url is not None and "options" not in base.state.postgres_url.get_secret_value()
    assert base.cache.collection_prefix == "" and base.index.state_url == base.state.postgres_url


def test_options_already_in_the_url_are_kept() -> None:
    settings = tenant_settings(
        shared_settings(Path("/tmp"), "postgresql://rag@db/rag?options=-cstatement_timeout%3D5000"), "acme"
    )
    assert settings.state.postgres_url is not None
    options = conninfo_to_dict(settings.state.postgres_url.get_secret_value())["options"]
    assert options == '-cstatement_timeout=5000 -csearch_path="tenant_acme"'


@pytest.mark.parametrize("name", ['acme"; DROP SCHEMA public CASCADE; --', "acme,public", "ACME", "a b", ""])
def test_a_name_that_could_inject_sql_or_reach_another_schema_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(TenantError, match="tenant name"):
        tenant_settings(shared_settings(tmp_path), name)


def test_distinct_names_never_share_a_schema() -> None:
    names = ["a-b", "a_b", "ab", "a--b", "a__b", "public", "pg_catalog"]
    schemas = [tenant_schema(n) for n in names]
    assert len(set(schemas)) == len(names) and all(s.startswith("tenant_") for s in schemas)


def test_a_bad_cache_collection_prefix_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"cache\.collection_prefix"):
        load_settings("test", cache={"collection_prefix": "Acme Corp/"})


@pytest.mark.integration
def test_replicas_opening_a_new_tenant_at_the_same_moment_all_get_its_schema(postgres_url: str) -> None:
    """A bare `CREATE SCHEMA IF NOT EXISTS` from several sessions at once fails some of them
    (duplicate key in pg_namespace); `ensure_schema` takes them in turn."""
    database = fresh_database(postgres_url)
    start, errors = threading.Barrier(8), []

    def open_tenant(schema: str) -> None:
        start.wait()
        try:
            ensure_schema(database, schema)
        except psycopg.Error as exc:
            errors.append(exc)

    schemas = [f"tenant_{i:02d}" for i in range(12)]  # 12 rounds: a bare CREATE fails in nearly every run
    for schema in schemas:
        threads = [threading.Thread(target=open_tenant, args=(schema,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    with psycopg.connect(database) as conn:
        found = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenant_%' ORDER BY 1").fetchall()
    assert [r[0] for r in found] == schemas


@dataclass
class Tenants:
    a: Replica
    b: Replica
    keys: dict[str, str]
    settings: dict[str, Settings]
    """Each tenant's settings as the replicas derive them (its PostgreSQL URL, its collections)."""
    database: str


@pytest.fixture(scope="module")
def tenants(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str, chroma_port: int, vllm_server: LLMServer
) -> Iterator[Tenants]:
    """Two replicas over a fresh database and the session's Chroma server, serving a keys file of two
    tenants, each with one document about zebras (their folders under one `api.tenants_dir`)."""
    root = tmp_path_factory.mktemp("tenants-shared")
    database = fresh_database(postgres_url)
    keys = KeysFile(root / "keys.json")
    tokens = {name: keys.add(name) for name in DOCS}
    base = load_settings(
        "test",
        state={"mode": "shared", "postgres_url": database},
        index={"chroma_port": chroma_port},
        api={"keys_file": keys.path, "tenants_dir": root / "tenants"},
    )
    settings = {name: tenant_settings(base, name) for name in DOCS}
    for name, (file, text) in DOCS.items():
        settings[name].index.docs_dir.mkdir(parents=True)
        (settings[name].index.docs_dir / file).write_text(text, encoding="utf-8")
    with replica_pair(Shared(database, chroma_port, root, keys.path), vllm_server) as (a, b):
        yield Tenants(a, b, tokens, settings, database)


def _url(settings: Settings) -> str:
    assert settings.state.postgres_url is not None
    return settings.state.postgres_url.get_secret_value()


@pytest.mark.integration
def test_two_tenants_on_replica_pair_retrieve_cite_and_cache_only_their_own(tenants: Tenants) -> None:
    a, b, keys = tenants.a, tenants.b, tenants.keys

    acme = a.chat(QUESTION, key=keys["acme"])
    globex = b.chat(QUESTION, key=keys["globex"])
    acme_again = b.chat(QUESTION, key=keys["acme"])  # the other replica: the tenant's cache is shared
    globex_again = a.chat(QUESTION, key=keys["globex"])

    assert {s["file"] for s in acme["sources"]} == {"zebras.md"} and acme["cached"] is False
    assert globex["cached"] is False, "never served from another tenant's cache"
    assert {s["file"] for s in globex["sources"]} == {"zebra-diet.md"}
    assert "lucerne" not in json.dumps(globex) and "zebras.md" not in json.dumps(globex)
    assert acme_again["cached"] is True and globex_again["cached"] is True
    assert acme_again["choices"][0]["message"]["content"] == acme["choices"][0]["message"]["content"]
    assert globex_again["choices"][0]["message"]["content"] == globex["choices"][0]["message"]["content"]
    assert {s["file"] for s in globex_again["sources"]} == {"zebra-diet.md"}
    # Where it lives: each tenant's cache scopes name collections of its own, holding its vectors.
    chroma = chromadb.HttpClient(host="127.0.0.1", port=tenants.settings["acme"].index.chroma_port)
    for name, settings in tenants.settings.items():
        with psycopg.connect(_url(settings)) as conn:
            collections = [r[0] for r in conn.execute("SELECT collection FROM ragcache_scopes").fetchall()]
        assert collections and all(c.startswith(f"{name}-ragcache-") for c in collections), collections
        assert sum(chroma.get_collection(c).count() for c in collections) == 1
        assert chroma.get_collection(settings.index.collection).count() >= 1


@pytest.mark.integration
def test_conversations_and_feedback_stay_with_their_tenant_across_replicas(tenants: Tenants) -> None:
    a, b, keys = tenants.a, tenants.b, tenants.keys
    conversation = f"same-id-{uuid.uuid4().hex[:8]}"
    secret = "The vault code is 4711."

    acme = a.chat(secret, conversation, key=keys["acme"], use_cache=False)
    globex = b.chat("What is the vault code?", conversation, key=keys["globex"], use_cache=False)

    # Globex's agent ran on a conversation of its own under the same id: it never saw acme's turn.
    remembered = asyncio.run(checkpointed_texts(_url(tenants.settings["globex"]), conversation))
    assert remembered == ["What is the vault code?"]
    assert secret in asyncio.run(checkpointed_texts(_url(tenants.settings["acme"]), conversation))
    for name, question in (("acme", secret), ("globex", "What is the vault code?")):
        store = ChatStore(sqlalchemy_url(_url(tenants.settings[name])))
        try:
            assert [t.question for t in store.turns(conversation)] == [question]
            listed = {c.id: c for c in store.conversations()}  # the earlier test's conversations too
            assert listed[conversation].turns == 1 and question.startswith(listed[conversation].title.rstrip("…"))
            assert ("4711" in " ".join(c.title for c in listed.values())) == (name == "acme")
        finally:
            store.close()
    # A key of globex cannot rate acme's turn (on either replica); acme's rating is acme's only.
    rating = {"conversation_id": conversation, "turn_id": acme["turn_id"], "score": 1}
    refused = _post_feedback(a, keys["globex"], rating)
    assert refused.status_code == 404 and refused.json()["error"]["type"] == "not_found_error"
    assert _post_feedback(b, keys["acme"], rating).status_code == 200
    assert [r["turn_id"] for r in _feedback(a, keys["acme"])] == [acme["turn_id"]]
    assert _feedback(b, keys["globex"]) == []
    assert globex["turn_id"] != acme["turn_id"]
    with psycopg.connect(tenants.database) as conn:  # nothing of any tenant landed in the default schema
        public = conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        assert public.fetchall() == []


def _post_feedback(replica: Replica, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{replica.url}/v1/feedback", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _feedback(replica: Replica, key: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{replica.url}/v1/feedback", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines() if line]
