"""`make eval`'s code path: question choice, bad input, scoring through the real agent, the CLI.

The scoring tests drive the real agent, retriever and Chroma index with a scripted model (the
served tiny model's answers are noise, so they could never show a correct answer or citation);
the CLI test runs the whole command against the real vLLM server on the tiny model.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage

from bench import answer_eval
from bench.answer_eval import Asked, Row, ask_all, choose, main, summarize
from bench.squad import SHIPPED_SUBSET as SUBSET
from bench.squad import read_squad, write_corpus
from config import load_settings
from tests.chains.scripted_model import scripted_agent

SUMMARY_KEYS = (
    "exact_match",
    "f1",
    "contains_gold",
    "citation_accuracy",
    "hit_at_k",
    "refusal_rate",
    "false_refusal_rate",
    "questions",
    "model",
)
_PASSAGE = re.compile(r"^\[(\d+)\] [^\n]*\n(.*?)(?=\n\n\[\d+\] |\n\nQuestion: |\Z)", re.S | re.M)


def test_the_seed_picks_disjoint_articles_and_questions_of_each_side() -> None:
    articles = read_squad(SUBSET)
    ingested, asked = choose(articles, 2, 20, 5, seed=7)
    assert choose(articles, 2, 20, 5, seed=7) == (ingested, asked)
    assert choose(articles, 2, 20, 5, seed=8) != (ingested, asked)
    folders = {a.folder for a in ingested}
    assert len(ingested) == 2 and [a.answerable for a in asked] == [True] * 20 + [False] * 5
    assert all((a.question.source.split("/")[0] in folders) == a.answerable for a in asked)
    assert len({a.question.id for a in asked}) == 25


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--limit", "0"], "--limit must be at least 1"),
        (["--data", "no/such.json"], "not found"),
        (["--articles", "6"], "--articles must be between 1 and 5"),
        (["--concurrency", "0"], "--concurrency must be at least 1"),
    ],
)
def test_bad_arguments_are_refused_with_a_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--data", str(SUBSET), *args])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_without_squad_dev_the_shipped_subset_is_used(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(answer_eval, "DEFAULT_DATA", Path("no/such/squad.json"))
    args, articles = answer_eval.parse_args([])
    assert args.data == SUBSET and len(articles) == 6
    assert "using the shipped subset" in capsys.readouterr().err


def test_an_unknown_profile_is_refused_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data", str(SUBSET), "--profile", "fastest"]) == 2
    assert "unknown profile 'fastest'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"data": [{"title": "x"}]}', "not a SQuAD v1.1-shaped file"),
        ("not json", "not a SQuAD v1.1-shaped file"),
        ('{"data": [{"title": "x", "paragraphs": []}]}', "at least 2 are needed"),
    ],
)
def test_a_set_of_another_shape_is_refused(
    tmp_path: Path, content: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "set.json"
    data.write_text(content, encoding="utf-8")
    with pytest.raises(SystemExit):
        main(["--data", str(data)])
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def eval_index(tmp_path_factory: pytest.TempPathFactory, embed_model: Any) -> Iterator[tuple[Any, list[Asked]]]:
    """The subset's seed-0 choice ingested into a real index: (retriever, asked questions)."""
    from indexing.pipeline import ingest
    from indexing.retrieval import open_retriever

    root = tmp_path_factory.mktemp("answer-eval")
    ingested, asked = choose(read_squad(SUBSET), 2, 20, 5, seed=0)
    write_corpus(ingested, root / "corpus")
    settings = load_settings("test", index={"docs_dir": root / "corpus", "index_dir": root / "index"})
    ingest(settings.index, progress=False, embed_model=embed_model)
    with open_retriever(settings.index, embed_model=embed_model) as retriever:
        yield retriever, asked


def oracle(asked: list[Asked], cite_wrong: bool) -> Callable[[list[BaseMessage]], str]:
    """A model reply that quotes a gold answer found in the prompt's passages and cites that passage
    (or, with `cite_wrong`, a passage without it), and gives the no-answer reply when none holds one."""
    golds = {a.question.text: a.question.answers for a in asked}

    def reply(messages: list[BaseMessage]) -> str:
        prompt = messages[-1].text
        passages = _PASSAGE.findall(prompt)
        for gold in golds[prompt.rsplit("Question: ", 1)[1].strip()]:
            holding = [n for n, text in passages if gold in text]
            if holding:
                others = [n for n, text in passages if gold not in text]
                if cite_wrong and not others:
                    continue
                return f"{gold} [{others[0] if cite_wrong else holding[0]}]."
        return "The documents do not say."

    return reply


@pytest.mark.parametrize("cite_wrong", [False, True])
def test_scores_follow_the_answers_through_the_real_agent(
    eval_index: tuple[Any, list[Asked]], tmp_path: Path, cite_wrong: bool
) -> None:
    retriever, asked = eval_index
    settings = load_settings(
        "test",
        index={"index_dir": retriever.settings.index_dir},
        chains={"conversations_db": tmp_path / "conversations.sqlite"},
        cache={"enabled": False},
    )
    agent, _ = scripted_agent(settings, retriever, [oracle(asked, cite_wrong)] * len(asked))
    with agent:
        rows = asyncio.run(ask_all(agent, retriever, asked, settings.index.top_k, concurrency=1))
    summary = summarize(rows, settings.index.top_k, {"model": "scripted"}, None)
    answerable = [r for r in rows if r.asked.answerable]
    quoted = [r for r in answerable if not r.refused]
    assert len(quoted) >= 10, [r.answer for r in answerable]  # most gold answers are in the passages shown
    assert summary["exact_match"] == summary["f1"] == summary["contains_gold"] == len(quoted) / 20
    assert summary["false_refusal_rate"] == pytest.approx(1 - len(quoted) / 20)
    assert summary["citation_rate"] == len(quoted) / 20
    # the [n] cited maps to that passage's full text: a right citation scores, a wrong one does not
    assert summary["citation_accuracy"] == (0.0 if cite_wrong else len(quoted) / 20)
    assert summary["refusal_rate"] == 1.0  # no gold answer of a left-out article in the passages
    assert summary["hit_at_k"] >= 0.9 and summary["failed"] == 0


@pytest.mark.integration
def test_the_cli_on_the_served_tiny_model(vllm_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval.json"
    args = ["--data", str(SUBSET), "--limit", "20", "--profile", "test", "--out", str(out)]
    assert main([*args, "--base-url", vllm_server.base_url]) == 0
    captured = capsys.readouterr()
    assert "[25/25]" in captured.err and "| token F1 |" in captured.out  # progress, then the table
    result = json.loads(out.read_text(encoding="utf-8"))
    assert out.with_suffix(".png").stat().st_size > 0
    summary, rows = result["summary"], result["rows"]
    assert set(SUMMARY_KEYS) <= set(summary)
    assert summary["model"] == vllm_server.model and summary["model_note"]  # the tiny model is named as such
    assert (summary["questions"], summary["answerable"], summary["unanswerable"], summary["failed"]) == (25, 20, 5, 0)
    for key in SUMMARY_KEYS[:-2]:
        assert 0.0 <= summary[key] <= 1.0, key  # every rate defined, none NaN/null
    assert summary["hit_at_k"] > 0.5  # measured 1.0: the retriever finds the paragraphs
    assert summary["faithfulness"] is None and result["judge"] is None  # no judge configured
    assert len(rows) == 25 and all(r["answer"] and r["total_s"] > 0 for r in rows)
    answerable = [r for r in rows if r["answerable"]]
    assert summary["f1"] == pytest.approx(sum(r["f1"] for r in answerable) / 20)
    assert summary["refusal_rate"] == sum(r["refused"] for r in rows if not r["answerable"]) / 5
    assert result["config"]["cache"].startswith("off")


@pytest.mark.integration
def test_a_kept_workdir_is_reused_for_the_same_articles_only(vllm_server: Any, tmp_path: Path) -> None:
    """`make bench` asks the same questions once per profile: the second run finds its index."""
    base = ["--data", str(SUBSET), "--limit", "4", "--profile", "test", "--base-url", vllm_server.base_url]
    runs = []
    for seed in (0, 0, 1):
        out = tmp_path / f"eval-{len(runs)}.json"
        assert main([*base, "--seed", str(seed), "--workdir", str(tmp_path / "work"), "--out", str(out)]) == 0
        runs.append(json.loads(out.read_text(encoding="utf-8")))
    folders = sorted(p.name for p in (tmp_path / "work").iterdir())
    assert len(folders) == 2  # seeds 0 and 1 chose other articles: another folder
    first, again, other = (r["config"] for r in runs)
    assert first["chunks"] == again["chunks"] > 0 and first["articles"] == again["articles"] != other["articles"]
    assert runs[1]["summary"]["hit_at_k"] == runs[0]["summary"]["hit_at_k"]


def test_rows_of_unanswerable_questions_carry_no_answer_scores() -> None:
    question = read_squad(SUBSET)[0].questions[0]
    row = Row(Asked(question, False), answer="The documents don't say.", refused=True)
    assert row.to_dict(5)["f1"] is None and row.to_dict(5)["refused"] is True
    assert row.to_dict(5)["hit@5"] is None


def test_a_failed_turn_scores_as_no_answer_even_when_its_text_holds_the_gold() -> None:
    question = read_squad(SUBSET)[0].questions[0]
    listed = f"The language model is unavailable, here are the passages: {question.answers[0]} [1]"
    row = Row(Asked(question, True), answer=listed, failed="retrieval only: connection refused")
    scores = row.scores()
    assert (scores["exact_match"], scores["f1"], scores["contains_gold"]) == (0.0, 0.0, False)
    ok = Row(Asked(question, True), answer=f"{question.answers[0]} [1]")
    assert ok.scores()["exact_match"] == 1.0  # the same text, not failed, scores
