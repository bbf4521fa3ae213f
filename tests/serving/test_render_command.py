"""Rendering settings into the vLLM server command: every flag the issue lists, GPU vs CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from config import PROFILES, SettingsError, load_settings
from config.settings import REPO_ROOT
from serving.command import ENGINE_MODULE, render_command
from serving.launch import EngineServer


def _flags(args: tuple[str, ...]) -> set[str]:
    return {a for a in args if a.startswith("--")}


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_renders_for_gpu_and_cpu(profile: str) -> None:
    serving = load_settings(profile).serving
    gpu = render_command(serving, "cuda")
    cpu = render_command(serving, "cpu")
    assert gpu.argv[1:3] == ["-m", ENGINE_MODULE] and gpu.argv[0].endswith("python")
    for command in (gpu, cpu):
        assert command.value("--served-model-name") == serving.served_model_name
        assert command.value("--port") == str(serving.port)
        assert command.value("--max-model-len") == str(serving.max_model_len)
        assert command.value("--max-num-seqs") == str(serving.max_num_seqs)
        assert command.value("--max-num-batched-tokens") == str(serving.max_num_batched_tokens)
        assert "--enable-prefix-caching" in command.args and "--enable-chunked-prefill" in command.args
        assert command.value("--tool-call-parser") == "hermes" and "--enable-auto-tool-choice" in command.args
    assert gpu.value("--gpu-memory-utilization") == str(serving.gpu_memory_utilization)
    offline = {"HF_HUB_OFFLINE": "1"}  # every profile serves the local tiny model by default
    assert gpu.env == offline and gpu.notes == ()
    assert cpu.env == {**offline, "VLLM_CPU_KVCACHE_SPACE": str(serving.cpu_kvcache_space_gb)}
    assert "--gpu-memory-utilization" not in cpu.args


def test_profiles_render_the_differences_their_names_promise() -> None:
    low, bal, high = (
        render_command(load_settings(p).serving, "cuda") for p in ("low_latency", "balanced", "high_throughput")
    )
    spec = json.loads(low.value("--speculative-config") or "")
    assert spec == {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 2, "prompt_lookup_max": 5}
    assert bal.value("--speculative-config") is None and high.value("--speculative-config") is None
    assert int(low.value("--max-num-batched-tokens") or 0) < int(bal.value("--max-num-batched-tokens") or 0)
    assert int(bal.value("--max-num-seqs") or 0) < int(high.value("--max-num-seqs") or 0)
    assert high.value("--kv-cache-dtype") == "fp8"


def test_gpu_only_flags_are_dropped_on_cpu_with_one_note_each() -> None:
    serving = load_settings("high_throughput", serving={"quantization": "awq"}).serving
    gpu = render_command(serving, "cuda")
    cpu = render_command(serving, "cpu")
    assert gpu.value("--quantization") == "awq" and gpu.value("--kv-cache-dtype") == "fp8"
    dropped = {"--quantization", "--kv-cache-dtype", "--gpu-memory-utilization"}
    assert not dropped & _flags(cpu.args)
    assert len(cpu.notes) == 3
    for flag in dropped:
        assert sum(flag in note for note in cpu.notes) == 1
    assert _flags(gpu.args) - _flags(cpu.args) == dropped


@pytest.mark.parametrize("method", ["draft", "eagle3"])
def test_draft_and_eagle3_speculation_name_their_model(method: str) -> None:
    serving = load_settings(
        "balanced",
        serving={
            "speculative_method": method,
            "draft_model": "Qwen/Qwen2.5-0.5B-Instruct",
            "num_speculative_tokens": 3,
        },
    ).serving
    spec = json.loads(render_command(serving, "cuda").value("--speculative-config") or "")
    assert spec == {
        "method": {"draft": "draft_model", "eagle3": "eagle3"}[method],
        "model": "Qwen/Qwen2.5-0.5B-Instruct",
        "num_speculative_tokens": 3,
    }


def test_multi_gpu_and_multi_node_flags() -> None:
    serving = load_settings(
        "balanced",
        serving={"tensor_parallel_size": 4, "pipeline_parallel_size": 2, "distributed_executor_backend": "ray"},
    ).serving
    command = render_command(serving, "cuda")
    assert command.value("--tensor-parallel-size") == "4"
    assert command.value("--pipeline-parallel-size") == "2"
    assert command.value("--distributed-executor-backend") == "ray"
    assert "--distributed-executor-backend" not in render_command(load_settings("balanced").serving, "cuda").args


def test_switches_off_and_extra_args_are_appended_verbatim() -> None:
    serving = load_settings(
        "balanced",
        serving={
            "enable_prefix_caching": False,
            "enable_chunked_prefill": False,
            "enable_tool_calling": False,
            "extra_args": ["--seed", "7"],
        },
    ).serving
    args = render_command(serving, "cpu").args
    assert "--no-enable-prefix-caching" in args and "--no-enable-chunked-prefill" in args
    assert "--enable-auto-tool-choice" not in args and "--tool-call-parser" not in args
    assert args[-2:] == ("--seed", "7")


def test_env_override_reaches_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_SERVING__PORT", "8123")
    monkeypatch.setenv("RAG_SERVING__MAX_NUM_SEQS", "5")
    command = render_command(load_settings("cpu").serving, "cpu")
    assert command.value("--port") == "8123" and command.value("--max-num-seqs") == "5"


def test_shell_form_quotes_the_json_and_leads_with_env() -> None:
    command = render_command(load_settings("low_latency").serving, "cpu")
    shell = command.shell()
    assert shell.startswith("HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1 ")
    assert '\'{"method":"ngram"' in shell


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("models/tiny-chat", str(REPO_ROOT / "models" / "tiny-chat")),
        ("./models/x", str(REPO_ROOT / "models" / "x")),
        ("/opt/m", "/opt/m"),
        ("~/m", str(Path("~/m").expanduser())),
        ("Qwen/Qwen2.5-7B-Instruct-AWQ", "Qwen/Qwen2.5-7B-Instruct-AWQ"),
    ],
)
def test_the_command_gets_local_folders_absolute_and_hub_ids_as_given(model: str, expected: str) -> None:
    command = render_command(load_settings("balanced", serving={"model": model}).serving, "cpu")
    assert command.value("--model") == expected


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"quantization": "awqq"}, "serving.quantization"),
        ({"speculative_method": "medusa"}, "serving.speculative_method"),
        ({"max_num_seqs": 0}, "serving.max_num_seqs"),
        ({"gpu_memory_utilization": 1.5}, "serving.gpu_memory_utilization"),
        ({"port": 70000}, "serving.port"),
        ({"kv_cache_dtype": "int4"}, "serving.kv_cache_dtype"),
    ],
)
def test_bad_values_fail_at_settings_time_naming_the_field(override: dict[str, object], field: str) -> None:
    with pytest.raises(SettingsError, match=field.replace(".", r"\.")):
        load_settings("balanced", serving=override)


def test_hub_models_may_reach_the_hub_local_ones_stay_offline() -> None:
    local = render_command(load_settings("balanced").serving, "cuda")
    hub = render_command(load_settings("balanced", serving={"model": "Qwen/Qwen2.5-7B-Instruct-AWQ"}).serving, "cuda")
    assert local.env.get("HF_HUB_OFFLINE") == "1"
    assert "HF_HUB_OFFLINE" not in hub.env


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "127.0.0.1"])
def test_the_engine_and_the_chains_agree_where_a_listen_address_is_reached(host: str) -> None:
    settings = load_settings("cpu", serving={"host": host, "port": 8123})
    assert EngineServer(settings.serving, device="cpu").base_url == settings.llm.base_url == "http://127.0.0.1:8123/v1"
