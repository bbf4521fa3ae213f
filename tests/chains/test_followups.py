"""Follow-ups that cannot wreck retrieval: the rules alone, then the agent with a model whose
rewrites are garbage (scripted: the served tiny model's noise is exercised by bench/followups.py)."""

from __future__ import annotations

from typing import Any

import pytest

from chains import TurnResult
from chains.followups import RewriteRules, content_words, fuse, needs_history, rejection
from indexing.retrieval import Passage
from tests.chains.scripted_model import ScriptedChatModel, kind

WARRANTY_Q = "What does the X200 warranty cover?"
BATTERY_FOLLOW_UP = "How long does its battery last on one charge?"
"""Refers back ("its") but names enough to be answered alone: battery.md."""


@pytest.mark.parametrize(
    "question",
    [
        "And how do I remove them?",
        "Which file formats can it read?",
        "What about PDFs?",
        "and the battery?",
        "Even after kill -9?",
        "Can I use BM25 instead?",
        "Why?",
    ],
)
def test_questions_that_refer_back_need_the_history(question: str) -> None:
    assert needs_history(question)


@pytest.mark.parametrize(
    "question",
    ["How long does shipping to Norway take?", "What is the default chunk size?", "Where is the BM25 index stored?"],
)
def test_questions_that_name_their_subject_do_not(question: str) -> None:
    assert not needs_history(question)


def test_the_ellipsis_threshold_is_a_rule_parameter() -> None:
    assert needs_history("Default port?", RewriteRules(min_content_words=3))
    assert not needs_history("Default port?", RewriteRules(min_content_words=1))


def test_content_words_are_stemmed_and_skip_function_words() -> None:
    assert content_words("Which file formats can it read?") == content_words("reading FILE format")
    assert content_words("How do I?") == set()


@pytest.mark.parametrize(
    ("rewrite", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("ingest " * 80, "far longer"),
        ("Utrecht Rotterdam refund euros", "shares no content word"),
    ],
)
def test_bad_rewrites_are_refused_with_the_reason(rewrite: str, reason: str) -> None:
    found = rejection("And how do I remove them?", rewrite)
    assert found is not None and reason in found


def test_a_good_rewrite_passes_and_a_question_without_content_words_is_not_overlap_checked() -> None:
    assert rejection("And how do I remove them?", "How do I remove deleted documents from the index?") is None
    assert rejection("and then?", "What happens after the ingest finishes?") is None


@pytest.mark.parametrize("rules", [{"min_content_words": -1}, {"max_words_ratio": 0.5}, {"max_extra_words": -2}])
def test_invalid_rules_are_refused(rules: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="invalid rewrite rules"):
        RewriteRules(**rules)


def _passage(node_id: str, score: float = 1.0) -> Passage:
    return Passage(node_id, f"text {node_id}", "f.md", None, None, None, 0, score)


def test_fuse_puts_passages_found_by_both_first_and_keeps_k() -> None:
    fused = fuse([_passage("a"), _passage("b"), _passage("c")], [_passage("x"), _passage("b")], 3)
    assert [p.node_id for p in fused] == ["b", "a", "x"]
    assert fused[0].score > fused[1].score >= fused[2].score


def _prompt_passages(model: ScriptedChatModel) -> str:
    """The numbered passages of the last answer call."""
    return model.calls[-1][-1].text.split("Question:")[0]


GARBAGE = {
    "empty": "",
    "very long": "the X200 speaker " * 60,
    "unrelated words": "Utrecht Rotterdam refund euros founded",
    "question plus noise": f"Rotterdam Norway refund euros founded Utrecht Rotterdam Norway {BATTERY_FOLLOW_UP}",
}
"""Alone, the noisy rewrite ranks shipping.md first; fused with the question, battery.md is first again."""


@pytest.mark.parametrize("garbage", list(GARBAGE))
def test_garbage_rewrites_still_find_what_the_question_finds(make_agent: Any, retriever: Any, garbage: str) -> None:
    alone = retriever.retrieve(BATTERY_FOLLOW_UP)
    assert alone[0].source == "battery.md"
    agent, model = make_agent(["Parts and labour [1].", GARBAGE[garbage], "Ten hours [1]."])
    cid = "g-" + garbage.replace(" ", "-")
    agent.invoke(WARRANTY_Q, cid)
    result = agent.invoke(BATTERY_FOLLOW_UP, cid)

    assert [kind(c) for c in model.calls] == ["agent", "condense", "agent"]
    passages = _prompt_passages(model)
    # The question's best passage is always offered first, as passage [1].
    assert passages.index(alone[0].text[:60]) < passages.index("[2] ")
    if garbage == "question plus noise":  # plausible enough to be used, so retrieval fuses both
        assert retriever.retrieve(GARBAGE[garbage])[0].source == "shipping.md"
        assert result.standalone_question == GARBAGE[garbage]
        assert any("retrieval used it and the question as asked" in n for n in result.notices)
    else:  # refused: retrieval sees exactly what the question alone finds
        assert result.standalone_question == BATTERY_FOLLOW_UP
        assert any(n.startswith("rewrite not used") for n in result.notices)
        assert all(p.text[:60] in passages for p in alone)


def test_a_genuine_follow_up_is_still_rewritten(make_agent: Any) -> None:
    rewrite = "How do I remove the Q5 headphones?"
    agent, model = make_agent(["The Q5 headphones [1].", rewrite, "The documents do not say."])
    agent.invoke("Which headphones does Acme Audio make?", "genuine")
    result = agent.invoke("And how do I remove them?", "genuine")

    assert [kind(c) for c in model.calls] == ["agent", "condense", "agent"]
    assert isinstance(result, TurnResult) and result.standalone_question == rewrite
    assert result.question == "And how do I remove them?"
    assert any(rewrite in n and n.startswith("follow-up rewritten") for n in result.notices)
    assert "company.md" in _prompt_passages(model)  # found through the rewrite's "Q5 headphones"


def test_a_question_that_names_its_subject_skips_the_rewrite_call(make_agent: Any) -> None:
    agent, model = make_agent(["Parts and labour [1].", "Five days [1]."])
    agent.invoke(WARRANTY_Q, "named")
    result = agent.invoke("How long does shipping to Norway take?", "named")

    assert [kind(c) for c in model.calls] == ["agent", "agent"]
    assert result.standalone_question == result.question
    assert any("names its subject" in n for n in result.notices)
    assert "shipping.md" in _prompt_passages(model)


def test_a_rewrite_that_repeats_the_question_is_reported_as_kept(make_agent: Any) -> None:
    agent, model = make_agent(["Parts and labour [1].", BATTERY_FOLLOW_UP, "Ten hours [1]."])
    agent.invoke(WARRANTY_Q, "kept")
    result = agent.invoke(BATTERY_FOLLOW_UP, "kept")

    assert [kind(c) for c in model.calls] == ["agent", "condense", "agent"]
    assert result.standalone_question == BATTERY_FOLLOW_UP
    assert any(n.startswith("follow-up kept as asked") for n in result.notices)
