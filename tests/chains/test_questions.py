"""Question and conversation-id checks: bad input fails clearly, long input is cut with a notice."""

from __future__ import annotations

import pytest

from chains.questions import QuestionError, conversation_id_or_new, prepare_question
from chains.tokens import approx_tokens, truncate_to_tokens


@pytest.mark.parametrize("question", ["", "   ", "\n\t  \n", "\x00\x1b\x7f \x00"])
def test_empty_or_whitespace_question_is_refused(question: str) -> None:
    with pytest.raises(QuestionError, match="empty"):
        prepare_question(question, 64)


def test_non_string_question_is_refused() -> None:
    with pytest.raises(QuestionError, match="must be a string"):
        prepare_question(None, 64)


def test_short_question_is_kept_and_stripped() -> None:
    assert prepare_question("  What is covered?  ", 64) == ("What is covered?", [])


def test_control_characters_are_removed_with_a_notice() -> None:
    text, notices = prepare_question("What\x00 is\x1b[31m covered?\x7f\n\tIn\r\nfull", 64)
    assert text == "What is[31m covered?\n\tIn\r\nfull"
    assert notices == ["removed 3 control character(s) from the question"]


def test_long_question_is_truncated_to_budget_with_a_notice() -> None:
    question = "word " * 400
    text, notices = prepare_question(question, 32)
    assert approx_tokens(text) <= 32
    assert question.startswith(text)
    assert len(notices) == 1 and "truncated" in notices[0] and "32" in notices[0]


def test_truncation_prefers_a_word_boundary() -> None:
    assert truncate_to_tokens("alpha beta gamma delta", 3) == "alpha beta"
    assert truncate_to_tokens("x" * 40, 2) == "x" * 8


def test_conversation_ids() -> None:
    assert conversation_id_or_new("user-7:chat_1.a") == "user-7:chat_1.a"
    fresh = conversation_id_or_new(None)
    assert len(fresh) == 32 and fresh != conversation_id_or_new(None)
    for bad in ["", " x", "a/b", "x" * 129, "-leading"]:
        with pytest.raises(QuestionError, match="conversation id"):
            conversation_id_or_new(bad)
