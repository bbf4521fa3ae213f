"""Train the offline tiny model on chat JSONL (OpenAI messages + tools, last message the target).

Serving stands alone: the examples come from a file (the chains render them, `chains.synthetic`);
this module only applies the model's chat template, trains a byte-level BPE and a small Qwen2 on
the assistant targets, and measures held-out accuracy per behaviour.

Every behaviour is a copy of one span of the prompt, so the recipe is built to make copying cheap
to learn on two CPU cores:
- a warm-up on pure copy sequences (random token spans repeated), so the previous-token and
  induction heads that copying needs form before the real mixture arrives;
- every batch holds every behaviour, and the loss (and the output projection) covers only the
  assistant's target tokens;
- examples that share their first chat block (system prompt + tool schema) compute that block once
  per batch, its keys and values shared by every example of the group;
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

log = logging.getLogger("serving")

TRAINER_VERSION = "3"
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
    num_layers: int = 2
    num_heads: int = 2
    num_kv_heads: int = 2
    copy_steps: int = 120
    """Warm-up steps on pure copy sequences."""
    copy_length: int = 24
    steps: int = 350
    per_kind: int = 2
    """Examples of each behaviour in every batch."""
    lr: float = 3e-3
    warmup_steps: int = 30
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


@dataclass(frozen=True)
class Accuracy:
    """Held-out accuracy of one behaviour: whole targets reproduced, and target tokens right."""

    exact: float
    tokens: float


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


def copy_examples(items: list[Encoded], length: int, rng: random.Random) -> Iterator[Encoded]:
    """Endless pure copy sequences: random tokens, a span of random tokens, the span again from its
    second token on (the target). Tokens are drawn uniformly from those the training prompts use,
    so the copy circuit forms on the embeddings the mixture needs; distinct tokens make every next
    token predictable, which is what lets it form within a hundred steps."""
    pool = sorted({t for item in items for t in item.rest})
    while True:
        n = rng.randint(length // 2, length)
        context = rng.sample(pool, rng.randint(0, length // 2) + n)
        span = context[-n:]
        yield Encoded("copy", (), context + span[:1], span[1:])


def mixed_batches(items: list[Encoded], per_kind: int, rng: random.Random) -> Iterator[list[Encoded]]:
    """Endless batches holding `per_kind` examples of every behaviour."""
    by_kind: dict[str, list[Encoded]] = defaultdict(list)
    for item in items:
        by_kind[item.kind].append(item)
    kinds = sorted(by_kind)
    while True:
        yield [item for kind in kinds for item in rng.sample(by_kind[kind], per_kind)]


def _forward(model: Qwen2ForCausalLM, batch: list[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the positions that predict target tokens, and those tokens (one shared prefix)."""
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


def _by_prefix(batch: list[Encoded]) -> list[list[Encoded]]:
    groups: dict[tuple[int, ...], list[Encoded]] = defaultdict(list)
    for item in batch:
        groups[item.prefix].append(item)
    return [groups[k] for k in sorted(groups)]


def _step_loss(model: Qwen2ForCausalLM, batch: list[Encoded], pad_id: int) -> torch.Tensor:
    """Mean cross-entropy over the batch's target tokens, one forward pass per shared prefix."""
    import torch

    parts = [_forward(model, group, pad_id) for group in _by_prefix(batch)]
    logits = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    return torch.nn.functional.cross_entropy(logits.float(), labels)


def train(
    model: Qwen2ForCausalLM, items: list[Encoded], recipe: Recipe, pad_id: int, *, progress_every: int = 50
) -> tuple[float, float]:
    """Copy warm-up, then AdamW on the mixture with cosine decay; returns (seconds, last loss)."""
    import torch

    rng = random.Random(recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.98), weight_decay=0.0)
    total = recipe.copy_steps + recipe.steps

    def schedule(step: int) -> float:
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        progress = (step - recipe.warmup_steps) / max(1, total - recipe.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    started = time.monotonic()
    losses: list[float] = []
    copies = copy_examples(items, recipe.copy_length, rng)
    batch_size = recipe.per_kind * len({i.kind for i in items})
    mixture = mixed_batches(items, recipe.per_kind, rng)
    for step in range(total):
        batch = [next(copies) for _ in range(2 * batch_size)] if step < recipe.copy_steps else next(mixture)
        loss = _step_loss(model, batch, pad_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        losses.append(loss.item())
        if progress_every and (step + 1) % progress_every == 0:
            recent = sum(losses[-progress_every:]) / progress_every
            log.info("step %d/%d  loss %.4f  %.0f s", step + 1, total, recent, time.monotonic() - started)
    model.eval()
    tail = losses[-min(len(losses), 20) :]
    return time.monotonic() - started, sum(tail) / len(tail)


def accuracy(model: Qwen2ForCausalLM, items: list[Encoded], pad_id: int, batch_size: int = 16) -> dict[str, Accuracy]:
    """Per behaviour: share of targets greedy decoding reproduces exactly (to <|im_end|>), and
    share of target tokens whose teacher-forced argmax is right."""
    import torch

    hits: dict[str, list[bool]] = defaultdict(list)
    right: dict[str, list[float]] = defaultdict(list)
    with torch.no_grad():
        for group in _by_prefix(items):
            group.sort(key=lambda i: len(i.rest) + len(i.target))
            for start in range(0, len(group), batch_size):
                batch = group[start : start + batch_size]
                logits, labels = _forward(model, batch, pad_id)
                correct = (logits.argmax(-1) == labels).tolist()
                at = 0
                for item in batch:
                    n = len(item.target)
                    hits[item.kind].append(all(correct[at : at + n]))
                    right[item.kind].append(sum(correct[at : at + n]) / n)
                    at += n
    return {
        kind: Accuracy(sum(hits[kind]) / len(hits[kind]), sum(right[kind]) / len(right[kind])) for kind in sorted(hits)
    }
