"""Tenants: API keys that map to separate document sets, indexes, conversations, feedback and caches.

A keys file (`api.keys_file`, JSON) holds one SHA-256 hash per key, never the key itself:

    python -m app.tenants add acme        # prints a new key for tenant "acme" once
    python -m app.tenants list            # tenants and the first characters of their keys
    python -m app.tenants remove acme     # every key of the tenant stops working

Keys are 256-bit random tokens, so a plain SHA-256 is enough (nothing to brute-force; a slow
password hash would only slow every request). Each tenant is a folder under `api.tenants_dir`
holding what the settings' paths would otherwise hold (`docs/`, `index/`, `cache/`,
`conversations.sqlite`, `app.sqlite`; a Chroma server gets a collection per tenant), and one
`ChatService` over it: the isolation is by construction, since no object of one tenant's service
can reach another's folders. Without a keys file the API serves one service as before.

In shared mode (`state.mode: shared`) the same holds on the servers: each tenant's PostgreSQL
connections carry `search_path` = its own schema `tenant_<name>` (created on first use), so its
conversations, turns, feedback, jobs and cached answers are tables of that schema; its Chroma
collections (documents and cache vectors) carry its name; its ingest lock is keyed by its
collection. `api.tenants_dir` then holds what stays on disk (docstore, BM25, manifest, uploads)
and must be one folder every replica sees, like `index.index_dir` without tenants.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from pydantic import SecretStr

from config.settings import Settings

if TYPE_CHECKING:
    from app.service import ChatService, PartHealth

log = logging.getLogger(__name__)

TENANT_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,38}[a-z0-9])?$")
"""Tenant names are folder names and the end of a Chroma collection name (which must end alphanumeric)."""
SCHEMA_PREFIX = "tenant_"
"""A tenant's PostgreSQL schema is this + its name: one schema per name (a fixed prefix on distinct
names), never `public` or a `pg_` schema, at most 47 characters (PostgreSQL allows 63)."""
KEY_PREFIX = "rag_"
SHOWN_CHARS = 8
"""Characters of a key kept in clear in the file (to tell keys apart in `list`)."""


class TenantError(ValueError):
    """A bad tenant name, a damaged keys file or an unknown tenant; the message says which."""


@dataclass(frozen=True)
class KeyRecord:
    tenant: str
    sha256: str
    shown: str
    """The key's first characters, e.g. `rag_Ab3x`."""
    created_at: float


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_name(name: str) -> str:
    if not TENANT_NAME.match(name):
        raise TenantError(
            f"tenant name {name!r} is invalid: 1-40 of a-z, 0-9, '_' and '-', starting with a letter/digit"
        )
    return name


class KeysFile:
    """The keys file: read whole, written atomically with owner-only permissions."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[KeyRecord] = []
        if path.exists():
            self.records = self._read()

    def _read(self) -> list[KeyRecord]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return [KeyRecord(**entry) for entry in data["keys"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise TenantError(f"{self.path}: not a keys file written by `python -m app.tenants` ({exc})") from None

    def tenants(self) -> list[str]:
        return sorted({r.tenant for r in self.records})

    def add(self, tenant: str) -> str:
        """A new key for `tenant` (created if new); the key itself is returned once and not stored."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        self.records.append(KeyRecord(check_name(tenant), hash_key(key), key[:SHOWN_CHARS], time.time()))
        self._write()
        return key

    def remove(self, tenant: str) -> int:
        """Drop every key of `tenant` (its data folder stays); returns how many keys were dropped."""
        kept = [r for r in self.records if r.tenant != tenant]
        dropped = len(self.records) - len(kept)
        if not dropped:
            raise TenantError(f"no tenant {tenant!r} in {self.path}")
        self.records = kept
        self._write()
        return dropped

    def tenant_for(self, key: str) -> str | None:
        """The tenant a presented key belongs to (every hash compared in constant time), or None."""
        digest = hash_key(key)
        found = None
        for record in self.records:
            if hmac.compare_digest(digest, record.sha256):
                found = record.tenant
        return found

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        body = json.dumps({"keys": [r.__dict__ for r in self.records]}, indent=2)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(body + "\n")
        os.replace(tmp, self.path)


def tenant_settings(settings: Settings, tenant: str) -> Settings:
    """The settings of one tenant: every data path moved under `api.tenants_dir / tenant`; in shared
    mode also its own PostgreSQL schema and its name on its Chroma collections (cache ones too)."""
    root = settings.api.tenants_dir / check_name(tenant)
    update = {
        "index": settings.index.model_copy(
            update={
                "docs_dir": root / "docs",
                "index_dir": root / "index",
                "collection": f"{settings.index.collection[:20]}-{tenant}",
            }
        ),
        "chains": settings.chains.model_copy(update={"conversations_db": root / "conversations.sqlite"}),
        "cache": settings.cache.model_copy(update={"dir": root / "cache"}),
        "api": settings.api.model_copy(update={"store_db": root / "app.sqlite"}),
    }
    shared_url = _shared_url(settings)
    if shared_url is not None:
        # model_copy runs no validator: fill each copy `Settings._place_state` filled from the URL.
        url = SecretStr(with_search_path(shared_url, tenant_schema(tenant)))
        update["state"] = settings.state.model_copy(update={"postgres_url": url})
        update["index"] = update["index"].model_copy(update={"state_url": url})
        update["cache"] = update["cache"].model_copy(update={"state_url": url, "collection_prefix": f"{tenant}-"})
    return settings.model_copy(update=update)


def _shared_url(settings: Settings) -> str | None:
    """The PostgreSQL URL of shared mode (every tenant's schema is on it), None in embedded mode."""
    url = settings.state.postgres_url
    return url.get_secret_value() if url is not None and settings.state.mode == "shared" else None


def tenant_schema(tenant: str) -> str:
    return SCHEMA_PREFIX + check_name(tenant)


def with_search_path(url: str, schema: str) -> str:
    """`url` whose connections use `schema` for every unqualified table (created or read): libpq's
    `options=-csearch_path=...`, which psycopg, SQLAlchemy and LangGraph's saver all pass on.
    Options already in the URL are kept; `schema` must be a checked name (it is not escaped)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = [value for name, value in query if name == "options"] + [f'-csearch_path="{schema}"']
    query = [(name, value) for name, value in query if name != "options"] + [("options", " ".join(options))]
    # quote, not quote_plus: libpq decodes %20 in a URI but keeps a '+' as it is.
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def ensure_schema(url: str, schema: str) -> None:
    """Create `schema` if it is missing. Replicas opening a new tenant at the same moment would race
    in `CREATE SCHEMA IF NOT EXISTS` (a duplicate-key error): a transaction lock takes them in turn."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, connect_timeout=10) as conn:  # one transaction, committed on exit
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"ragchat schema {schema}",))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))


class ServiceRegistry:
    """One `ChatService` per tenant, opened on the tenant's first request and closed with the registry.

    Without a keys file there is one tenant, `None`, served by the settings as they are.
    """

    def __init__(self, settings: Settings, service: ChatService | None = None) -> None:
        self.settings = settings
        self.keys = KeysFile(settings.api.keys_file) if settings.api.keys_file is not None else None
        self._services: dict[str | None, ChatService] = {}
        self._owned = service is None
        if service is not None:
            if self.keys is not None:
                raise TenantError("a ready-made service serves one tenant; api.keys_file asks for one per tenant")
            self._services[None] = service
        self._lock = threading.Lock()
        self._keys_lock = threading.Lock()
        self._keys_stamp = _stamp(self.keys.path) if self.keys is not None else None

    @property
    def multi_tenant(self) -> bool:
        return self.keys is not None

    def tenant_for(self, key: str) -> str | None:
        """The key's tenant; the keys file is re-read when it changed, so `add`/`remove` need no restart."""
        assert self.keys is not None
        with self._keys_lock:  # not the services' lock: a tenant's first request may hold that for seconds
            stamp = _stamp(self.keys.path)
            if stamp != self._keys_stamp:
                self.keys, self._keys_stamp = KeysFile(self.keys.path), stamp
            keys = self.keys
        return keys.tenant_for(key)

    def service(self, tenant: str | None) -> ChatService:
        """The tenant's service (built on first use: its index is built from its documents folder)."""
        from app.service import ChatService

        with self._lock:
            service = self._services.get(tenant)
            if service is None:
                if (tenant is None) == self.multi_tenant:
                    raise TenantError("a tenant is required exactly when api.keys_file is set")
                settings = self.settings if tenant is None else tenant_settings(self.settings, tenant)
                if tenant is not None:
                    (settings.index.docs_dir / settings.api.uploads_dir).mkdir(parents=True, exist_ok=True)
                    shared_url = _shared_url(self.settings)
                    if shared_url is not None:
                        ensure_schema(shared_url, tenant_schema(tenant))
                    log.info("opening tenant %s", tenant)
                service = ChatService.from_settings(settings)
                self._services[tenant] = service
            return service

    def open_services(self) -> list[ChatService]:
        with self._lock:
            return list(self._services.values())

    def health(self) -> dict[str, PartHealth]:
        """Engine, index and cache. With tenants (the route has no key) the details name no tenant
        and show none of its figures: parts are checked over the tenants served so far."""
        from app.service import PartHealth, probe_engine

        if not self.multi_tenant:
            return self.service(None).health()
        checks = [service.health() for service in self.open_services()]
        if not checks:
            engine = probe_engine(self.settings)
            idle = PartHealth(True, "no tenant served yet")
            return {"engine": PartHealth(engine.healthy, engine.detail), "index": idle, "cache": idle}
        parts = {"engine": checks[0]["engine"]}
        for name in ("index", "cache"):
            failing = sum(not check[name].ok for check in checks)
            detail = (
                f"failing for {failing} of {len(checks)} open tenants" if failing else f"{len(checks)} open tenants"
            )
            parts[name] = PartHealth(not failing, detail)
        return parts

    def close(self) -> None:
        with self._lock:
            services, self._services = list(self._services.values()), {}
        if self._owned:
            for service in services:
                service.close()


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m app.tenants add|list|remove`: manage the API keys file."""
    from config import SettingsError, load_settings

    parser = argparse.ArgumentParser(prog="python -m app.tenants", description="Manage API keys and tenants.")
    parser.add_argument("--profile", help="settings profile (for api.keys_file)")
    parser.add_argument("--keys-file", type=Path, help="keys file (default: api.keys_file)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("add", help="add a tenant or a second key for one; prints the key once").add_argument("name")
    sub.add_parser("list", help="tenants and the first characters of their keys")
    sub.add_parser("remove", help="revoke every key of a tenant (its data stays)").add_argument("name")
    args = parser.parse_args(argv)
    try:
        path = args.keys_file or load_settings(args.profile).api.keys_file
        if path is None:
            print("error: set api.keys_file (RAG_API__KEYS_FILE) or pass --keys-file")
            return 2
        keys = KeysFile(Path(path))
        if args.command == "add":
            key = keys.add(args.name)
            print(f"tenant {args.name}: new API key (shown once, only its hash is stored in {keys.path}):\n{key}")
        elif args.command == "list":
            for record in keys.records:
                print(f"{record.tenant}\t{record.shown}…\t{time.strftime('%Y-%m-%d', time.gmtime(record.created_at))}")
        else:
            print(f"tenant {args.name}: {keys.remove(args.name)} key(s) revoked")
    except (TenantError, SettingsError) as exc:
        print(f"error: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
