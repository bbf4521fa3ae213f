"""Render the serving settings into the vLLM server command line for a GPU or the CPU build.

The command is data (argv + environment additions + notes), so it can be printed, validated
offline by vLLM's own parser in the engine environment, and launched, all from one rendering.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from config.settings import REPO_ROOT, ServingSettings
from serving.errors import ServingError

Device = Literal["cuda", "cpu"]
ENGINE_MODULE = "vllm.entrypoints.openai.api_server"
ROUTER_MODULE = "vllm_router.launch_router"
VALIDATE_TIMEOUT_S = 600.0
_SPEC_METHODS = {"ngram": "ngram", "draft": "draft_model", "eagle3": "eagle3"}


@dataclass(frozen=True)
class EngineCommand:
    """One engine invocation: `python -m vllm...api_server args`, with env additions."""

    python: str
    args: tuple[str, ...]
    device: Device
    env: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    """One line per GPU-only setting dropped on the CPU build."""

    @property
    def argv(self) -> list[str]:
        return [self.python, "-m", ENGINE_MODULE, *self.args]

    def shell(self) -> str:
        """Copy-pasteable form, environment additions first."""
        return shell_line(self.env, self.argv)

    def value(self, flag: str) -> str | None:
        """The value given to `flag`, or None when the flag is absent."""
        if flag not in self.args:
            return None
        index = self.args.index(flag)
        return self.args[index + 1] if index + 1 < len(self.args) else None


def shell_line(env: Mapping[str, str], argv: Sequence[str]) -> str:
    """A command as one copy-pasteable shell line, environment additions first."""
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    return f"{prefix} {shlex.join(argv)}".strip()


def detect_device() -> Device:
    """`cuda` when `nvidia-smi -L` lists a GPU, else `cpu`."""
    if shutil.which("nvidia-smi") is None:
        return "cpu"
    try:
        done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "cpu"
    return "cuda" if done.returncode == 0 and "GPU" in done.stdout else "cpu"


def resolve_device(choice: Literal["auto", "cuda", "cpu"]) -> Device:
    return detect_device() if choice == "auto" else choice


def is_local_model(value: str) -> bool:
    """Settings make local model folders absolute; anything else is a Hugging Face id like `Qwen/X`."""
    return os.path.isabs(value)


def speculative_config(serving: ServingSettings) -> dict[str, Any] | None:
    """The `--speculative-config` JSON object, or None when speculation is off."""
    if serving.speculative_method == "off":
        return None
    spec: dict[str, Any] = {
        "method": _SPEC_METHODS[serving.speculative_method],
        "num_speculative_tokens": serving.num_speculative_tokens,
    }
    if serving.speculative_method == "ngram":
        spec["prompt_lookup_min"] = serving.prompt_lookup_min
        spec["prompt_lookup_max"] = serving.prompt_lookup_max
        return spec
    spec["model"] = serving.draft_model  # settings require one for these methods
    return spec


def render_command(serving: ServingSettings, device: Device) -> EngineCommand:
    """The full server command for `device`; GPU-only settings are dropped on CPU with a note each."""
    args: list[str] = [
        "--model",
        serving.model,
        "--served-model-name",
        serving.served_model_name,
        "--host",
        serving.host,
        "--port",
        str(serving.port),
        "--dtype",
        serving.dtype,
        "--max-model-len",
        str(serving.max_model_len),
        "--max-num-seqs",
        str(serving.max_num_seqs),
        "--max-num-batched-tokens",
        str(serving.max_num_batched_tokens),
        "--enable-prefix-caching" if serving.enable_prefix_caching else "--no-enable-prefix-caching",
        "--enable-chunked-prefill" if serving.enable_chunked_prefill else "--no-enable-chunked-prefill",
        "--tensor-parallel-size",
        str(serving.tensor_parallel_size),
        "--pipeline-parallel-size",
        str(serving.pipeline_parallel_size),
    ]
    if serving.distributed_executor_backend != "auto":
        args += ["--distributed-executor-backend", serving.distributed_executor_backend]
    spec = speculative_config(serving)
    if spec is not None:
        args += ["--speculative-config", json.dumps(spec, separators=(",", ":"))]
    if serving.enable_tool_calling:
        args += ["--enable-auto-tool-choice", "--tool-call-parser", serving.tool_call_parser]

    gpu_only: list[tuple[str, str]] = [("--gpu-memory-utilization", str(serving.gpu_memory_utilization))]
    if serving.quantization != "none":
        gpu_only.append(("--quantization", serving.quantization))
    if serving.kv_cache_dtype != "auto":
        gpu_only.append(("--kv-cache-dtype", serving.kv_cache_dtype))

    env: dict[str, str] = {}
    if all(is_local_model(m) for m in (serving.model, serving.draft_model) if m):
        # Local weights need no hub: fail fast instead of retrying an unreachable one for a minute.
        env["HF_HUB_OFFLINE"] = "1"
    notes: list[str] = []
    if device == "cuda":
        for flag, value in gpu_only:
            args += [flag, value]
    else:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(serving.cpu_kvcache_space_gb)
        notes = [f"CPU build: dropped GPU-only flag {flag} {value}" for flag, value in gpu_only]
    args += serving.extra_args
    return EngineCommand(
        python=str(serving.engine_python), args=tuple(args), device=device, env=env, notes=tuple(notes)
    )


def validate_in_engine(commands: Sequence[EngineCommand]) -> list[str | None]:
    """vLLM's own offline verdict on each command: None when accepted, else the reason.

    All commands go to one `serving.validate` process in the engine environment, because
    importing vLLM costs several seconds.
    """
    if not commands:
        return []
    python = commands[0].python
    if not Path(python).is_file():
        raise ServingError(f"engine environment not found: {python} (run `make install`)")
    payload = [{"args": list(c.args), "env": dict(c.env)} for c in commands]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    try:
        done = subprocess.run(
            [python, "-m", "serving.validate", "--batch"],
            input=json.dumps(payload),
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env=env,
            timeout=VALIDATE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ServingError(f"validating in the engine environment took over {VALIDATE_TIMEOUT_S:.0f} s") from None
    try:
        verdicts = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = "\n".join(done.stderr.strip().splitlines()[-20:])
        raise ServingError(f"the engine-side validator failed (exit {done.returncode}):\n{tail}") from None
    if not isinstance(verdicts, list) or len(verdicts) != len(commands):
        raise ServingError(f"the engine-side validator returned {verdicts!r}")
    return [v if v is None else str(v) for v in verdicts]
