"""`serving.replicas` rendered into replica commands and the router's command, checked by the router's
own parser; bad replica settings refused at load. No servers start here."""

from __future__ import annotations

import os

import pytest

from config import PROFILES, SettingsError, load_settings
from serving.command import ROUTER_MODULE, render_command
from serving.fleet import engine_commands
from serving.router import render_router_command, replica_urls, validate_router_command
from tests.serving.serving_cli import run_cli


def test_replica_and_router_commands_share_one_client_port() -> None:
    serving = load_settings("cpu", serving={"replicas": 3, "port": 9000, "replica_base_port": 9100}).serving
    replicas = engine_commands(serving, "cpu")
    assert [c.value("--port") for c in replicas] == ["9100", "9101", "9102"]
    assert {c.value("--host") for c in replicas} == {"127.0.0.1"}  # only the router faces clients
    router = render_router_command(serving)
    assert router.argv[1:3] == ["-m", ROUTER_MODULE]
    args = list(router.args)
    assert args[args.index("--port") + 1] == "9000"
    workers = args[args.index("--worker-urls") + 1 : args.index("--worker-urls") + 4]
    assert workers == replica_urls(serving) == [f"http://127.0.0.1:{p}" for p in (9100, 9101, 9102)]
    assert args[args.index("--prometheus-port") + 1] == str(serving.router_metrics_port)
    assert args[args.index("--policy") + 1] == "round_robin"


def test_each_replica_gets_cores_or_gpus_of_its_own() -> None:
    serving = load_settings("cpu", serving={"replicas": 2}).serving
    cpu = engine_commands(serving, "cpu")
    cores = sorted(os.sched_getaffinity(0))
    assert [c.env["VLLM_CPU_OMP_THREADS_BIND"] for c in cpu] == [str(cores[i % len(cores)]) for i in (0, 1)]
    assert all("CUDA_VISIBLE_DEVICES" not in c.env for c in cpu)
    parallel = {"replicas": 2, "tensor_parallel_size": 2, "pipeline_parallel_size": 2}
    gpu = engine_commands(load_settings("balanced", serving=parallel).serving, "cuda")
    assert [c.env["CUDA_VISIBLE_DEVICES"] for c in gpu] == ["0,1,2,3", "4,5,6,7"]
    alone = load_settings("cpu").serving
    assert engine_commands(alone, "cpu") == [render_command(alone, "cpu")]  # one engine: unchanged


@pytest.mark.parametrize("profile", PROFILES)
def test_the_router_accepts_every_profiles_router_command(profile: str) -> None:
    serving = load_settings(profile, serving={"replicas": 2}).serving
    assert validate_router_command(render_router_command(serving)) is None


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (["--policy", "fastest"], "invalid choice: 'fastest'"),
        (["--health-check-interval-secs", "soon"], "invalid int value: 'soon'"),
        (["--turbo"], "unrecognized arguments: --turbo"),
    ],
)
def test_the_router_rejects_a_bad_extra_argument_with_its_reason(extra: list[str], reason: str) -> None:
    serving = load_settings("test", serving={"replicas": 2, "router_extra_args": extra}).serving
    verdict = validate_router_command(render_router_command(serving))
    assert verdict is not None and reason in verdict


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"replicas": 2, "port": 8010, "replica_base_port": 8010}, "must all differ"),
        ({"replicas": 2, "router_metrics_port": 8011, "replica_base_port": 8010}, "must all differ"),
        ({"replicas": 2, "router_metrics_port": 8000, "port": 8000}, "must all differ"),
        ({"replicas": 4, "replica_base_port": 65534}, "runs past port 65535"),
        ({"replicas": 0}, "greater than or equal to 1"),
        ({"replicas": 17}, "less than or equal to 16"),
        ({"router_policy": "fastest"}, "router_policy"),
    ],
)
def test_bad_replica_settings_are_refused_at_load(override: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings("test", serving=override)


def test_command_prints_each_replica_then_the_router() -> None:
    env = {"RAG_SERVING__REPLICAS": "2", "RAG_SERVING__PORT": "9000", "RAG_SERVING__REPLICA_BASE_PORT": "9100"}
    done = run_cli("command", "--profile", "test", "--device", "cpu", env=env)
    assert done.returncode == 0, done.stderr
    first, second, router = done.stdout.splitlines()
    assert "--port 9100" in first and "--port 9101" in second
    assert first.count("VLLM_CPU_OMP_THREADS_BIND=") == second.count("VLLM_CPU_OMP_THREADS_BIND=") == 1
    assert f"-m {ROUTER_MODULE}" in router and "--port 9000" in router
