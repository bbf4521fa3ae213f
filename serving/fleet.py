"""What `make serve` runs: one vLLM engine, or `serving.replicas` engines behind vLLM's router.

Either way clients see one OpenAI base URL on `serving.host:port`. Replicas start side by side
(each takes about as long as one), the router once they are all healthy.
"""

from __future__ import annotations

import logging
import os
from types import TracebackType
from typing import Self

from config.settings import ServingSettings
from serving.command import Device, EngineCommand, render_command, resolve_device
from serving.launch import EngineServer, ServerProcess
from serving.router import RouterServer, replica_settings

log = logging.getLogger("serving")


def engine_commands(serving: ServingSettings, device: Device) -> list[EngineCommand]:
    """One command per replica (one in all without replicas).

    On the CPU build each engine pins its OpenMP worker to a core (`auto` takes the first and keeps
    one for the front end), so replicas left on `auto` would all share core 0: each replica gets
    its own core instead, round the cores this process may use.
    """
    if serving.replicas == 1:
        return [render_command(serving, device)]
    cores = sorted(os.sched_getaffinity(0))
    commands = []
    for index in range(serving.replicas):
        command = render_command(replica_settings(serving, index), device)
        if device == "cpu":
            bind = {"VLLM_CPU_OMP_THREADS_BIND": str(cores[index % len(cores)])}
            command = EngineCommand(command.python, command.args, device, {**command.env, **bind}, command.notes)
        commands.append(command)
    return commands


class Fleet:
    """The engine(s) and, with replicas, the router in front of them; also a context manager."""

    def __init__(self, serving: ServingSettings, *, device: Device | None = None, detached: bool = False):
        self.serving = serving
        device = device or resolve_device(serving.device)
        commands = engine_commands(serving, device)
        if serving.replicas == 1:
            self.engines = [EngineServer(serving, detached=detached, command=commands[0])]
        else:
            self.engines = [
                EngineServer(replica_settings(serving, i), detached=detached, command=command)
                for i, command in enumerate(commands)
            ]
        self.router = RouterServer(serving, detached=detached) if serving.replicas > 1 else None

    @property
    def front(self) -> ServerProcess:
        """The process clients talk to: the router, or the only engine."""
        return self.router or self.engines[0]

    @property
    def servers(self) -> list[ServerProcess]:
        """Every process, the front one first (the order to stop them in)."""
        return [self.router, *self.engines] if self.router else list(self.engines)

    @property
    def base_url(self) -> str:
        return self.front.base_url

    def start(self) -> Self:
        """Start every engine at once, wait for all, then the router; on any failure stop everything."""
        try:
            for engine in self.engines:
                engine.spawn()
            for engine in self.engines:
                engine.wait_ready()
            if self.router is not None:
                self.router.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Front first, so no request is routed to an engine that is going away; idempotent."""
        for server in self.servers:
            server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
