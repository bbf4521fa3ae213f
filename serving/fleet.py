"""What `make serve` runs: one vLLM engine, or `serving.replicas` engines behind vLLM's router.

Either way clients see one OpenAI base URL on `serving.host:port`. Replicas start side by side
(each takes about as long as one), the router once they are all healthy.
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import Self

from config.settings import ServingSettings
from serving.command import Device, EngineCommand, render_command, resolve_device
from serving.launch import EngineServer, ServerProcess
from serving.router import RouterServer, replica_settings


def engine_commands(serving: ServingSettings, device: Device) -> list[EngineCommand]:
    """One command per replica (one in all without replicas), each on hardware of its own.

    Left alone, every replica would take the same devices: GPU 0 (and the next ones for tensor and
    pipeline parallel), or on the CPU build core 0 (`auto` pins the OpenMP worker to the first core
    and keeps one for the front end). So replica i gets GPUs i*n .. i*n+n-1 (n = tensor x pipeline
    parallel size), or its own core, round the cores this process may use.
    """
    if serving.replicas == 1:
        return [render_command(serving, device)]
    cores = sorted(os.sched_getaffinity(0))
    per_replica = serving.tensor_parallel_size * serving.pipeline_parallel_size
    commands = []
    for index in range(serving.replicas):
        command = render_command(replica_settings(serving, index), device)
        if device == "cpu":
            devices = {"VLLM_CPU_OMP_THREADS_BIND": str(cores[index % len(cores)])}
        else:
            gpus = range(index * per_replica, (index + 1) * per_replica)
            devices = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus))}
        commands.append(EngineCommand(command.python, command.args, device, {**command.env, **devices}, command.notes))
    return commands


class Fleet:
    """The engine(s) and, with replicas, the router in front of them; also a context manager."""

    def __init__(self, serving: ServingSettings, *, device: Device | None = None, detached: bool = False):
        self.serving = serving
        device = device or resolve_device(serving.device)
        each = [serving] if serving.replicas == 1 else [replica_settings(serving, i) for i in range(serving.replicas)]
        self.engines = [
            EngineServer(settings, detached=detached, command=command)
            for settings, command in zip(each, engine_commands(serving, device), strict=True)
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
