"""The standalone-question step: what the model sees and how its reply is used."""

from __future__ import annotations

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from chains.condense import condense_question, has_turns, is_summary
from chains.prompts import SYSTEM_PROMPT
from tests.chains.scripted_model import ScriptedChatModel


def _history() -> list:
    return [
        HumanMessage("Summary text", additional_kwargs={"lc_source": "summarization"}),
        HumanMessage("What does the warranty cover?"),
        AIMessage("", tool_calls=[{"name": "search_documents", "args": {"query": "x"}, "id": "t1"}]),
        ToolMessage("[6] passage", tool_call_id="t1"),
        AIMessage("Parts and labour [1]."),
    ]


def test_has_turns_and_is_summary() -> None:
    assert not has_turns([])
    assert has_turns(_history())
    assert is_summary(_history()[0]) and not is_summary(_history()[1])


async def test_rewrite_reuses_the_answer_prompt_layout_and_takes_the_first_line() -> None:
    model = ScriptedChatModel(script=['"What does the warranty cover for batteries?"\nextra line'])
    standalone = await condense_question(model, [], _history(), "and batteries?", max_question_tokens=64)
    assert standalone == "What does the warranty cover for batteries?"
    call = model.calls[0]
    # Same prefix as the answer call: system prompt, then the stored history as it is.
    assert isinstance(call[0], SystemMessage) and call[0].text == SYSTEM_PROMPT
    assert call[1:-1] == _history()
    assert call[-1].text.startswith("Before answering, rewrite") and call[-1].text.endswith("and batteries?")


async def test_an_empty_reply_is_an_empty_rewrite_for_the_checks_to_refuse() -> None:
    model = ScriptedChatModel(script=["  \n  "])
    assert await condense_question(model, [], _history(), "and batteries?", max_question_tokens=64) == ""


async def test_a_long_rewrite_is_cut_to_the_question_budget() -> None:
    model = ScriptedChatModel(script=["word " * 200])
    standalone = await condense_question(model, [], _history(), "and batteries?", max_question_tokens=16)
    assert len(standalone) <= 64
