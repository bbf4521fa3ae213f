"""The agent's orchestration, driven by a scripted chat model over a real index.

The tiny served model never calls tools, so tool calls, the standalone-question step, the
summary trigger and the prompt layout are checked here with a fake model whose replies are
scripted; the real server is exercised in test_agent_integration.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from chains import QuestionError, RagAgent, TurnResult
from chains.condense import is_summary
from chains.prompts import SYSTEM_PROMPT, UNTRUSTED_TEMPLATE
from config.settings import Settings
from tests.chains.scripted_model import ScriptedChatModel, kind, scripted_agent, tool_call

WARRANTY_Q = "What does the X200 warranty cover?"
FENCE = UNTRUSTED_TEMPLATE.split("{", 1)[0]
"""How fenced passages start: the opening tag and the line marking them as untrusted data."""


def test_first_model_call_carries_the_passages_and_answers_without_tools(make_agent: Any) -> None:
    agent, model = make_agent(["Parts and labour for two years [1]."])
    result = agent.invoke(WARRANTY_Q, "c1")

    assert [kind(c) for c in model.calls] == ["agent"]  # no history: no condense call
    call = model.calls[0]
    assert isinstance(call[0], SystemMessage) and call[0].text == SYSTEM_PROMPT
    question = call[-1]
    assert isinstance(question, HumanMessage)
    assert question.text.startswith(f"Passages:\n{FENCE}[1] ")
    assert question.text.endswith(f"Question: {WARRANTY_Q}")
    assert "warranty.md" in question.text
    assert model.tools_offered == [1]

    assert result.answer == "Parts and labour for two years [1]."
    assert [s.id for s in result.sources] == [1]
    assert result.sources[0].snippet and result.sources[0].file in question.text
    assert not result.cached and not result.retrieval_only
    assert [step.kind for step in result.steps] == ["model"]
    assert result.timings.retrieval_s > 0 and result.timings.total_s >= result.timings.retrieval_s
    assert result.timings.ttft_s is not None and result.standalone_question == WARRANTY_Q


def _cite_tool_passage(file: str) -> Any:
    """A scripted reply citing the number the search tool gave to a passage of `file`."""

    def reply(messages: list[Any]) -> str:
        tool_text = next(m.text for m in reversed(messages) if isinstance(m, ToolMessage))
        number = re.search(rf"\[(\d+)\] {re.escape(file)}", tool_text)
        assert number, tool_text
        return f"Shipping takes five days [{number.group(1)}]."

    return reply


def test_tool_call_adds_numbered_passages_that_answers_can_cite(make_agent: Any) -> None:
    agent, model = make_agent([tool_call("shipping to Norway"), _cite_tool_passage("shipping.md")])
    pieces = list(agent.stream("How long does shipping to Norway take?", "c2"))
    result = pieces[-1]
    assert isinstance(result, TurnResult)

    assert [kind(c) for c in model.calls] == ["agent", "agent"]
    steps = [(s.kind, s.name) for s in result.steps]
    assert steps == [("model", "model"), ("tool", "search_documents"), ("model", "model")]
    second = model.calls[1]
    assert isinstance(second[-1], ToolMessage) and isinstance(second[-2], AIMessage) and second[-2].tool_calls
    # The prefetched passages stay on the question for the follow-up call (same prompt prefix).
    assert any(isinstance(m, HumanMessage) and m.text.startswith(f"Passages:\n{FENCE}[1] ") for m in second)
    assert len(result.sources) == 1 and result.sources[0].file == "shipping.md"
    assert f"[{result.sources[0].id}]" in result.answer
    assert "".join(p for p in pieces[:-1] if isinstance(p, str)) == result.answer


def test_last_allowed_model_call_gets_no_tools(make_agent: Any, unit_settings: Settings) -> None:
    settings = unit_settings.model_copy(deep=True)
    settings.chains.max_model_calls = 2
    agent, model = make_agent([tool_call("batteries"), "Done."], settings)
    result = agent.invoke("Tell me about the battery.", "c3")
    assert model.tools_offered == [1]  # the second call was made without binding the tool
    assert result.answer == "Done." and len(model.calls) == 2


def test_follow_up_is_rewritten_before_retrieval(make_agent: Any) -> None:
    agent, model = make_agent(
        [
            "Parts and labour [1].",
            "How long does the X200 battery last on one charge?",
            "About ten hours [1].",
        ]
    )
    agent.invoke(WARRANTY_Q, "c4")
    result = agent.invoke("and the battery?", "c4")

    assert [kind(c) for c in model.calls] == ["agent", "condense", "agent"]
    condense = model.calls[1]
    assert [m.text for m in condense[1:3]] == [WARRANTY_Q, "Parts and labour [1]."]
    assert condense[-1].text.endswith("Next question: and the battery?")
    assert result.standalone_question == "How long does the X200 battery last on one charge?"
    assert result.question == "and the battery?"
    final = model.calls[2]
    # History first (bare question, no stale passages), then passages for the rewritten question.
    assert [type(m).__name__ for m in final] == ["SystemMessage", "HumanMessage", "AIMessage", "HumanMessage"]
    assert final[1].text == WARRANTY_Q
    assert "battery.md" in final[3].text.split("Question:")[0]
    assert final[3].text.endswith("Question: and the battery?")


def test_summary_memory_replaces_old_turns_once_history_passes_the_budget(
    make_agent: Any, unit_settings: Settings
) -> None:
    settings = unit_settings.model_copy(deep=True)
    settings.chains.history_token_budget = 64
    settings.chains.keep_last_messages = 2
    long_answer = "The answer is long. " * 20
    agent, model = make_agent(
        [long_answer, "standalone two?", long_answer, "standalone three?", "SUMMARY OF EARLY TURNS", "Short [1]."],
        settings,
    )
    agent.invoke("first question?", "c5")
    agent.invoke("and the second question?", "c5")
    assert [kind(c) for c in model.calls] == ["agent", "condense", "agent"]  # 3 messages: nothing to drop yet
    agent.invoke("and the third question?", "c5")

    assert [kind(c) for c in model.calls] == ["agent", "condense", "agent", "condense", "summary", "agent"]
    assert "first question?" in model.calls[4][-1].text  # the summary call saw the oldest turn
    history = agent.history("c5")
    assert is_summary(history[0]) and "SUMMARY OF EARLY TURNS" in history[0].text
    # summary + the kept turn (2 messages) + the question, then the new answer
    assert [m.text for m in history[1:]] == [
        "and the second question?",
        long_answer,
        "and the third question?",
        "Short [1].",
    ]
    final = model.calls[5]
    # Prefix layout: system prompt, summary, kept turns, then passages + question.
    assert final[0].text == SYSTEM_PROMPT
    assert "SUMMARY OF EARLY TURNS" in final[1].text
    assert final[2].text == "and the second question?"
    assert final[-1].text.startswith("Passages:") and final[-1].text.endswith("Question: and the third question?")


def test_stream_yields_text_pieces_then_the_same_result(make_agent: Any) -> None:
    agent, _ = make_agent(["One two three [1]."])
    pieces = list(agent.stream(WARRANTY_Q, "c6"))
    assert isinstance(pieces[-1], TurnResult)
    texts = pieces[:-1]
    assert len(texts) > 1 and all(isinstance(p, str) for p in texts)
    assert "".join(texts) == pieces[-1].answer == "One two three [1]."


async def test_async_api_matches_sync(make_agent: Any) -> None:
    agent, _ = make_agent(["Async answer [1].", "Streamed answer."])
    result = await agent.ainvoke(WARRANTY_Q, "c7")
    assert result.answer == "Async answer [1]."
    pieces = [p async for p in agent.astream("Another question?", "c8")]
    assert isinstance(pieces[-1], TurnResult) and pieces[-1].answer == "Streamed answer."


def test_conversation_survives_a_new_agent_object(unit_settings: Settings, retriever: Any) -> None:
    first, _ = scripted_agent(unit_settings, retriever, ["Parts and labour [1]."])
    first.invoke(WARRANTY_Q, "c9")
    first.close()

    second, model = scripted_agent(unit_settings, retriever, ["What about the X200 battery?", "Ten hours [1]."])
    try:
        assert [m.text for m in second.history("c9")] == [WARRANTY_Q, "Parts and labour [1]."]
        second.invoke("and the battery?", "c9")
        assert [kind(c) for c in model.calls] == ["condense", "agent"]
        assert len(second.history("c9")) == 4
    finally:
        second.close()


def test_unreachable_model_gives_a_retrieval_only_answer_and_keeps_the_turn(make_agent: Any) -> None:
    refused = openai.APIConnectionError(request=httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions"))
    agent, model = make_agent([refused, "Back again [1]."])
    pieces = list(agent.stream(WARRANTY_Q, "c10"))
    result = pieces[-1]
    assert isinstance(result, TurnResult)
    assert result.retrieval_only and not result.cached
    assert result.error is not None and "cannot reach the model server" in result.error
    assert result.answer.startswith("The language model is unavailable")
    assert "[1] warranty.md" in result.answer
    assert result.sources and result.sources[0].file == "warranty.md"
    assert any("retrieval only" in n for n in result.notices)
    assert pieces[:-1] == [result.answer]
    # The turn is in the history and the conversation goes on normally afterwards.
    assert [m.text for m in agent.history("c10")] == [WARRANTY_Q, result.answer]
    model.messages = iter(["standalone?", "Back again [1]."])
    after = agent.invoke("and now?", "c10")
    assert after.answer == "Back again [1]." and not after.retrieval_only


@pytest.mark.parametrize("question", ["", "   \n"])
def test_empty_question_is_refused_and_nothing_is_stored(make_agent: Any, question: str) -> None:
    agent, model = make_agent(["Parts and labour [1]."])
    agent.invoke(WARRANTY_Q, "c11")
    with pytest.raises(QuestionError, match="empty"):
        agent.invoke(question, "c11")
    assert len(agent.history("c11")) == 2 and len(model.calls) == 1


def test_over_long_question_is_truncated_with_a_notice(make_agent: Any, unit_settings: Settings) -> None:
    agent, model = make_agent(["Fine."])
    question = "warranty " * 500
    result = agent.invoke(question, "c12")
    limit = unit_settings.chains.max_question_tokens
    assert len(result.question) <= 4 * limit < len(question.strip())
    assert any("truncated" in n for n in result.notices)
    assert model.calls[0][-1].text.endswith(f"Question: {result.question}")


def test_bad_conversation_id_is_refused(make_agent: Any) -> None:
    agent, model = make_agent([])
    with pytest.raises(QuestionError, match="conversation id"):
        agent.invoke(WARRANTY_Q, "bad id/with slash")
    assert model.calls == []


def test_no_conversation_id_starts_a_new_conversation(make_agent: Any) -> None:
    agent, _ = make_agent(["One.", "Two."])
    a = agent.invoke(WARRANTY_Q)
    b = agent.invoke(WARRANTY_Q)
    assert a.conversation_id != b.conversation_id
    assert len(agent.history(a.conversation_id)) == 2


@pytest.mark.parametrize("verify", [True, False])
def test_verify_with_model_asks_the_served_model_before_answering_from_the_cache(
    unit_settings: Settings, retriever: Any, verify: bool
) -> None:
    settings = unit_settings.model_copy(
        update={"cache": unit_settings.cache.model_copy(update={"enabled": True, "verify_with_model": verify})}
    )
    model = ScriptedChatModel(script=["Parts and labour for two years [1].", "Yes."])
    with RagAgent.from_settings(settings, retriever=retriever, chat_model=model) as agent:
        first = agent.invoke(WARRANTY_Q)
        again = agent.invoke(WARRANTY_Q)  # a new conversation: answered from the cache

    assert not first.cached and again.cached and again.answer == first.answer
    # the verifier's yes/no question is the one call that is neither an agent nor a condense call
    assert [kind(c) for c in model.calls] == (["agent", "other"] if verify else ["agent"])


@pytest.fixture
def vectors_retrieval_got(retriever: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """(query, `query_embedding`) of every retrieval call (None: retrieval embedded the question itself)."""
    seen: list[tuple[str, Any]] = []
    retrieve = retriever.retrieve

    def spy(query: str, *args: Any, **kwargs: Any) -> Any:
        seen.append((query, kwargs.get("query_embedding")))
        return retrieve(query, *args, **kwargs)

    monkeypatch.setattr(retriever, "retrieve", spy)
    return seen


def test_retrieval_reuses_the_cache_lookups_question_vector(
    unit_settings: Settings, retriever: Any, embed_model: Any, vectors_retrieval_got: list[tuple[str, Any]]
) -> None:
    settings = unit_settings.model_copy(update={"cache": unit_settings.cache.model_copy(update={"enabled": True})})
    standalone = "How long does X200 shipping to Norway take?"
    script = [AIMessage("It covers parts [1]."), AIMessage(standalone), AIMessage("Five days [1]."), "Ok [1]."]
    with RagAgent.from_settings(settings, retriever=retriever, chat_model=ScriptedChatModel(script=script)) as agent:
        agent.invoke(WARRANTY_Q, "v1")
        agent.invoke("and shipping?", "v1")  # condensed first: the vector is the standalone question's
        agent.invoke("What about returns?", use_cache=False)  # no lookup: retrieval embeds it itself

    seen = dict(vectors_retrieval_got)
    # The follow-up also retrieves with the question as asked, which the cache never embedded.
    assert set(seen) == {WARRANTY_Q, standalone, "and shipping?", "What about returns?"}
    assert seen["and shipping?"] is None and seen["What about returns?"] is None
    assert seen[WARRANTY_Q] == pytest.approx(embed_model.get_query_embedding(WARRANTY_Q), abs=1e-5)
    assert seen[standalone] == pytest.approx(embed_model.get_query_embedding(standalone), abs=1e-5)


def test_a_cache_on_another_embedding_model_never_lends_its_vector(
    unit_settings: Settings,
    retriever: Any,
    embed_model: Any,
    tmp_path: Path,
    vectors_retrieval_got: list[tuple[str, Any]],
) -> None:
    from chains.cache import SemanticCache

    for name in (unit_settings.index.embed_model, "another-model"):
        cache = SemanticCache(tmp_path / name, embed_model, name, 0.85, 3600)
        model = ScriptedChatModel(script=["It covers parts [1]."])
        with RagAgent(unit_settings, retriever=retriever, chat_model=model, cache=cache) as agent:
            agent.invoke(WARRANTY_Q)

    (_, same_model), (_, other_model) = vectors_retrieval_got
    assert same_model is not None and other_model is None  # the other model's vector would not fit the index
