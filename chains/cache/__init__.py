"""The semantic cache of whole chat turns, on GPTCache's storage: sqlite + faiss, or (shared mode)
PostgreSQL + a Chroma server.

- `semantic`: `SemanticCache` (lookup / store / scopes / recovery) and its result types;
- `storage`: one scope's GPTCache store (read path, deferred faiss flush, crash reconcile; the
  shared-mode store and its scope registry) and the guard that stops GPTCache from pip-installing at run time;
- `embedding`: the question embedding, through the project's one embedding loader;
- `guards`: cheap checks that veto hits on questions asking something else;
- `verifier`: the optional second opinion of the served model.
"""

from chains.cache.embedding import EmbeddingError
from chains.cache.guards import ALL_GUARDS, GuardName, rejection
from chains.cache.semantic import CachedAnswer, CacheHit, CacheScope, CacheStats, Lookup, SemanticCache
from chains.cache.storage import InstallDisabledError, SharedServers, disable_runtime_installs
from chains.cache.verifier import Verifier, model_verifier

__all__ = [
    "ALL_GUARDS",
    "CacheHit",
    "CacheScope",
    "CacheStats",
    "CachedAnswer",
    "EmbeddingError",
    "GuardName",
    "InstallDisabledError",
    "Lookup",
    "SemanticCache",
    "SharedServers",
    "Verifier",
    "disable_runtime_installs",
    "model_verifier",
    "rejection",
]
