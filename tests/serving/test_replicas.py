"""Two real vLLM CPU replicas of the tiny model behind vLLM's router (`vllm-router`), as `make serve` runs them.

Requests go to the router's one base URL; each replica's own `/metrics` shows what it served. Then
one replica is killed: the router's health probes take it out of rotation and requests keep working.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from config import load_settings
from serving.fleet import Fleet
from serving.launch import check_port_free, free_port, group_pids
from serving.router import replica_urls

pytestmark = [pytest.mark.integration, pytest.mark.engine]


def _free_run(count: int) -> int:
    """The first of `count` consecutive free loopback ports."""
    while True:
        base = free_port()
        try:
            for port in range(base, base + count):
                check_port_free("127.0.0.1", port)
        except Exception:
            continue
        return base


@pytest.fixture(scope="module")
def fleet(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    serving = load_settings(
        "test",
        serving={
            "model": str(tiny_model_path),
            "port": free_port(),
            "router_metrics_port": free_port(),
            "replicas": 2,
            "replica_base_port": _free_run(2),
            "router_policy": "round_robin",
            "router_health_check_interval_s": 1,
            "router_health_failure_threshold": 2,
            "startup_timeout_s": 900,  # two engines compiling at once on a loaded 2-core machine
            "run_dir": tmp_path_factory.mktemp("fleet"),
        },
    ).serving
    fleet = Fleet(serving, device="cpu").start()
    groups = [server.pid for server in fleet.servers]
    try:
        yield fleet
    finally:
        fleet.stop()
    assert all(pgid is not None and not group_pids(pgid) for pgid in groups), "processes left behind after stop()"


def served(replica_url: str) -> float:
    """Requests a replica finished, from its own Prometheus counter."""
    text = httpx.get(f"{replica_url}/metrics", timeout=10).raise_for_status().text
    values = re.findall(r"^vllm:request_success_total\{[^}]*\} ([0-9.eE+-]+)$", text, re.MULTILINE)
    return sum(float(v) for v in values)


def ask(base_url: str, text: str) -> int:
    """One short chat completion through the router; its HTTP status (0 when the connection failed)."""
    body = {"model": "rag-model", "messages": [{"role": "user", "content": text}], "max_tokens": 4}
    try:
        return httpx.post(f"{base_url}/chat/completions", json=body, timeout=120).status_code
    except httpx.HTTPError:
        return 0


def router_sees(fleet: Fleet, url: str) -> bool | None:
    """The router's view of one replica (`/workers`): healthy or not."""
    assert fleet.router is not None
    workers = httpx.get(f"{fleet.router.root_url}/workers", timeout=10).raise_for_status().json()["workers"]
    return next(w["is_healthy"] for w in workers if w["url"] == url)


def test_requests_through_the_router_land_on_both_replicas(fleet: Fleet) -> None:
    urls = replica_urls(fleet.serving)
    before = [served(url) for url in urls]
    statuses = [ask(fleet.base_url, f"question {i}") for i in range(6)]
    after = [served(url) for url in urls]
    assert statuses == [200] * 6
    assert [b - a for a, b in zip(before, after, strict=True)] == [3.0, 3.0]  # round robin
    models = httpx.get(f"{fleet.base_url}/models", timeout=10).raise_for_status().json()
    assert [m["id"] for m in models["data"]] == ["rag-model"]  # the app's engine probe works through it


def test_a_killed_replica_is_routed_around_once_the_router_notices(fleet: Fleet) -> None:
    doomed = fleet.engines[1]
    alive_url, doomed_url = replica_urls(fleet.serving)
    assert doomed.pid is not None
    os.killpg(doomed.pid, signal.SIGKILL)
    started = time.monotonic()
    # Before the probes notice, the router's retries resend a request the dead replica refused.
    during = [ask(fleet.base_url, f"while noticing {i}") for i in range(4)]
    while router_sees(fleet, doomed_url) and time.monotonic() - started < 30:
        time.sleep(0.2)
    noticed_s = time.monotonic() - started
    assert during == [200] * 4, f"requests failed before the router noticed the dead replica: {during}"
    assert router_sees(fleet, doomed_url) is False, "the router never marked the killed replica unhealthy"
    before = served(alive_url)
    statuses = [ask(fleet.base_url, f"after {i}") for i in range(6)]
    assert statuses == [200] * 6, f"requests failed after the router noticed ({noticed_s:.1f} s): {statuses}"
    assert served(alive_url) - before == 6.0
    health = httpx.get(f"{fleet.router.root_url}/health", timeout=10) if fleet.router else None
    assert health is not None and health.status_code == 503 and doomed_url in health.text
    print(f"router noticed the dead replica after {noticed_s:.1f} s")
