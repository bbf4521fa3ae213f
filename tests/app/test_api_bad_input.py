"""Bad input against the real API server (real index, cache and engine): each gets a clear error
in OpenAI's shape, and nothing already stored is lost. Complements test_api_chat.py (unknown
model, empty question, bad temperature or conversation id, a 300 kB body) and
test_api_documents.py (hostile upload names, oversized and unindexable uploads)."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.app.api_server import API_KEY
from tests.app.replicas import ApiUnderTest
from tests.app.test_api_documents import wait_for_job
from tests.indexing.zip_bombs import docx_zip_bomb

pytestmark = [pytest.mark.integration]

AUTH = {"Authorization": f"Bearer {API_KEY}"}
GIGABYTE = 1 << 30
CHUNK = 1 << 16


def assert_error(response: httpx.Response, status: int, kind: str, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["type"] == kind, body
    for word in words:
        assert word in body["error"]["message"], body
    return body["error"]


@pytest.fixture
def kept(api: ApiUnderTest) -> Iterator[None]:
    """After the test: every document listed before is still listed, and a conversation still answers."""
    listed = httpx.get(f"{api.base_url}/documents", headers=AUTH, timeout=60).json()["data"]
    before = {d["path"]: d["chunks"] for d in listed}
    yield
    listed = httpx.get(f"{api.base_url}/documents", headers=AUTH, timeout=60).json()["data"]
    after = {d["path"]: d["chunks"] for d in listed}
    assert before.items() <= after.items(), "documents stored before the bad input were lost"


def chat(api: ApiUnderTest, **kwargs: Any) -> httpx.Response:
    return httpx.post(
        f"{api.base_url}/chat/completions", headers={**AUTH, **kwargs.pop("headers", {})}, timeout=120, **kwargs
    )


@dataclass
class Streamed:
    status: int | None
    """The status the server answered with while we were still sending (None: it never answered)."""
    body: bytes
    sent: int
    """Bytes of the body the server accepted before it answered or closed the connection."""

    def json(self) -> Any:
        return json.loads(self.body)


def stream_body(api: ApiUnderTest, path: str, headers: dict[str, str], head: bytes, declared: bool) -> Streamed:
    """POST a 1 GB body from a generator on a raw socket (an HTTP client would write it all before
    reading the answer), watching for the server's answer between chunks: what a server that
    stops reading looks like from outside."""
    host, port = api.url.removeprefix("http://").split(":")
    framing = {"Content-Length": str(len(head) + GIGABYTE)} if declared else {"Transfer-Encoding": "chunked"}
    lines = [
        f"POST /v1{path} HTTP/1.1",
        f"Host: {host}:{port}",
        *(f"{k}: {v}" for k, v in {**headers, **framing}.items()),
    ]
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    chunk = b"a" * CHUNK
    pieces = iter([head] + [chunk] * (GIGABYTE // CHUNK))
    sent, answer = 0, b""
    try:
        for piece in pieces:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            sock.sendall(piece if declared else b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
    except OSError:  # the server closed the connection: its answer may still be waiting to be read
        pass
    try:
        sock.settimeout(30)
        while data := sock.recv(65536):
            answer += data
    except OSError:
        pass
    finally:
        sock.close()
    if not answer:
        return Streamed(None, b"", sent)
    head_part, _, body = answer.partition(b"\r\n\r\n")
    return Streamed(int(head_part.split()[1]), body, sent)


def test_malformed_json_and_invalid_utf8_are_400(api: ApiUnderTest, kept: None) -> None:
    json_headers = {"Content-Type": "application/json"}
    response = chat(api, content=b'{"messages": [{"role": "user", "content": "hi"}', headers=json_headers)
    assert_error(response, 400, "invalid_request_error", "JSON")
    response = chat(api, content=b'{"messages": [{"role": "user", "content": "caf\xe9 \xff"}]}', headers=json_headers)
    assert_error(response, 400, "invalid_request_error")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": "What is this?"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
        ({"messages": [{"role": "user", "content": 42}]}, "content"),
        ({"messages": [{"role": "user", "content": "hi"}], "stream": "sometimes"}, "stream"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "top_k": 0}, "top_k"),
        ({"messages": [{"role": "user", "content": "hi"}], "use_cache": {"no": 1}}, "use_cache"),
        ([{"role": "user", "content": "hi"}], "body"),
        (None, "body"),
    ],
)
def test_wrong_types_are_400_naming_the_field(api: ApiUnderTest, body: Any, field: str) -> None:
    assert_error(chat(api, json=body), 400, "invalid_request_error", field)


@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        ("text/plain", b"What is this?"),
        ("application/x-www-form-urlencoded", b"messages=hi"),
        ("application/xml", b"<m/>"),
    ],
)
def test_chat_in_another_content_type_is_refused(api: ApiUnderTest, content_type: str, data: bytes) -> None:
    response = chat(api, content=data, headers={"Content-Type": content_type})
    assert_error(response, 415, "invalid_request_error", "application/json")


def test_upload_that_is_not_multipart_is_refused(api: ApiUnderTest, docs_dir: Path) -> None:
    response = httpx.post(f"{api.base_url}/documents", json={"files": ["a.md"]}, headers=AUTH, timeout=60)
    assert_error(response, 415, "invalid_request_error", "multipart/form-data")


def test_100000_character_question_is_answered_truncated_with_a_notice(api: ApiUnderTest) -> None:
    question = ("How do I add my own documents to the index? " * 2300)[:100_000]
    response = chat(api, json={"messages": [{"role": "user", "content": question}], "max_tokens": 8})
    assert response.status_code == 200, response.text
    body = response.json()
    assert any("truncated" in n for n in body["notices"]), body["notices"]
    assert body["choices"][0]["message"]["content"] and body["sources"]


def test_control_characters_and_nul_bytes_are_removed_from_the_question(api: ApiUnderTest) -> None:
    question = "How do I\u0000 add\u001b[2J my own\u0007 documents?\u007f"
    response = chat(
        api, json={"messages": [{"role": "user", "content": question}], "max_tokens": 8, "use_cache": False}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "removed 4 control character(s) from the question" in body["notices"]
    (turn,) = api.history(body["conversation_id"])
    assert turn.question == "How do I add[2J my own documents?"


def test_bad_conversation_header_is_400(api: ApiUnderTest) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    for bad in ("../../etc/passwd", "x" * 200, "a b"):
        assert_error(
            chat(api, json=body, headers={"X-Conversation-Id": bad}), 400, "invalid_request_error", "conversation id"
        )


@pytest.mark.parametrize(
    "authorization",
    ["", "Bearer", f"Basic {API_KEY}", f"Bearer {API_KEY.upper()}", f"Bearer {API_KEY}x", API_KEY, "Bearer caf\u00e9"],
)
def test_missing_or_wrong_bearer_token_is_401(api: ApiUnderTest, authorization: str) -> None:
    headers = [(b"Authorization", authorization.encode())] if authorization else []
    response = httpx.get(f"{api.base_url}/documents", headers=headers, timeout=30)
    assert_error(response, 401, "authentication_error", "API key")
    assert response.headers["www-authenticate"] == "Bearer"


def test_key_is_accepted_only_in_the_authorization_header(api: ApiUnderTest) -> None:
    assert httpx.get(f"{api.base_url}/documents", params={"api_key": API_KEY}, timeout=30).status_code == 401
    assert httpx.get(f"{api.base_url}/documents", headers={"X-Api-Key": API_KEY}, timeout=30).status_code == 401
    assert httpx.get(f"{api.base_url}/documents", headers={"Authorization": f"bearer  {API_KEY}"}).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",  # ../../etc/passwd
        "%2Fetc%2Fpasswd",  # /etc/passwd
        "%2E%2E%5C%2E%2E%5Capp.sqlite",  # ..\..\app.sqlite
        "user-guide%2F%2E%2E%2F%2E%2E%2Fapp.sqlite",  # user-guide/../../app.sqlite
        "user-guide%2Fgetting-started.md%00.txt",  # NUL byte
        "C:%5CWindows%5Cwin.ini",
    ],
)
def test_traversal_in_delete_and_fetch_names_touches_nothing(
    api: ApiUnderTest, docs_dir: Path, path: str, kept: None
) -> None:
    outside = docs_dir.parent / "app.sqlite"  # the turn store (embedded); shared mode keeps it in PostgreSQL
    if api.mode == "shared":
        outside.write_bytes(b"a file beside the documents folder that no request may reach")
    assert outside.is_file()
    response = httpx.delete(f"{api.base_url}/documents/{path}", headers=AUTH, timeout=60)
    assert_error(response, 404, "not_found_error", "no document")
    assert_error(httpx.get(f"{api.base_url}/documents/{path}", headers=AUTH, timeout=30), 404, "not_found_error")
    assert outside.is_file() and (docs_dir / "user-guide" / "getting-started.md").is_file()


@pytest.mark.per_process  # each process refuses on its own socket; a front between would be what is measured
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_oversized_chat_body_is_refused_while_it_streams(api: ApiUnderTest, declared: bool) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    answer = stream_body(api, "/chat/completions", headers, b'{"messages": [{"role": "user", "content": "', declared)
    assert answer.status == 413 and answer.json()["error"]["type"] == "request_too_large", answer
    assert answer.sent < 16 << 20, f"the server read {answer.sent / 1e6:.0f} MB of a 1 GB body limited to 256 kB"


MULTIPART_HEAD = (
    b'--XyZ\r\nContent-Disposition: form-data; name="files"; filename="huge.md"\r\nContent-Type: text/markdown\r\n\r\n'
)


@pytest.mark.per_process  # as above
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_1gb_upload_is_refused_by_size_before_it_is_read(
    api: ApiUnderTest, docs_dir: Path, declared: bool, kept: None
) -> None:
    headers = {**AUTH, "Content-Type": "multipart/form-data; boundary=XyZ"}
    answer = stream_body(api, "/documents", headers, MULTIPART_HEAD, declared)
    assert answer.status == 413, answer
    assert answer.json()["error"]["type"] == "request_too_large"
    assert answer.sent < 16 << 20, f"the server read {answer.sent / 1e6:.0f} MB of a 1 GB upload"
    uploads = docs_dir / "uploads"
    assert not (uploads / "huge.md").exists()
    assert not [p for p in uploads.iterdir() if p.name.endswith(".part")], "no partial file left behind"


def test_uploaded_zip_bomb_fails_its_ingest_with_a_reason_and_keeps_the_rest(
    api: ApiUnderTest, docs_dir: Path, kept: None
) -> None:
    bomb = docx_zip_bomb(40_000_000)  # 40 MB of text in about 40 kB: under the upload limit
    files = [("files", ("bomb.docx", bomb, "application/vnd.openxmlformats-officedocument.wordprocessingml.document"))]
    response = httpx.post(f"{api.base_url}/documents", files=files, headers=AUTH, timeout=60)
    assert response.status_code == 202, response.text
    job = wait_for_job(api, response.json()["job"]["id"])
    assert job["state"] == "done"
    (result,) = job["results"]
    assert result["status"] == "failed" and "zip bomb" in result["reason"], result
    listed = httpx.get(f"{api.base_url}/documents", headers=AUTH, timeout=60).json()["data"]
    assert all(d["path"] != "uploads/bomb.docx" for d in listed)


def test_file_whose_content_is_not_its_type_fails_with_a_reason(api: ApiUnderTest, kept: None) -> None:
    files = [("files", ("report.pdf", b"MZ\x90\x00\x03 this is a Windows program", "application/pdf"))]
    response = httpx.post(f"{api.base_url}/documents", files=files, headers=AUTH, timeout=60)
    assert response.status_code == 202, response.text
    job = wait_for_job(api, response.json()["job"]["id"])
    (result,) = job["results"]
    assert result["status"] == "failed" and "not a readable PDF" in result["reason"], result


def test_the_server_still_answers_after_the_bad_input(api: ApiUnderTest) -> None:
    started = time.monotonic()
    response = chat(
        api, json={"messages": [{"role": "user", "content": "Which file formats can it read?"}], "max_tokens": 8}
    )
    assert response.status_code == 200 and response.json()["sources"], response.text
    assert time.monotonic() - started < 120
