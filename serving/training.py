"""Train the offline tiny model on chat JSONL (OpenAI messages + tools, last message the target).

Serving stands alone: the examples come from a file (the chains render them, `chains.synthetic`);
this module only applies the model's chat template, trains a byte-level BPE and a small Qwen2 on
the assistant targets, and measures held-out exact match per behaviour.

Cheap by construction, because it must run in minutes on two CPU cores:
- examples that share their first chat block (system prompt + tool schema) are batched together
  and that block is computed once per batch, its keys and values shared by every example;
- the loss, and the output projection, cover only the target tokens;
- the BPE vocabulary is large enough that most words are one token, so sequences stay short.
Greedy decoding reproduces a target exactly iff every teacher-forced argmax is the target token,
so held-out exact match is measured in batched forward passes instead of generation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

log = logging.getLogger("serving")

TRAINER_VERSION = "1"
"""Part of the recipe hash: bump it with any change here or in `serving.tiny_model` that changes
the trained weights, so a cached build is never reused for other code."""


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights; its hash names a build."""

    seed: int = 1234
    threads: int = 1
    """One thread: on a shared two-core machine two OpenMP threads ran six times slower (and one
    is deterministic)."""
    vocab_size: int = 6144
    hidden_size: int = 128
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 2
    num_kv_heads: int = 2
    steps: int = 900
    batch_size: int = 16
    lr: float = 5e-3
    warmup_steps: int = 50
    max_target_tokens: int = 96
    max_tokens: int = 640
    """Longer examples are dropped from training (the long tail costs the most)."""

    def fingerprint(self, *data_files: Path, code: Sequence[str] = ()) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        for path in data_files:
            digest.update(path.read_bytes())
        for text in code:
            digest.update(text.encode())
        return digest.hexdigest()[:16]


@dataclass
class Encoded:
    """One example: its shared first block, the rest of the prompt and the target, as token ids."""

    kind: str
    prefix: tuple[int, ...]
    rest: list[int]
    target: list[int]


@dataclass
class TrainReport:
    steps: int
    seconds: float
    threads: int
    final_loss: float
    examples: int
    tokens_per_example: float
    accuracy: dict[str, float] = field(default_factory=dict)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Chat examples; a line that is not a chat with an assistant last message is an error."""
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
                messages = row["messages"]
                ok = isinstance(messages, list) and messages and messages[-1]["role"] == "assistant"
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not a chat example ({exc})") from exc
            if not ok:
                raise ValueError(f"{path}:{number}: the last message must be the assistant's target")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no examples")
    return rows


def render(tokenizer: PreTrainedTokenizerFast, row: dict[str, Any]) -> tuple[str, str]:
    """(prompt, target) text: the prompt ends with the generation prompt, the target with <|im_end|>."""
    messages, tools = row["messages"], row.get("tools") or None
    prompt = tokenizer.apply_chat_template(messages[:-1], tools=tools, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    assert isinstance(prompt, str) and isinstance(full, str)
    if not full.startswith(prompt):
        raise ValueError("the chat template renders the target's turn differently from the generation prompt")
    target = full[len(prompt) :]
    end = target.rindex("<|im_end|>") + len("<|im_end|>")
    return prompt, target[:end]


def encode(tokenizer: PreTrainedTokenizerFast, row: dict[str, Any]) -> Encoded:
    prompt, target = render(tokenizer, row)
    # Only a system block is shared by many examples; a first user block is each example's own.
    cut = prompt.find("<|im_end|>\n") if prompt.startswith("<|im_start|>system") else -1
    cut = cut + len("<|im_end|>\n") if cut >= 0 else 0
    prefix = tokenizer.encode(prompt[:cut]) if cut else []
    rest = tokenizer.encode(prompt[cut:])
    return Encoded(str(row.get("kind", "all")), tuple(prefix), rest, tokenizer.encode(target))


def train_tokenizer(texts: Iterator[str], vocab_size: int, special: Sequence[str], added: Sequence[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens(list(added))
    return tok


def _batches(items: list[Encoded], batch_size: int, rng: random.Random) -> Iterator[list[Encoded]]:
    """Endless batches; each holds examples of one shared prefix, of similar length."""
    groups: dict[tuple[int, ...], list[Encoded]] = defaultdict(list)
    for item in items:
        groups[item.prefix].append(item)
    keys = sorted(groups, key=lambda k: (len(groups[k]), k))
    weights = [len(groups[k]) for k in keys]
    while True:
        key = rng.choices(keys, weights)[0]
        group = groups[key]
        pivot = rng.randrange(len(group))
        # Neighbours in length: sample around a random example of a length-sorted group.
        ordered = sorted(range(len(group)), key=lambda i: len(group[i].rest) + len(group[i].target))
        where = ordered.index(pivot)
        lo = max(0, min(where - batch_size // 2, len(ordered) - batch_size))
        yield [group[i] for i in ordered[lo : lo + batch_size]]


def _forward(model: Qwen2ForCausalLM, batch: list[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the positions that predict target tokens, and those tokens."""
    import torch
    from transformers import DynamicCache

    prefix = batch[0].prefix
    seqs = [item.rest + item.target for item in batch]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq)
    cache = None
    if prefix:
        cache = DynamicCache(config=model.config)
        model.model(input_ids=torch.tensor([prefix]), past_key_values=cache, use_cache=True)
        cache.batch_repeat_interleave(len(batch))
    # Right padding: with causal attention the pads never influence the real tokens.
    hidden = model.model(input_ids=ids, past_key_values=cache, use_cache=cache is not None).last_hidden_state
    rows: list[int] = []
    cols: list[int] = []
    labels: list[int] = []
    for row, item in enumerate(batch):
        start = len(item.rest)
        for offset, token in enumerate(item.target):
            rows.append(row)
            cols.append(start + offset - 1)  # `rest` ends with the generation prompt: never empty
            labels.append(token)
    picked = hidden[torch.tensor(rows), torch.tensor(cols)]
    return model.lm_head(picked), torch.tensor(labels)


def train(
    model: Qwen2ForCausalLM, items: list[Encoded], recipe: Recipe, pad_id: int, progress_every: int = 50
) -> tuple[float, float]:
    """AdamW with warmup and cosine decay on target tokens only; returns (seconds, last loss)."""
    import torch

    rng = random.Random(recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.98), weight_decay=0.0)

    def schedule(step: int) -> float:
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    started = time.monotonic()
    losses: list[float] = []
    batches = _batches(items, recipe.batch_size, rng)
    for step in range(recipe.steps):
        logits, labels = _forward(model, next(batches), pad_id)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        losses.append(loss.item())
        if progress_every and (step + 1) % progress_every == 0:
            recent = sum(losses[-progress_every:]) / progress_every
            log.info("step %d/%d  loss %.4f  %.0f s", step + 1, recipe.steps, recent, time.monotonic() - started)
    model.eval()
    tail = losses[-min(len(losses), 20) :]
    return time.monotonic() - started, sum(tail) / len(tail)


def exact_match(model: Qwen2ForCausalLM, items: list[Encoded], pad_id: int, batch_size: int = 16) -> dict[str, float]:
    """Share of examples per kind whose target greedy decoding reproduces exactly (to <|im_end|>)."""
    import torch

    hits: dict[str, list[bool]] = defaultdict(list)
    groups: dict[tuple[int, ...], list[Encoded]] = defaultdict(list)
    for item in items:
        groups[item.prefix].append(item)
    with torch.no_grad():
        for group in groups.values():
            group.sort(key=lambda i: len(i.rest) + len(i.target))
            for start in range(0, len(group), batch_size):
                batch = group[start : start + batch_size]
                logits, labels = _forward(model, batch, pad_id)
                correct = (logits.argmax(-1) == labels).tolist()
                at = 0
                for item in batch:
                    n = len(item.target)
                    hits[item.kind].append(all(correct[at : at + n]))
                    at += n
    return {kind: sum(v) / len(v) for kind, v in sorted(hits.items())}
