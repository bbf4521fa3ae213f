"""The settings object: profiles layer on base, env overrides, and bad input fails loudly."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import PROFILES, SettingsError, load_settings
from config.settings import REPO_ROOT, loopback_url


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_loads_and_is_named(profile: str) -> None:
    settings = load_settings(profile)
    assert settings.profile == profile


def test_profiles_differ_the_way_their_names_say() -> None:
    low, bal, high = (load_settings(p).serving for p in ("low_latency", "balanced", "high_throughput"))
    assert low.speculative_method == "ngram"
    assert bal.speculative_method == "off" and high.speculative_method == "off"
    assert low.max_num_seqs < bal.max_num_seqs < high.max_num_seqs
    assert low.max_num_batched_tokens < bal.max_num_batched_tokens < high.max_num_batched_tokens


def test_profile_overrides_only_what_it_names() -> None:
    base_defaults = load_settings("balanced")
    cpu = load_settings("cpu")
    assert cpu.serving.device == "cpu"
    assert cpu.serving.tool_call_parser == base_defaults.serving.tool_call_parser
    assert cpu.index.embed_model == base_defaults.index.embed_model


def test_env_overrides_profile_and_nested_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_PROFILE", "low_latency")
    monkeypatch.setenv("RAG_SERVING__PORT", "8123")
    monkeypatch.setenv("RAG_INDEX__TOP_K", "9")
    settings = load_settings()
    assert settings.profile == "low_latency"
    assert settings.serving.port == 8123
    assert settings.index.top_k == 9
    # the profile's own values still apply where env is silent
    assert settings.serving.speculative_method == "ngram"


def test_keyword_overrides_beat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_SERVING__PORT", "8123")
    assert load_settings("test", serving={"port": 9001}).serving.port == 9001


def test_unknown_profile_names_the_allowed_ones() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings("fastest")
    message = str(err.value)
    assert "fastest" in message
    for name in PROFILES:
        assert name in message


def test_unknown_profile_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_PROFILE", "turbo")
    with pytest.raises(SettingsError, match="turbo"):
        load_settings()


@pytest.mark.parametrize(
    ("env", "value", "field"),
    [
        ("RAG_SERVING__PORT", "70000", "serving.port"),
        ("RAG_SERVING__QUANTIZATION", "awqq", "serving.quantization"),
        ("RAG_SERVING__GPU_MEMORY_UTILIZATION", "1.5", "serving.gpu_memory_utilization"),
        ("RAG_CACHE__SIMILARITY_THRESHOLD", "0.1", "cache.similarity_threshold"),
        ("RAG_INDEX__CHUNK_SIZE", "many", "index.chunk_size"),
        ("RAG_LLM__STREAM_INTERVAL", "0", "llm.stream_interval"),
        ("RAG_EVALUATION__JUDGE_TIMEOUT_S", "0", "evaluation.judge_timeout_s"),
        ("RAG_EVALUATION__JUDGE_BASE_URL", "localhost:8000/v1", "evaluation.judge_base_url"),
    ],
)
def test_invalid_value_names_the_field(monkeypatch: pytest.MonkeyPatch, env: str, value: str, field: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError) as err:
        load_settings("balanced")
    assert field in str(err.value)


def test_invalid_literal_lists_allowed_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_SERVING__QUANTIZATION", "awqq")
    with pytest.raises(SettingsError) as err:
        load_settings("balanced")
    for allowed in ("awq", "gptq", "fp8"):
        assert allowed in str(err.value)


def test_unknown_field_is_rejected() -> None:
    with pytest.raises(SettingsError, match=r"serving\.not_a_flag"):
        load_settings("balanced", serving={"not_a_flag": 1})


def test_secrets_are_not_printed() -> None:
    settings = load_settings("balanced", api={"api_key": "s3cret-value"})
    assert "s3cret-value" not in repr(settings)
    assert settings.api.api_key is not None
    assert settings.api.api_key.get_secret_value() == "s3cret-value"


def test_every_field_is_documented() -> None:
    settings = load_settings("balanced")
    for section_name in type(settings).model_fields:
        section = getattr(settings, section_name)
        fields = getattr(type(section), "model_fields", None)
        if fields is None:
            continue
        for name, info in fields.items():
            assert info.description, f"{section_name}.{name} has no docstring"


def test_llm_follows_the_local_engine_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_SERVING__PORT", "8123")
    settings = load_settings("cpu")
    assert settings.llm.base_url == "http://127.0.0.1:8123/v1"
    assert settings.llm.model == settings.serving.served_model_name
    monkeypatch.setenv("RAG_LLM__BASE_URL", "http://10.0.0.5:9000/v1")
    assert load_settings("cpu").llm.base_url == "http://10.0.0.5:9000/v1"


def test_every_path_is_absolute_from_the_project_root_wherever_it_is_loaded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # the caller's cwd must not matter
    monkeypatch.setenv("RAG_INDEX__INDEX_DIR", "elsewhere/../idx")
    settings = load_settings("balanced", cache={"dir": "~/ragcache"})
    assert settings.index.index_dir == REPO_ROOT / "idx"
    assert settings.index.docs_dir == REPO_ROOT / "data" / "docs"
    assert settings.chains.conversations_db == REPO_ROOT / "data" / "conversations.sqlite"
    assert settings.serving.run_dir == REPO_ROOT / ".run"
    assert settings.serving.engine_python == REPO_ROOT / ".venv-vllm" / "bin" / "python"
    assert settings.cache.dir == Path("~/ragcache").expanduser()
    assert settings.serving.model == str(REPO_ROOT / "models" / "tiny-chat")
    assert load_settings("balanced", index={"index_dir": tmp_path / "idx"}).index.index_dir == tmp_path / "idx"


def test_hub_model_ids_are_not_taken_for_paths() -> None:
    settings = load_settings("balanced", serving={"model": "Qwen/Qwen2.5-7B-Instruct-AWQ"})
    assert settings.serving.model == "Qwen/Qwen2.5-7B-Instruct-AWQ"


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:8123"),
        ("", "http://127.0.0.1:8123"),
        ("::", "http://127.0.0.1:8123"),
        ("10.1.2.3", "http://10.1.2.3:8123"),
        ("::1", "http://[::1]:8123"),
    ],
)
def test_a_listen_address_becomes_the_url_a_local_client_uses(host: str, url: str) -> None:
    assert loopback_url(host, 8123) == url
    assert load_settings("cpu", serving={"host": host, "port": 8123}).llm.base_url == f"{url}/v1"


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        ({"index": {"chunk_size": 256, "chunk_overlap": 256}}, ["index.chunk_overlap", "index.chunk_size"]),
        (
            {"serving": {"speculative_method": "ngram", "prompt_lookup_min": 6, "prompt_lookup_max": 5}},
            ["serving.prompt_lookup_min", "serving.prompt_lookup_max"],
        ),
        ({"serving": {"speculative_method": "draft"}}, ["serving.draft_model", "serving.speculative_method"]),
        ({"serving": {"speculative_method": "eagle3"}}, ["serving.draft_model", "'eagle3'"]),
        (
            {"serving": {"enable_chunked_prefill": False, "max_model_len": 8192, "max_num_batched_tokens": 4096}},
            ["serving.max_num_batched_tokens", "serving.max_model_len", "serving.enable_chunked_prefill"],
        ),
        ({"llm": {"max_tokens": 4096}}, ["llm.max_tokens", "serving.max_model_len"]),
    ],
)
def test_rules_between_fields_are_checked_at_load_naming_the_fields(
    overrides: dict[str, dict[str, object]], fields: list[str]
) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings("balanced", **overrides)
    for field in fields:
        assert field in str(err.value)


def test_a_rule_between_fields_shows_no_secret_of_the_section() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings("balanced", llm={"api_key": "s3cret-value", "max_tokens": 9000})
    assert "llm.max_tokens" in str(err.value) and "s3cret-value" not in str(err.value)


def test_the_rules_allow_what_they_should() -> None:
    settings = load_settings(
        "balanced",
        index={"chunk_size": 256, "chunk_overlap": 255},
        serving={"speculative_method": "draft", "draft_model": "Qwen/Qwen2.5-0.5B-Instruct", "prompt_lookup_min": 5},
        llm={"base_url": "http://10.0.0.5:9000/v1", "max_tokens": 8192},  # another server: its own limits
    )
    assert settings.index.chunk_overlap == 255 and settings.serving.prompt_lookup_min == 5
    assert settings.llm.max_tokens == 8192


def test_state_mode_is_the_one_switch_to_shared_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_STATE__MODE", "shared")
    monkeypatch.setenv("RAG_STATE__POSTGRES_URL", "postgresql://rag:s3cret@db.internal:5432/rag")

    shared = load_settings("test")
    embedded = load_settings("test", state={"mode": "embedded"})

    assert shared.index.chroma_mode == "http"
    assert shared.index.state_url is not None and shared.cache.state_url is not None
    assert shared.cache.state_url.get_secret_value() == "postgresql://rag:s3cret@db.internal:5432/rag"
    assert (shared.cache.chroma_host, shared.cache.chroma_port) == (shared.index.chroma_host, shared.index.chroma_port)
    assert embedded.index.state_url is None and embedded.cache.state_url is None
    assert embedded.index.chroma_mode == "embedded"
    assert "s3cret" not in repr(shared) and "s3cret" not in str(shared.state)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"state": {"mode": "shared"}}, "state.postgres_url is required when state.mode is 'shared'"),
        (
            {"state": {"mode": "shared", "postgres_url": "mysql://rag:s3cret@db/rag"}},
            "state.postgres_url: Value error, must be a postgresql://USER@HOST:PORT/DB URL (value not shown",
        ),
        (
            {"state": {"mode": "shared", "postgres_url": "postgresql://db/rag"}, "index": {"chroma_mode": "embedded"}},
            "index.chroma_mode must be 'http'",
        ),
    ],
)
def test_shared_mode_refuses_what_cannot_be_shared(overrides: dict[str, dict[str, str]], message: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings("test", **overrides)
    assert message in str(refused.value) and "s3cret" not in str(refused.value)
