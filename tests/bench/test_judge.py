"""The LLM judge: verdict parsing by hand, and the plumbing against the real served model.

The tiny model's verdicts are noise: the tests against it check that every call ends in a
counted status (ok, nan, timeout, error) and that NaNs never reach a mean, not the scores.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from bench.answer_eval import Asked, Row, judge
from bench.judge import Judge, Verdict, parse_faithfulness, parse_relevance, relevance_score, summarize_verdicts
from bench.squad import SHIPPED_SUBSET as SUBSET
from bench.squad import read_squad
from config import load_settings
from config.settings import EvaluationSettings

ANSWERS = [
    ("Which gas do people breathe?", "People breathe oxygen [1].", ["Oxygen is the gas people breathe."]),
    ("When did the plague arrive?", "It arrived in 1347 [1].", ["The Black Death reached Europe in 1347."]),
    ("What is a prime?", "A number with two divisors [1].", ["A prime has exactly two divisors."]),
]


def test_faithfulness_is_the_share_of_supported_statements() -> None:
    reply = 'Sure:\n```json\n{"statements": [{"statement": "a", "verdict": 1}, {"statement": "b", "verdict": 0},'
    reply += ' {"statement": "c", "verdict": 1}]}\n```'
    assert parse_faithfulness(reply) == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "reply",
    [
        "I think it is faithful.",
        '{"statements": []}',
        '{"statements": [{"statement": "a", "verdict": "yes"}]}',
        '{"statements": [{"statement": "a", "verdict": true}]}',
        '{"statements": [{"statement": "a", "verdict": 1}',
    ],
)
def test_a_reply_that_is_not_the_asked_json_has_no_faithfulness(reply: str) -> None:
    assert parse_faithfulness(reply) is None


def test_relevance_replies_are_parsed_or_refused() -> None:
    assert parse_relevance('{"questions": [" Who won? "], "noncommittal": 0}') == (["Who won?"], False)
    assert parse_relevance('{"questions": ["Who won?"], "noncommittal": 1}') == (["Who won?"], True)
    assert parse_relevance('{"questions": [], "noncommittal": 0}') is None
    assert parse_relevance('{"questions": ["Who?"], "noncommittal": 2}') is None
    assert parse_relevance("no json") is None


def test_relevance_is_the_cosine_to_the_question_and_zero_when_noncommittal(embed_model: Any) -> None:
    embed = embed_model.get_text_embedding_batch
    question = "Which gas do people breathe?"
    assert relevance_score(question, [question], False, embed) == pytest.approx(1.0, abs=1e-4)
    near = relevance_score(question, ["What gas do humans breathe in?"], False, embed)
    far = relevance_score(question, ["Who painted the Mona Lisa?"], False, embed)
    assert 1.0 > near > far
    assert relevance_score(question, [question], True, embed) == 0.0


def test_a_summary_counts_every_status_and_averages_only_ok() -> None:
    verdicts = [Verdict(1.0, "ok"), Verdict(0.5, "ok"), Verdict(math.nan, "nan"), Verdict(math.nan, "timeout")]
    assert summarize_verdicts(verdicts) == {"mean": 0.75, "n": 4, "ok": 2, "nan": 1, "timeout": 1, "error": 0}
    assert summarize_verdicts([Verdict(math.nan, "error")])["mean"] is None


def test_an_unreachable_judge_is_an_error_verdict_not_a_crash(embed_model: Any) -> None:
    settings = EvaluationSettings(judge_base_url="http://127.0.0.1:9/v1", judge_model="judge", judge_timeout_s=5)
    judge_ = Judge(settings, embed_model.get_text_embedding_batch)
    try:
        verdict = judge_.faithfulness(*ANSWERS[0])
    finally:
        judge_.close()
    assert verdict.status == "error" and math.isnan(verdict.score) and "Connection" in verdict.detail


def test_the_judge_needs_an_endpoint(embed_model: Any) -> None:
    with pytest.raises(ValueError, match="judge_base_url"):
        Judge(EvaluationSettings(), embed_model.get_text_embedding_batch)


@pytest.mark.integration
def test_verdicts_of_the_served_model_are_counted(vllm_server: Any, embed_model: Any) -> None:
    settings = EvaluationSettings(judge_base_url=vllm_server.base_url, judge_max_tokens=32)
    judge_ = Judge(settings, embed_model.get_text_embedding_batch)
    try:
        assert judge_.model == vllm_server.model  # the first listed model when none is set
        verdicts = [judge_.faithfulness(q, a, p) for q, a, p in ANSWERS] + [
            judge_.relevance(q, a) for q, a, _ in ANSWERS
        ]
    finally:
        judge_.close()
    for v in verdicts:
        assert v.status in ("ok", "nan"), v  # the server answered every call
        assert math.isnan(v.score) == (v.status != "ok")
    summary = summarize_verdicts(verdicts)
    assert summary["ok"] + summary["nan"] == summary["n"] == 6


@pytest.mark.integration
def test_judge_timeouts_are_counted_in_the_eval_summary(vllm_server: Any, embed_model: Any) -> None:
    questions = read_squad(SUBSET)[0].questions
    rows = [
        Row(Asked(questions[0], True), answer="Steam [1].", retrieved=("Steam engines burn coal.",)),
        Row(Asked(questions[1], True), answer="Coal [1].", retrieved=("Steam engines burn coal.",)),
        Row(Asked(questions[2], True), answer="The documents do not say.", refused=True),
        Row(Asked(questions[3], False), answer="Coal [1]."),
    ]
    settings = load_settings("test", evaluation={"judge_base_url": vllm_server.base_url, "judge_timeout_s": 0.001})
    judged = judge(settings, rows, embed_model)
    assert judged is not None and judged["model"] == vllm_server.model
    for metric in ("faithfulness", "answer_relevance"):  # only generated answers to answerable questions
        assert judged[metric] == {"mean": None, "n": 2, "ok": 0, "nan": 0, "timeout": 2, "error": 0}
    assert [r.faithfulness is not None for r in rows] == [True, True, False, False]
    assert judge(load_settings("test"), rows, embed_model) is None  # no endpoint: no judge
