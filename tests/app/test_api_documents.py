"""Documents through the API: upload (sanitised names, size limits), ingest jobs, list, fetch,
delete (a deleted document is never cited again). Real index, real embedding, real engine."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.app.api_server import API_KEY, UPLOAD_LIMIT_MB
from tests.app.replicas import ApiUnderTest

pytestmark = [pytest.mark.integration]

AUTH = {"Authorization": f"Bearer {API_KEY}"}
ZEBRA = b"# Zebra care\n\nZebras in the Okavango reserve are fed lucerne hay twice a day by the keepers.\n"


def wait_for_job(api: ApiUnderTest, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while True:
        job = httpx.get(f"{api.base_url}/documents/jobs/{job_id}", headers=AUTH, timeout=30).json()
        if job["state"] in ("done", "failed"):
            return job
        assert time.monotonic() < deadline, f"ingest job still {job['state']} after 5 minutes"
        time.sleep(0.2)


def cited_files(api: ApiUnderTest, question: str) -> set[str]:
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": 8, "use_cache": False, "top_k": 5}
    response = httpx.post(f"{api.base_url}/chat/completions", json=body, headers=AUTH, timeout=120)
    response.raise_for_status()
    return {s["file"] for s in response.json()["sources"]}


def index_state(api: ApiUnderTest) -> dict[str, Any]:
    """/v1/index asked twice, without the cache part (its counters are per process): in shared mode
    the two calls reach the two replicas, which must report the same index."""
    first, second = (
        {**httpx.get(f"{api.base_url}/index", headers=AUTH, timeout=30).json(), "cache": None} for _ in "ab"
    )
    assert first == second, "two replicas report different indexes"
    return first


def test_upload_ingest_cite_delete(api: ApiUnderTest, docs_dir: Path) -> None:
    before = index_state(api)
    files = [("files", ("../../outside/zebra care.md", ZEBRA, "text/markdown"))]
    response = httpx.post(f"{api.base_url}/documents", files=files, headers=AUTH, timeout=60)
    assert response.status_code == 202, response.text
    (saved,) = response.json()["files"]
    assert saved["path"] == "uploads/zebra care.md"
    assert (docs_dir / "uploads" / "zebra care.md").read_bytes() == ZEBRA
    job = wait_for_job(api, response.json()["job"]["id"])
    assert job["state"] == "done" and job["done"] == job["total"] == 1
    assert job["results"] == [{"path": "uploads/zebra care.md", "status": "added", "reason": None}]
    after = index_state(api)
    assert after["documents"] == before["documents"] + 1
    assert after["index_version"] != before["index_version"]
    listed = httpx.get(f"{api.base_url}/documents", headers=AUTH, timeout=30).json()["data"]
    assert any(d["path"] == "uploads/zebra care.md" and d["chunks"] >= 1 for d in listed)
    fetched = httpx.get(f"{api.base_url}/documents/uploads/zebra%20care.md", headers=AUTH, timeout=30)
    assert fetched.status_code == 200 and fetched.content == ZEBRA

    question = "What do the keepers feed the zebras in the Okavango reserve?"
    assert "uploads/zebra care.md" in cited_files(api, question)
    deleted = httpx.delete(f"{api.base_url}/documents/uploads/zebra%20care.md", headers=AUTH, timeout=120)
    assert deleted.status_code == 204, deleted.text
    assert not (docs_dir / "uploads" / "zebra care.md").exists()
    assert "uploads/zebra care.md" not in cited_files(api, question)
    listed = httpx.get(f"{api.base_url}/documents", headers=AUTH, timeout=30).json()["data"]
    assert all(d["path"] != "uploads/zebra care.md" for d in listed)
    final = index_state(api)
    assert final["documents"] == before["documents"]


@pytest.mark.parametrize(
    ("hostile", "saved_as"),
    [
        ("../../../../tmp/evil.md", "evil.md"),
        ("..\\..\\windows\\evil2.md", "evil2.md"),
        ("/etc/passwd.md", "passwd.md"),
        (".hidden.md", "hidden.md"),
        ("..", None),
        ("a\x00b/../c<>|?.txt", "c____.txt"),
    ],
)
def test_hostile_upload_names_stay_inside_the_documents_folder(
    api: ApiUnderTest, docs_dir: Path, hostile: str, saved_as: str | None
) -> None:
    response = httpx.post(
        f"{api.base_url}/documents",
        files=[("files", (hostile, b"hello there\n", "text/plain"))],
        headers=AUTH,
        timeout=60,
    )
    if saved_as is None:
        assert response.status_code == 400, response.text
        return
    assert response.status_code == 202, response.text
    (saved,) = response.json()["files"]
    assert saved["name"] == saved_as
    target = (docs_dir / "uploads" / saved_as).resolve()
    assert target.is_file() and target.parent == (docs_dir / "uploads").resolve()
    wait_for_job(api, response.json()["job"]["id"])


def test_oversize_and_bad_uploads_are_refused_and_write_nothing(api: ApiUnderTest, docs_dir: Path) -> None:
    big = b"x" * int(UPLOAD_LIMIT_MB * 1_000_000 + 1)
    response = httpx.post(
        f"{api.base_url}/documents", files=[("files", ("big.md", big, "text/markdown"))], headers=AUTH, timeout=60
    )
    assert response.status_code == 413
    assert "api.max_upload_mb" in response.json()["error"]["message"]
    assert not (docs_dir / "uploads" / "big.md").exists()
    response = httpx.post(
        f"{api.base_url}/documents", files=[("files", ("tool.exe", b"MZ", "application/octet-stream"))], headers=AUTH
    )
    assert response.status_code == 400 and "cannot be indexed" in response.json()["error"]["message"]
    assert not (docs_dir / "uploads" / "tool.exe").exists()
    files = [("files", (f"f{i}.md", b"x", "text/markdown")) for i in range(25)]
    response = httpx.post(f"{api.base_url}/documents", files=files, headers=AUTH, timeout=60)
    assert response.status_code == 413
    assert not (docs_dir / "uploads" / "f0.md").exists()


def test_unknown_jobs_documents_and_traversal_are_404(api: ApiUnderTest) -> None:
    assert httpx.get(f"{api.base_url}/documents/jobs/nope", headers=AUTH).status_code == 404
    assert httpx.delete(f"{api.base_url}/documents/user-guide/nope.md", headers=AUTH).status_code == 404
    assert httpx.get(f"{api.base_url}/documents/..%2F..%2Fapp.sqlite", headers=AUTH).status_code == 404
    assert httpx.get(f"{api.base_url}/documents/user-guide/getting-started.md", headers=AUTH).status_code == 200
