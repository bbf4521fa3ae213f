"""vLLM 0.32's own parser and engine-args validation (offline, in .venv-vllm) judge our commands.

One validator process checks every command of this module (importing vLLM costs seconds).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from config import PROFILES, load_settings
from config.settings import REPO_ROOT
from serving.command import EngineCommand, render_command, validate_in_engine

pytestmark = pytest.mark.engine


def docs_gpu_example() -> dict[str, object]:
    """The `serving:` settings of the Ray example in docs/scaling.md (kept true by the test below)."""
    text = (REPO_ROOT / "docs" / "scaling.md").read_text(encoding="utf-8")
    match = re.search(r"```yaml\n(serving:.*?)```", text, re.DOTALL)
    assert match, "docs/scaling.md lost its YAML example of serving settings"
    return dict(yaml.safe_load(match.group(1))["serving"])


# A deliberately wrong value per kind of mistake, and a word the rejection must contain.
WRONG: dict[str, tuple[dict[str, object], str]] = {
    "misspelt quantization (hub model)": (
        {"model": "Qwen/Qwen2.5-7B-Instruct", "extra_args": ["--quantization", "awqq"]},
        "awqq",
    ),
    "misspelt quantization (local model)": ({"extra_args": ["--quantization", "gptqq"]}, "gptqq"),
    "quantization the checkpoint does not have": ({"extra_args": ["--quantization", "awq"]}, "awq"),
    "bad speculative config": (  # (settings refuse min > max themselves; extra_args reach vLLM unchecked)
        {"extra_args": ["--speculative-config", '{"method": "ngram", "prompt_lookup_min": 6, "prompt_lookup_max": 5}']},
        "prompt_lookup_min",
    ),
    "unknown speculative method": ({"extra_args": ["--speculative-config", '{"method": "ngramz"}']}, "method"),
    "unknown tool parser": ({"tool_call_parser": "hermez"}, "hermez"),
    "unknown flag": ({"extra_args": ["--enable-turbo"]}, "--enable-turbo"),
    "out-of-range number": ({"extra_args": ["--max-num-seqs", "-4"]}, "max_num_seqs"),
    "context longer than the model": ({"max_model_len": 65536}, "max_model_len"),
    "tensor parallel size the heads cannot be split by": (
        {"tensor_parallel_size": 3, "distributed_executor_backend": "ray"},
        "divisible by tensor parallel size (3)",
    ),
}
VALID_EXTRAS: dict[str, dict[str, object]] = {
    "draft-model speculation (local draft)": {"speculative_method": "draft", "num_speculative_tokens": 2},
    "hub model with AWQ, draft model and fp8 KV (GPU)": {
        "model": "Qwen/Qwen2.5-7B-Instruct-AWQ",
        "quantization": "awq",
        "kv_cache_dtype": "fp8",
        "speculative_method": "draft",
        "draft_model": "Qwen/Qwen2.5-0.5B-Instruct",
    },
    "tensor x pipeline parallel over Ray (local model)": {
        "tensor_parallel_size": 2,
        "pipeline_parallel_size": 2,
        "distributed_executor_backend": "ray",
    },
    "GPU-only example of docs/scaling.md (Ray, TP 4 x PP 2)": docs_gpu_example(),
}


@pytest.fixture(scope="module")
def verdicts(tiny_model_path: Path) -> dict[tuple[str, str], str | None]:
    cases: dict[tuple[str, str], EngineCommand] = {}
    for profile in PROFILES:
        serving = load_settings(profile, serving={"model": str(tiny_model_path)}).serving
        for device in ("cuda", "cpu"):
            cases[(profile, device)] = render_command(serving, device)
    for name, extra in VALID_EXTRAS.items():
        override = {"model": str(tiny_model_path), "draft_model": str(tiny_model_path), **extra}
        serving = load_settings("balanced", serving=override).serving
        cases[(name, "cuda")] = render_command(serving, "cuda")
    for name, (override, _) in WRONG.items():
        serving = load_settings("test", serving={"model": str(tiny_model_path), **override}).serving
        cases[(name, "cpu")] = render_command(serving, "cpu")
    return dict(zip(cases, validate_in_engine(list(cases.values())), strict=True))


@pytest.mark.parametrize("device", ["cuda", "cpu"])
@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_command_is_accepted_by_vllm(
    verdicts: dict[tuple[str, str], str | None], profile: str, device: str
) -> None:
    assert verdicts[(profile, device)] is None


@pytest.mark.parametrize("name", VALID_EXTRAS)
def test_other_speculation_and_quantization_options_are_accepted(
    verdicts: dict[tuple[str, str], str | None], name: str
) -> None:
    assert verdicts[(name, "cuda")] is None


@pytest.mark.parametrize("name", WRONG)
def test_a_deliberately_wrong_value_is_rejected_with_a_reason(
    verdicts: dict[tuple[str, str], str | None], name: str
) -> None:
    verdict = verdicts[(name, "cpu")]
    assert verdict is not None
    assert WRONG[name][1] in verdict
    assert "\n" not in verdict and len(verdict) <= 600
