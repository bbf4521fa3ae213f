"""The offline model kit: a tiny random-weights Qwen2 chat model built locally in seconds.

No model hub is reachable on the project machines, so tests and offline demos serve this model.
Its answers are noise; it exists to exercise the real serving path (tokenizer, chat template with
tools, batching, prefix caching, speculation) end to end.
"""

from __future__ import annotations

import importlib
import inspect
import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from config.settings import REPO_ROOT

if TYPE_CHECKING:
    from tokenizers import Tokenizer

DEFAULT_DIR = REPO_ROOT / "models" / "tiny-chat"
SEED = 1234
VOCAB_SIZE = 2048
MARKER = "tiny_model.json"
"""Written last, so a folder holding it is complete; it also records how the model was built."""

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOOL_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]

# ChatML with a tools section in the Qwen2.5 layout, so vLLM's `hermes` tool parser reads the
# <tool_call>{"name": ..., "arguments": ...}</tool_call> blocks a real Qwen model would emit.
CHAT_TEMPLATE = """\
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}
{%- else %}{{- 'You are a helpful assistant.\\n\\n' }}{%- endif %}
{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n' }}
{{- 'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}
{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments '
    'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n'
    '{\"name\": <function-name>, \"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}
{{- '<|im_start|>' + message.role + '\\n' + (message.content or '') + '<|im_end|>\\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>assistant' }}
{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
{%- for tool_call in message.tool_calls %}
{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
{{- '\\n<tool_call>\\n{\"name\": \"' + tool_call.name + '\", \"arguments\": ' }}
{%- if tool_call.arguments is string %}{{- tool_call.arguments }}
{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}
{{- '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif message.role == 'tool' %}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""

# Standard-library modules whose documentation is the tokenizer's training text: English prose
# and code that ships with Python, so the build needs no download and no data file.
_CORPUS_MODULES = (
    "argparse",
    "collections",
    "csv",
    "dataclasses",
    "functools",
    "itertools",
    "json",
    "logging",
    "pathlib",
    "re",
    "string",
    "textwrap",
    "unittest",
)


def is_built(path: Path = DEFAULT_DIR) -> bool:
    return (path / MARKER).is_file()


def build_tiny_model(path: Path = DEFAULT_DIR, *, force: bool = False) -> bool:
    """Build the model into `path`; returns False when a complete one is already there."""
    if is_built(path) and not force:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the target and rename, so an interrupted build never leaves a half folder
    # that a server would then fail to load.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}-") as tmp:
        staging = Path(tmp) / "model"
        _save_model(staging)
        if is_built(path) and not force:  # a concurrent build finished first: keep its folder
            return False
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    return True


def _save_model(out: Path) -> None:
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a 1 MB file needs no progress bar
    torch.manual_seed(SEED)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        model_max_length=32768,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,  # head_dim 64: vLLM's CPU attention rejects smaller heads
        max_position_embeddings=32768,
        initializer_range=0.3,  # the default 0.02 makes greedy output a run of newlines
        tie_word_embeddings=True,
        # The trainer numbers special tokens first, in SPECIAL_TOKENS order.
        bos_token_id=SPECIAL_TOKENS.index("<|endoftext|>"),
        eos_token_id=SPECIAL_TOKENS.index("<|im_end|>"),
        pad_token_id=SPECIAL_TOKENS.index("<|endoftext|>"),
    )
    model = Qwen2ForCausalLM(config).bfloat16()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {"kind": "tiny random-weights Qwen2 chat model", "seed": SEED, "parameters": model.num_parameters()}
    (out / MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _train_tokenizer() -> Tokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.add_tokens(TOOL_TOKENS)
    return tok


def corpus() -> list[str]:
    texts = [CHAT_TEMPLATE]
    for name in _CORPUS_MODULES:
        module = importlib.import_module(name)
        texts.append(inspect.getdoc(module) or "")
        # The public names only: `dir()` also shows attributes a module creates lazily on first use
        # (`unittest.IsolatedAsyncioTestCase`), so the corpus, and the tokenizer, depended on what the
        # process had touched before (pytest touches more than the CLI).
        for attribute in sorted(getattr(module, "__all__", None) or dir(module)):
            member = getattr(module, attribute, None)
            doc = inspect.getdoc(member) if callable(member) else None
            if doc:
                texts.append(doc)
    return texts
