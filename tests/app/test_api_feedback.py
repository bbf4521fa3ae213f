"""Feedback through the API: rate a turn the chat returned, export the ratings (real server, real
store; the answer itself comes from the tiny random model, so only ids and fields are checked)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import httpx
import openai
import pytest

from tests.app.api_server import API_KEY
from tests.app.replicas import ApiUnderTest

pytestmark = [pytest.mark.integration]

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def ask(api: ApiUnderTest, question: str) -> dict[str, Any]:
    """The chat response's ids and question, as a client would keep them for rating."""
    client = openai.OpenAI(base_url=api.base_url, api_key=API_KEY, max_retries=0, timeout=120)
    completion = client.chat.completions.create(
        model="rag-model", messages=[{"role": "user", "content": question}], max_tokens=8
    )
    extra = completion.model_extra or {}
    return {"conversation_id": extra["conversation_id"], "turn_id": extra["turn_id"]}


def export(api: ApiUnderTest, export_format: str) -> httpx.Response:
    response = httpx.get(f"{api.base_url}/feedback", params={"format": export_format}, headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    return response


def test_rating_a_turn_and_exporting_it(api: ApiUnderTest) -> None:
    turn = ask(api, "Where are uploaded files saved?")
    first = httpx.post(
        f"{api.base_url}/feedback", json={**turn, "score": -1, "comment": "cites the wrong file"}, headers=AUTH
    )
    assert first.status_code == 200, first.text
    assert first.json() == {**turn, "score": -1, "comment": "cites the wrong file"}
    again = httpx.post(f"{api.base_url}/feedback", json={**turn, "score": 1}, headers=AUTH)
    assert again.status_code == 200, again.text

    jsonl = export(api, "jsonl")
    assert jsonl.headers["content-type"].startswith("application/jsonl")
    rows = [json.loads(line) for line in jsonl.text.splitlines()]
    (row,) = [r for r in rows if r["turn_id"] == turn["turn_id"]]
    assert row["score"] == 1 and row["comment"] is None, "a second rating replaces the first"
    assert row["question"] == "Where are uploaded files saved?" and row["conversation_id"] == turn["conversation_id"]

    table = export(api, "csv")
    assert table.headers["content-type"].startswith("text/csv")
    assert table.headers["content-disposition"] == 'attachment; filename="feedback.csv"'
    (csv_row,) = [r for r in csv.DictReader(io.StringIO(table.text)) if r["turn_id"] == turn["turn_id"]]
    assert csv_row["score"] == "1" and csv_row["question"] == "Where are uploaded files saved?"


def test_bad_feedback_is_refused_and_stores_nothing(api: ApiUnderTest) -> None:
    turn = ask(api, "Which file formats can it read?")
    before = export(api, "jsonl").text
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({**turn, "score": 0}, 400, "score"),
        ({**turn, "score": 1, "comment": "x" * 2001}, 400, "comment"),
        ({**turn, "score": 1, "rating": "great"}, 400, "rating"),
        ({"conversation_id": turn["conversation_id"], "score": 1}, 400, "turn_id"),
        ({**turn, "turn_id": "no-such-turn", "score": 1}, 404, "no turn"),
    ]
    for body, status, message in cases:
        response = httpx.post(f"{api.base_url}/feedback", json=body, headers=AUTH)
        assert response.status_code == status, (body, response.text)
        assert message in response.json()["error"]["message"]
    assert httpx.post(f"{api.base_url}/feedback", json={**turn, "score": 1}).status_code == 401
    assert httpx.get(f"{api.base_url}/feedback").status_code == 401
    unknown = httpx.get(f"{api.base_url}/feedback", params={"format": "xml"}, headers=AUTH)
    assert unknown.status_code == 400 and "format" in unknown.json()["error"]["message"]
    assert export(api, "jsonl").text == before
