"""What evaluations read off an answer: its citation marks and the no-answer reply the prompt asks for."""

from __future__ import annotations

import pytest

from chains.context import cited_numbers, strip_citations
from chains.prompts import NO_ANSWER_PHRASE, SYSTEM_PROMPT, is_no_answer


def test_cited_numbers_in_order_of_first_citation() -> None:
    assert cited_numbers("Yes [3]. Also [1, 3] and [9].") == [3, 1, 9]
    assert cited_numbers("no citations, [x] or [] either") == []


def test_strip_citations_leaves_the_text() -> None:
    assert strip_citations("Denver Broncos [1].") == "Denver Broncos ."
    assert strip_citations("In 1066 [2, 4] and\n1067 [1]") == "In 1066 and 1067"


def test_the_no_answer_phrase_is_the_one_the_system_prompt_asks_for() -> None:
    assert f"say that {NO_ANSWER_PHRASE}" in SYSTEM_PROMPT


@pytest.mark.parametrize(
    "answer",
    ["The documents do not say.", "The documents don't say who won.", "THE DOCUMENTS DON\u2019T\nSAY"],
)
def test_no_answer_replies_are_recognised(answer: str) -> None:
    assert is_no_answer(answer)


@pytest.mark.parametrize("answer", ["Denver Broncos [1].", "", "The documents say nothing about it? No: 1066 [2]."])
def test_answers_are_not_refusals(answer: str) -> None:
    assert not is_no_answer(answer)
