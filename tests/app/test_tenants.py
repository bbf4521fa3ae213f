"""Tenants: API keys map to tenants whose documents, index, conversations, feedback and cache are
separate. Two tenants ask the same question over different documents through a real API server
(real Chroma, real GPTCache, the real MiniLM, the session's real vLLM engine)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.store import UnknownTurnError
from app.tenants import KeysFile, TenantError, hash_key, main, tenant_settings
from config import SettingsError, load_settings
from config.settings import Settings
from tests.app.api_server import RunningApi, start_api
from tests.llm_server import LLMServer

QUESTION = "What do the keepers feed the zebras in the Okavango reserve?"
DOCS = {
    "acme": (
        "zebras.md",
        "# Zebra care\n\nThe keepers feed the zebras in the Okavango reserve lucerne hay twice a day.\n",
    ),
    "globex": ("zebra-diet.md", "# Zebra diet\n\nIn the Okavango reserve the keepers feed the zebras fresh carrots.\n"),
}
Tenants = tuple[RunningApi, dict[str, str], Any]
"""The API server, each tenant's key, and the server's tenant registry."""


def test_add_prints_a_key_once_and_stores_only_its_hash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.json"
    assert main(["--keys-file", str(path), "add", "acme"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith("rag_") and len(key) > 40
    stored = path.read_text()
    assert key not in stored and hash_key(key) in stored
    assert path.stat().st_mode & 0o077 == 0, "the keys file is readable by its owner only"
    keys = KeysFile(path)
    assert keys.tenant_for(key) == "acme"
    assert keys.tenant_for(key + "x") is None and keys.tenant_for("") is None
    second = keys.add("acme")
    assert KeysFile(path).tenant_for(second) == "acme" and KeysFile(path).tenant_for(key) == "acme"
    assert main(["--keys-file", str(path), "list"]) == 0
    listed = capsys.readouterr().out
    assert "acme" in listed and key not in listed and key[:8] in listed
    assert main(["--keys-file", str(path), "remove", "acme"]) == 0
    assert KeysFile(path).tenant_for(key) is None and KeysFile(path).tenant_for(second) is None


@pytest.mark.parametrize("name", ["", "../evil", "Acme", "a/b", "a" * 41, "-x", "x-", "a\x00b"])
def test_bad_tenant_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(TenantError, match="tenant name"):
        KeysFile(tmp_path / "keys.json").add(name)
    assert not (tmp_path / "keys.json").exists()


def test_a_damaged_keys_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.json"
    path.write_text('{"keys": [{"tenant": "acme"}]}')
    with pytest.raises(TenantError, match="not a keys file"):
        KeysFile(path)
    assert main(["--keys-file", str(path), "list"]) == 2
    assert "not a keys file" in capsys.readouterr().out


def test_tenant_settings_move_every_data_path_under_the_tenant_folder(tmp_path: Path) -> None:
    settings = load_settings("test", api={"keys_file": tmp_path / "keys.json", "tenants_dir": tmp_path / "t"})
    acme = tenant_settings(settings, "acme")
    root = tmp_path / "t" / "acme"
    paths = [acme.index.docs_dir, acme.index.index_dir, acme.cache.dir, acme.chains.conversations_db, acme.api.store_db]
    assert all(p.is_relative_to(root) for p in paths), paths
    assert len(set(paths)) == len(paths)
    assert acme.index.collection != tenant_settings(settings, "globex").index.collection
    with pytest.raises(SettingsError, match="not both"):
        load_settings("test", api={"keys_file": tmp_path / "keys.json", "api_key": "k"})


@pytest.fixture(scope="module")
def tenants(
    tmp_path_factory: pytest.TempPathFactory, vllm_server: LLMServer
) -> Iterator[tuple[RunningApi, dict[str, str], Any]]:
    """An API server with a keys file of two tenants, each with one document about zebras."""
    from app.api import create_app

    root = tmp_path_factory.mktemp("tenants")
    keys = KeysFile(root / "keys.json")
    tokens = {name: keys.add(name) for name in DOCS}
    settings: Settings = load_settings(
        "test",
        llm={"base_url": vllm_server.base_url, "model": vllm_server.model, "max_tokens": 16},
        api={"keys_file": root / "keys.json", "tenants_dir": root / "tenants"},
        index={"top_k": 3},
    )
    for name, (file, text) in DOCS.items():
        docs = tenant_settings(settings, name).index.docs_dir
        docs.mkdir(parents=True)
        (docs / file).write_text(text, encoding="utf-8")
    app = create_app(settings)
    running = start_api(app)
    try:
        yield running, tokens, app.state.services
    finally:
        running.stop()


def _ask(api: RunningApi, token: str, question: str = QUESTION, **extra: Any) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": question}], **extra}
    response = httpx.post(
        f"{api.base_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=120
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.integration
def test_two_tenants_asking_the_same_question_each_get_only_their_own_documents_and_cache(
    tenants: Tenants,
) -> None:
    api, tokens, _ = tenants
    first_acme = _ask(api, tokens["acme"])
    assert {s["file"] for s in first_acme["sources"]} == {"zebras.md"}
    assert first_acme["cached"] is False
    again_acme = _ask(api, tokens["acme"])
    assert again_acme["cached"] is True, "the tenant's own cache answers its repeated question"
    assert again_acme["choices"][0]["message"]["content"] == first_acme["choices"][0]["message"]["content"]

    first_globex = _ask(api, tokens["globex"])
    assert first_globex["cached"] is False, "never served from another tenant's cache"
    assert {s["file"] for s in first_globex["sources"]} == {"zebra-diet.md"}
    retrieved = json.dumps(first_globex)
    assert "lucerne" not in retrieved and "zebras.md" not in retrieved
    again_globex = _ask(api, tokens["globex"])
    assert again_globex["cached"] is True
    assert {s["file"] for s in again_globex["sources"]} == {"zebra-diet.md"}


@pytest.mark.integration
def test_a_tenants_key_cannot_see_fetch_or_delete_another_tenants_documents(
    tenants: Tenants,
) -> None:
    api, tokens, registry = tenants
    acme = {"Authorization": f"Bearer {tokens['acme']}"}
    listed = httpx.get(f"{api.base_url}/documents", headers=acme, timeout=60).json()["data"]
    assert [d["path"] for d in listed] == ["zebras.md"]
    assert httpx.get(f"{api.base_url}/documents/zebra-diet.md", headers=acme, timeout=30).status_code == 404
    assert httpx.get(f"{api.base_url}/documents/..%2Fglobex%2Fdocs%2Fzebra-diet.md", headers=acme).status_code == 404
    deleted = httpx.delete(f"{api.base_url}/documents/zebra-diet.md", headers=acme, timeout=60)
    assert deleted.status_code == 404 and deleted.json()["error"]["type"] == "not_found_error"
    globex = {"Authorization": f"Bearer {tokens['globex']}"}
    listed = httpx.get(f"{api.base_url}/documents", headers=globex, timeout=60).json()["data"]
    assert [d["path"] for d in listed] == ["zebra-diet.md"], "the other tenant's document is still there"
    assert (registry.service("globex").settings.index.docs_dir / "zebra-diet.md").is_file()


@pytest.mark.integration
def test_conversations_and_uploads_stay_with_their_tenant(tenants: Tenants) -> None:
    api, tokens, registry = tenants
    answer = _ask(api, tokens["acme"], "Tell me about zebra care.", conversation_id="shared-id-1", use_cache=False)
    assert [t.turn_id for t in registry.service("acme").history("shared-id-1")] == [answer["turn_id"]]
    assert registry.service("globex").history("shared-id-1") == [], "another tenant cannot read it by its id"
    with pytest.raises(UnknownTurnError):  # nor rate it: feedback lives in the tenant's own store
        registry.service("globex").record_feedback("shared-id-1", answer["turn_id"], -1)
    registry.service("acme").record_feedback("shared-id-1", answer["turn_id"], 1)
    assert [r["turn_id"] for r in registry.service("acme").export_feedback()] == [answer["turn_id"]]
    assert registry.service("globex").export_feedback() == []
    upload = httpx.post(
        f"{api.base_url}/documents",
        files=[("files", ("secret.md", b"# Secret\n\nThe vault code is 4711.\n", "text/markdown"))],
        headers={"Authorization": f"Bearer {tokens['acme']}"},
        timeout=60,
    )
    assert upload.status_code == 202, upload.text
    assert (registry.service("acme").uploads_dir / "secret.md").is_file()
    assert not (registry.service("globex").uploads_dir / "secret.md").exists()


@pytest.mark.integration
def test_unknown_or_missing_keys_get_401_and_health_names_no_tenant(
    tenants: Tenants,
) -> None:
    api, tokens, _ = tenants
    for headers in ({}, {"Authorization": "Bearer rag_unknown"}, {"Authorization": f"Basic {tokens['acme']}"}):
        response = httpx.get(f"{api.base_url}/documents", headers=headers, timeout=30)
        assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    health = httpx.get(f"{api.url}/health", timeout=30)
    assert health.status_code == 200
    assert "acme" not in health.text and "globex" not in health.text and "zebra" not in health.text
