"""Train the offline tiny model on chat JSONL (OpenAI messages + tools, last message the target).

Serving stands alone: the examples come from a file (the chains render them, `chains.synthetic`);
this module only applies the model's chat template, trains a byte-level BPE and a small Qwen2 on
the assistant targets, and measures held-out accuracy per behaviour.

Every behaviour is a copy of one span of the prompt, so the recipe is built to make copying cheap
to learn on two CPU cores:
- a warm-up on pure copy sequences (random token spans repeated at a varying distance), run until
  held-out copies are reproduced, so the previous-token and induction heads that copying needs
  form before the real mixture arrives; a few copies stay in every mixture batch;
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
import itertools
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

TRAINER_VERSION = "4"
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
    copy_steps: int = 1200
    """Cap on the copy warm-up; it stops earlier once held-out copy accuracy reaches `copy_target`.
    Induction (copying at a varying distance) forms in a phase change after several hundred steps
    at this size: held-out copy accuracy 0.02 at step 700, 0.41 at 750, 0.98 at 800 (the second
    attempt's 120 steps stopped long before it)."""
    copy_target: float = 0.98
    copy_check_every: int = 50
    copy_batch: int = 32
    copy_span: tuple[int, int] = (16, 48)
    copy_gap: tuple[int, int] = (0, 40)
    """Random tokens before the span and between the span and its repeat: the distance varies, as it
    does between a passage and the answer quoting it."""
    steps: int = 900
    """Mixture steps after the warm-up."""
    per_kind: int = 2
    """Examples of each behaviour in every mixture batch."""
    copies_per_batch: int = 4
    """Copy sequences kept in every mixture batch, so the copy circuit is not unlearned."""
    lr: float = 1e-3
    warmup_steps: int = 100
    eval_every: int = 300
    """Held-out accuracy per behaviour is logged (and recorded) every this many mixture steps."""
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


def copy_examples(
    items: list[Encoded], span: tuple[int, int], gap: tuple[int, int], rng: random.Random
) -> Iterator[Encoded]:
    """Endless pure copy sequences: random tokens, a span, random tokens, then the span again from
    its second token on (the target). Tokens are drawn without replacement from those the training
    prompts use, so every next token is predictable and the copy circuit forms on the embeddings the
    mixture needs."""
    pool = sorted({t for item in items for t in item.rest})
    while True:
        n = rng.randint(*span)
        before, between = rng.randint(*gap), rng.randint(*gap)
        tokens = rng.sample(pool, before + n + between)
        copied = tokens[before : before + n]
        yield Encoded("copy", (), tokens + copied[:1], copied[1:])


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


@dataclass(frozen=True)
class TrainStats:
    """What a training run did: the warm-up's length and copy accuracy, and the mixture's curve."""

    seconds: float
    copy_seconds: float
    copy_steps: int
    copy_accuracy: float
    loss: float
    curve: dict[int, dict[str, float]]
    """Held-out exact match per behaviour after so many mixture steps."""


def train(
    model: Qwen2ForCausalLM,
    items: list[Encoded],
    recipe: Recipe,
    pad_id: int,
    held_out: Sequence[Encoded] = (),
    *,
    progress_every: int = 50,
) -> TrainStats:
    """Copy warm-up until held-out copies are reproduced (or the cap), then AdamW on the mixture
    with cosine decay; `held_out` chats, when given, are scored every `recipe.eval_every` steps."""
    import torch

    rng = random.Random(recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.98), weight_decay=0.0)
    copies = copy_examples(items, recipe.copy_span, recipe.copy_gap, rng)
    check = list(
        itertools.islice(copy_examples(items, recipe.copy_span, recipe.copy_gap, random.Random(-recipe.seed)), 64)
    )
    started = time.monotonic()
    losses: list[float] = []

    def step(batch: list[Encoded], lr: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        loss = _step_loss(model, batch, pad_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())

    copy_accuracy, done = 0.0, 0
    while done < recipe.copy_steps and copy_accuracy < recipe.copy_target:
        step([next(copies) for _ in range(recipe.copy_batch)], recipe.lr * min(1.0, (done + 1) / recipe.warmup_steps))
        done += 1
        if done % recipe.copy_check_every == 0:
            copy_accuracy = accuracy(model, check, pad_id)["copy"].tokens
            log.info(
                "copy step %d  loss %.4f  held-out copy accuracy %.3f  %.0f s",
                done,
                losses[-1],
                copy_accuracy,
                time.monotonic() - started,
            )
    copy_seconds = time.monotonic() - started
    mixture = mixed_batches(items, recipe.per_kind, rng)
    curve: dict[int, dict[str, float]] = {}
    for n in range(recipe.steps):
        decay = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * n / recipe.steps))
        step(next(mixture) + [next(copies) for _ in range(recipe.copies_per_batch)], recipe.lr * decay)
        if progress_every and (n + 1) % progress_every == 0:
            recent = sum(losses[-progress_every:]) / progress_every
            log.info("mixture step %d/%d  loss %.4f  %.0f s", n + 1, recipe.steps, recent, time.monotonic() - started)
        if held_out and recipe.eval_every and (n + 1) % recipe.eval_every == 0:
            curve[n + 1] = {kind: round(a.exact, 4) for kind, a in accuracy(model, list(held_out), pad_id).items()}
            log.info("held-out exact match after %d mixture steps: %s", n + 1, curve[n + 1])
    model.eval()
    tail = losses[-min(len(losses), 20) :]
    return TrainStats(time.monotonic() - started, copy_seconds, done, copy_accuracy, sum(tail) / len(tail), curve)


def accuracy(model: Qwen2ForCausalLM, items: list[Encoded], pad_id: int, batch_size: int = 16) -> dict[str, Accuracy]:
    """Per behaviour: share of targets greedy decoding reproduces exactly (to <|im_end|>), and
    share of target tokens whose teacher-forced argmax is right."""
    import torch

    hits: dict[str, list[bool]] = defaultdict(list)
    right: dict[str, list[float]] = defaultdict(list)
    model.eval()
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
