"""The synthetic chats that train the offline model: the rules they teach, and that they carry the
chains' real prompts, passage layout and tool schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chains.prompts import CONDENSE_TEMPLATE, NO_PASSAGES, SUMMARY_PROMPT, SYSTEM_PROMPT, untrusted
from chains.synthetic import (
    KINDS,
    NO_ANSWER,
    Renderer,
    answer_from,
    condensed,
    first_sentence,
    main,
    search_query,
    subject_of,
    summary_of,
    tool_call_query,
    tool_schema,
    unfenced,
)


def test_first_sentence_skips_headings_and_stops_at_the_first_full_stop() -> None:
    assert first_sentence("## Install\n\nRun make install. Then make demo.") == "Run make install."
    assert first_sentence("Version 1.5 works. Later ones too.") == "Version 1.5 works."  # 1.5 is no stop
    assert first_sentence("wrapped over\ntwo lines. Next.") == "wrapped over\ntwo lines."
    assert first_sentence("no stop at all\n\nsecond paragraph.") == "no stop at all"


def test_answer_quotes_passage_one_with_its_number_or_says_the_documents_do_not_say() -> None:
    context = "[4] faq.md, § Ports\nThe API listens on 8000. It can move.\n\n[5] b.md\nOther text."
    assert answer_from(context) == "The API listens on 8000. [4]"
    assert answer_from(NO_PASSAGES) == NO_ANSWER
    assert answer_from("") == NO_ANSWER


def test_search_requests_and_missing_passages_make_a_tool_call() -> None:
    assert search_query("Please search for the cpu profile?") == "the cpu profile"
    assert search_query("Could you LOOK UP port numbers.") == "port numbers"
    assert search_query("What is the cpu profile?") is None
    assert tool_call_query("What is the cpu profile?", NO_PASSAGES) == "What is the cpu profile"
    assert tool_call_query("What is the cpu profile?", "[1] a.md\nText.") is None
    assert tool_call_query("Look up the cache", "[1] a.md\nText.") == "Look up the cache"  # the question is the query


def test_condense_adds_the_last_subject_only_where_a_pronoun_stands() -> None:
    assert subject_of("How do I configure the semantic cache?") == "the semantic cache"
    assert condensed("And how do I clear it?", "How do I configure the semantic cache?") == (
        "And how do I clear the semantic cache?"
    )
    assert condensed("What is the cpu profile?", "How do I configure the semantic cache?") == "What is the cpu profile?"


def test_summary_is_the_first_message_so_an_earlier_summary_carries_over() -> None:
    assert summary_of(["What is the cpu profile?", "How do I change it?"]) == "What is the cpu profile?"


def test_tool_schema_is_the_agents_search_tool() -> None:
    schema = tool_schema()
    assert schema["function"]["name"] == "search_documents"
    assert schema["function"]["parameters"]["required"] == ["query"]
    assert "runtime" not in schema["function"]["parameters"]["properties"]  # injected, not shown to the model


@pytest.mark.parametrize("kind", KINDS)
def test_examples_use_the_chains_prompts_and_end_with_the_rule_answer(kind: str) -> None:
    renderer = Renderer(3, held_out=False)
    for _ in range(20):
        example = renderer.example(kind)
        messages = example["messages"]
        assert example["kind"] == kind and messages[-1]["role"] == "assistant"
        if kind == "summary":
            assert example["tools"] is None
            assert messages[0]["content"].startswith(SUMMARY_PROMPT.split("{messages}")[0])
            continue
        assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
        last_user = next(m for m in reversed(messages) if m["role"] == "user")
        if kind == "condense":
            assert last_user["content"].startswith(CONDENSE_TEMPLATE.split("{question}")[0])
            assert example["tools"] == [tool_schema()]
        elif kind == "tool_call":
            call = messages[-1]["tool_calls"][0]["function"]
            question = last_user["content"].split("\n\nQuestion: ", 1)[1]
            context = last_user["content"].split("\n\nQuestion: ", 1)[0].removeprefix("Passages:\n")
            assert call == {"name": "search_documents", "arguments": {"query": tool_call_query(question, context)}}
        elif kind == "tool_answer":
            assert messages[-2]["role"] == "tool"
            assert messages[-1]["content"] == answer_from(messages[-2]["content"])
            result = unfenced(messages[-2]["content"])
            assert messages[-2]["content"] == untrusted(result)  # fenced as the search tool returns it
            prompt = unfenced(last_user["content"].split("\n\nQuestion: ", 1)[0].removeprefix("Passages:\n"))
            if prompt == NO_PASSAGES and result != NO_PASSAGES:
                assert result.startswith("[1] ")  # nothing shown before: the tool's passages are numbered from 1
        else:
            context = last_user["content"].split("\n\nQuestion: ", 1)[0].removeprefix("Passages:\n")
            assert messages[-1]["content"] == answer_from(context)


def test_held_out_examples_quote_sentences_never_trained_on(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path), "--train", "300", "--eval-per-kind", "10", "--seed", "5"]) == 0
    train = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    held = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert len(train) == 300 and len(held) == 10 * len(KINDS)
    trained_answers = {e["messages"][-1]["content"] for e in train if e["kind"] == "answer"}
    held_answers = [e["messages"][-1]["content"] for e in held if e["kind"] == "answer"]
    assert held_answers and not trained_answers & set(held_answers)


def test_bad_counts_are_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--train", "0"])
    assert "must be positive" in capsys.readouterr().err
