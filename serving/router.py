"""vLLM's router (`vllm-router`, from the vLLM project) in front of several identical engines.

Why this router: it is vLLM's own, installs from PyPI as a self-contained wheel (a Rust binary;
nothing in either environment changes), probes every replica's `/health` and takes a failing one
out of rotation, retries a failed request on another replica, and knows vLLM's routing policies
(round robin, cache-aware prefix affinity, power of two). vLLM's data-parallel mode
(`--data-parallel-size`) runs one API server for all engines, so one dead engine takes every
request down; nginx has only passive health checks in its free version.
"""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass

from config.settings import ServingSettings, loopback_url
from serving.command import ROUTER_MODULE, shell_line
from serving.launch import ServerProcess, check_port_free, root_url


@dataclass(frozen=True)
class RouterCommand:
    """One router invocation: `python -m vllm_router.launch_router args` in the app environment."""

    python: str
    args: tuple[str, ...]

    @property
    def argv(self) -> list[str]:
        return [self.python, "-m", ROUTER_MODULE, *self.args]

    def shell(self) -> str:
        return shell_line({}, self.argv)


def replica_settings(serving: ServingSettings, index: int) -> ServingSettings:
    """The settings of replica `index`: the same engine on `replica_base_port + index`, on loopback."""
    return serving.model_copy(update={"host": "127.0.0.1", "port": serving.replica_base_port + index, "replicas": 1})


def replica_urls(serving: ServingSettings) -> list[str]:
    return [loopback_url("127.0.0.1", serving.replica_base_port + i) for i in range(serving.replicas)]


def render_router_command(serving: ServingSettings) -> RouterCommand:
    """The router listens where clients expect the engine (`serving.host:port`)."""
    args = [
        "--host",
        serving.host,
        "--port",
        str(serving.port),
        "--worker-urls",
        *replica_urls(serving),
        "--policy",
        serving.router_policy,
        "--prometheus-host",
        "127.0.0.1",
        "--prometheus-port",
        str(serving.router_metrics_port),
        "--health-check-endpoint",
        "/health",
        "--health-check-interval-secs",
        str(serving.router_health_check_interval_s),
        "--health-failure-threshold",
        str(serving.router_health_failure_threshold),
        "--worker-startup-timeout-secs",
        str(int(serving.startup_timeout_s)),
        *serving.router_extra_args,
    ]
    return RouterCommand(python=sys.executable, args=tuple(args))


def validate_router_command(command: RouterCommand) -> str | None:
    """The router's own parser and checks on `command`: None when accepted, else the reason."""
    from vllm_router.launch_router import parse_router_args

    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            parse_router_args(list(command.args))._validate_router_args()
    except SystemExit:  # argparse: usage and "error: ..." on stderr
        errors = [line.split("error:", 1)[1].strip() for line in captured.getvalue().splitlines() if "error:" in line]
        return errors[-1] if errors else captured.getvalue().strip()
    except ValueError as exc:
        return str(exc)
    return None


class RouterServer(ServerProcess):
    """The router process (group) for `serving`; healthy once every replica answers its probes."""

    what = "the vLLM router"

    def __init__(self, serving: ServingSettings, *, detached: bool = False):
        self.serving = serving
        self.command = render_router_command(serving)
        super().__init__(
            self.command.argv,
            {},
            serving.run_dir / f"router-{serving.port}.log",
            startup_timeout_s=serving.startup_timeout_s,
            grace_s=serving.shutdown_grace_s,
            detached=detached,
        )

    @property
    def root_url(self) -> str:
        return root_url(self.serving)

    def spawn(self) -> None:
        check_port_free(self.serving.host, self.serving.port)
        check_port_free("127.0.0.1", self.serving.router_metrics_port, "serving.router_metrics_port")
        super().spawn()
