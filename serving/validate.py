"""Validate vLLM server command lines offline with vLLM's own code, inside the engine env.

Run as `.venv-vllm/bin/python -m serving.validate ARGS...` (one command line; exit 0 when
accepted, else one message on stderr and exit 1) or with `--batch`, reading a JSON list of
`{"args": [...], "env": {...}}` on stdin and printing a JSON list of verdicts (null = accepted)
as the last stdout line. Importing vLLM costs several seconds, hence the batch mode.

Imports only the standard library and vLLM: the app environment's packages are not here.
The checks, in vLLM 0.32: its argument parser, `validate_parsed_serve_args`,
`validate_api_server_args`, the quantization registry (parsing alone accepts a misspelt
method), `AsyncEngineArgs.from_cli_args`, then `create_engine_config()` when the model (and any
draft model) is a local folder with `config.json`, else the typed configs that need no model.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

_MAX_MESSAGE = 600


def main(argv: list[str]) -> int:
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # vLLM logs to stdout; keep it for the verdicts
    _prepare_environment()
    if argv == ["--batch"]:
        items = json.loads(sys.stdin.read())
        verdicts = [_verdict(item["args"], item.get("env", {})) for item in items]
        print(json.dumps(verdicts), file=real_stdout)
        return 0 if all(v is None for v in verdicts) else 1
    verdict = _verdict(argv, {})
    if verdict is None:
        print("accepted by vLLM's parser and engine-args validation", file=real_stdout)
        return 0
    print(f"invalid vLLM command line: {verdict}", file=sys.stderr)
    return 1


def _prepare_environment() -> None:
    # With HF_HUB_OFFLINE set, from_cli_args looks a hub id up in the local cache and fails.
    os.environ.pop("HF_HUB_OFFLINE", None)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    from vllm import platforms

    # The official build on a host without a GPU has no platform; vLLM's own bench does this.
    if platforms.current_platform.is_unspecified():
        from vllm.platforms.cpu import CpuPlatform

        platforms.current_platform = CpuPlatform()


def _verdict(args: list[str], env: Mapping[str, str]) -> str | None:
    try:
        with _environment(env):
            _check(args)
    except Exception as exc:  # every vLLM rejection becomes one message
        return _describe(exc)
    return None


def _check(argv: list[str]) -> None:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.entrypoints.launchers.launcher import validate_api_server_args
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = _parse(make_arg_parser(FlexibleArgumentParser(prog="vllm serve")), argv)
    validate_parsed_serve_args(args)
    validate_api_server_args(args)
    if args.quantization is not None and args.quantization not in QUANTIZATION_METHODS:
        raise ValueError(f"unknown quantization {args.quantization!r}; known: {', '.join(QUANTIZATION_METHODS)}")
    engine_args = AsyncEngineArgs.from_cli_args(args)
    spec = engine_args.speculative_config or {}
    draft = spec.get("model") if isinstance(spec, dict) else None
    draft_is_local = draft is None or draft in ("ngram", "suffix") or _is_model_folder(draft)
    if _is_model_folder(engine_args.model) and draft_is_local:
        engine_args.create_engine_config()
    else:
        _check_typed_configs(engine_args, spec)


def _parse(parser: Any, argv: list[str]) -> Any:
    """argparse prints usage and exits on bad input; keep only its one-line error instead."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return parser.parse_args(argv)
    except SystemExit:
        lines = [line for line in captured.getvalue().splitlines() if "error:" in line]
        raise ValueError(lines[-1].split("error:", 1)[1].strip() if lines else captured.getvalue()) from None


def _check_typed_configs(engine_args: Any, spec: Any) -> None:
    """The model-independent configs, for hub ids that cannot be opened offline."""
    from vllm.config import CacheConfig, ParallelConfig, SchedulerConfig, SpeculativeConfig

    CacheConfig(
        gpu_memory_utilization=engine_args.gpu_memory_utilization,
        cache_dtype=engine_args.kv_cache_dtype,
        enable_prefix_caching=bool(engine_args.enable_prefix_caching),
    )
    max_model_len = engine_args.max_model_len or 8192
    SchedulerConfig(
        max_model_len=max_model_len,
        is_encoder_decoder=False,
        max_num_seqs=engine_args.max_num_seqs or 128,
        max_num_batched_tokens=engine_args.max_num_batched_tokens or max_model_len,
        enable_chunked_prefill=engine_args.enable_chunked_prefill is not False,
    )
    ParallelConfig(
        tensor_parallel_size=engine_args.tensor_parallel_size,
        pipeline_parallel_size=engine_args.pipeline_parallel_size,
        distributed_executor_backend=engine_args.distributed_executor_backend,
    )
    if isinstance(spec, dict) and spec.get("method") in ("ngram", "suffix"):
        SpeculativeConfig(**spec)


def _is_model_folder(value: str | None) -> bool:
    return bool(value) and (Path(str(value)).expanduser() / "config.json").is_file()


@contextlib.contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: one command's value would leak into
    # the next, and validation never downloads anyway.
    env = {key: value for key, value in env.items() if key != "HF_HUB_OFFLINE"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _describe(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors) and hasattr(exc, "title"):  # pydantic ValidationError
        parts = []
        for err in errors():
            loc = ".".join(str(p) for p in err.get("loc", ()))
            msg = str(err["msg"]).removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}" if loc else msg)
        text = f"{exc.title}: " + "; ".join(parts)
    else:
        text = str(exc.args[0]) if len(exc.args) == 1 else str(exc)
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
