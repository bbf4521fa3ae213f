"""The `python -m serving ...` commands: run, start, stop and check the vLLM engine; build the offline model.

Messages go to stderr; the one result a command produces (a URL, a command line) to stdout.
Every failure ends with one clear message and a non-zero exit.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import NoReturn

from config.settings import PROFILES, Settings, SettingsError, load_settings
from serving.command import resolve_device, validate_in_engine
from serving.errors import ServingError
from serving.fleet import Fleet, engine_commands
from serving.hub import choose_model, hub_reachable
from serving.launch import (
    check_model,
    is_healthy,
    pid_file,
    root_url,
    running_pids,
    stop_process_group,
    write_pid_file,
)
from serving.router import render_router_command, replica_urls, validate_router_command
from serving.tiny_model import DEFAULT_DIR, build_tiny_model, is_built
from serving.trained_model import DEFAULT_DATA, build_info, build_trained_model
from serving.trained_model import DEFAULT_DIR as TRAINED_DIR

log = logging.getLogger("serving")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("serving: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        return int(args.func(args))
    except (ServingError, SettingsError) as exc:
        print(f"serving: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("serving: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--profile", choices=PROFILES, help="settings profile (default: RAG_PROFILE or balanced)")
        p.set_defaults(func=func)
        return p

    command("serve", _serve, "run the engine (or replicas + router) in the foreground until Ctrl-C or SIGTERM")
    command("start", _start, "start the engine (or replicas + router) in the background; return once healthy")
    command("stop", _stop, "stop the background engine (and router) started by `start`")
    command("status", _status, "say whether the background engine (each replica, the router) is healthy")
    for name, func, help_text in (
        ("command", _command, "print the rendered vLLM server command (one per replica, then the router's)"),
        ("check", _check, "validate the rendered commands with vLLM's (and the router's) own parser, offline"),
    ):
        command(name, func, help_text).add_argument(
            "--device", choices=("cpu", "cuda"), help="render for this device (default: detected)"
        )
    tiny = command("tiny-model", _tiny_model, "build the offline tiny random-weights chat model")
    tiny.add_argument("--quiet", action="store_true", help="print nothing when it is already built")
    tiny.add_argument("--force", action="store_true", help="rebuild even when present")
    tiny.add_argument("--path", type=Path, default=DEFAULT_DIR, help=f"target folder (default: {DEFAULT_DIR})")
    trained = command(
        "train-tiny-model", _train_tiny_model, "train the opt-in extractive tiny model (cached by its recipe hash)"
    )
    trained.add_argument("--quiet", action="store_true", help="print nothing when it is already built")
    trained.add_argument("--force", action="store_true", help="retrain even when the same recipe is built")
    trained.add_argument("--path", type=Path, default=TRAINED_DIR, help=f"target folder (default: {TRAINED_DIR})")
    trained.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help=f"train.jsonl + eval.jsonl (default: {DEFAULT_DATA})"
    )
    command(
        "pick-model",
        _pick_model,
        "print `export RAG_SERVING__...` lines for a real model when a model hub answers (else nothing)",
    )
    command("demo", _demo, "ask the running engine one question and stream the answer")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.profile)


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _ensure_tiny_model(settings)
    fleet = Fleet(settings.serving)
    for server in fleet.servers:
        log.info("running: %s", server.shell())
    with _stop_on_sigterm():
        try:
            fleet.start()
            front = fleet.front
            log.info("ready in %.0f s (log: %s); Ctrl-C stops it", front.startup_s, front.log_path)
            print(f"OpenAI base URL: {fleet.base_url}", flush=True)
            _watch(fleet)
        except KeyboardInterrupt:
            log.info("stopping the engine")
            return 0
        finally:
            fleet.stop()


def _watch(fleet: Fleet) -> NoReturn:
    """Never return: raise once the front process exits; a replica exiting is logged (the router routes round it)."""
    reported: set[int] = set()
    while True:
        for server in fleet.servers:
            code = server.process.poll() if server.process else None
            if code is None or id(server) in reported:
                continue
            if server is fleet.front:
                raise ServingError(f"{server.what} exited with code {code}; see {server.log_path}")
            reported.add(id(server))
            log.warning(
                "replica %s exited with code %s; the router sends requests to the others", server.root_url, code
            )
        time.sleep(1.0)


def _start(args: argparse.Namespace) -> int:
    settings = _settings(args)
    running = running_pids(settings.serving)
    if running:
        url = root_url(settings.serving)
        if is_healthy(url):
            log.info("engine already running (pid %s) and healthy", ", ".join(map(str, running)))
            print(f"OpenAI base URL: {url}/v1")
            return 0
        raise ServingError(
            f"an engine (pid {', '.join(map(str, running))}) is running but {url}/health does not answer; "
            "`python -m serving stop` it first, or check the port/profile"
        )
    _ensure_tiny_model(settings)
    fleet = Fleet(settings.serving, detached=True)
    for server in fleet.servers:
        log.info("starting: %s", server.shell())
    with _stop_on_sigterm():
        fleet.start()
    pids = [server.pid for server in fleet.servers if server.pid is not None]
    write_pid_file(settings.serving, pids)
    log.info(
        "ready in %.0f s, pid %s, log %s; stop it with `make serve-stop`",
        fleet.front.startup_s,
        ", ".join(map(str, pids)),
        fleet.front.log_path,
    )
    print(f"OpenAI base URL: {fleet.base_url}")
    return 0


def _stop(args: argparse.Namespace) -> int:
    settings = _settings(args)
    pids = running_pids(settings.serving)
    if not pids:
        log.info("no background engine is running")
        return 0
    for pid in pids:  # the router first: nothing is routed to an engine that is going away
        stop_process_group(pid, settings.serving.shutdown_grace_s)
    pid_file(settings.serving).unlink(missing_ok=True)
    log.info("stopped the engine (pid %s)", ", ".join(map(str, pids)))
    return 0


def _status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    pids = running_pids(settings.serving)
    url = root_url(settings.serving)
    healthy = is_healthy(url)
    where = f"pid {', '.join(map(str, pids))}" if pids else "not started by `start`"
    front = "router" if settings.serving.replicas > 1 else "engine"
    print(f"{front} {'healthy' if healthy else 'not answering'} at {url}/v1 ({where})")
    if settings.serving.replicas > 1:
        for replica in replica_urls(settings.serving):
            print(f"  replica {'healthy' if is_healthy(replica) else 'not answering'} at {replica}/v1")
    return 0 if healthy else 1


def _command(args: argparse.Namespace) -> int:
    serving = _settings(args).serving
    commands = engine_commands(serving, args.device or resolve_device(serving.device))
    for note in commands[0].notes:
        log.info("%s", note)
    for command in commands:
        print(command.shell())
    if serving.replicas > 1:
        print(render_router_command(serving).shell())
    return 0


def _check(args: argparse.Namespace) -> int:
    serving = _settings(args).serving
    check_model(serving.model)
    commands = engine_commands(serving, args.device or resolve_device(serving.device))
    device = commands[0].device
    log.info("validating with vLLM's parser in %s: %s", commands[0].python, commands[0].shell())
    for verdict in validate_in_engine(commands):
        if verdict is not None:
            raise ServingError(f"vLLM rejects the {device} command: {verdict}")
    if serving.replicas > 1:
        verdict = validate_router_command(render_router_command(serving))
        if verdict is not None:
            raise ServingError(f"vllm-router rejects its command: {verdict}")
        print(f"ok: vLLM accepts the {len(commands)} {device} replica commands and vllm-router its command")
        return 0
    print(f"ok: vLLM accepts the {device} command")
    return 0


def _tiny_model(args: argparse.Namespace) -> int:
    started = time.monotonic()
    if build_tiny_model(args.path, force=args.force):
        log.info("built the tiny random-weights chat model in %s (%.1f s)", args.path, time.monotonic() - started)
    elif not args.quiet:
        log.info("tiny model already present in %s", args.path)
    return 0


def _train_tiny_model(args: argparse.Namespace) -> int:
    started = time.monotonic()
    try:
        built = build_trained_model(args.path, data_dir=args.data, force=args.force)
    except (FileNotFoundError, ValueError) as exc:
        raise ServingError(str(exc)) from exc
    if built:
        exact = build_info(args.path)["held_out_exact_match"]
        assert isinstance(exact, dict)
        log.info(
            "trained the tiny chat model into %s in %.0f s; held-out exact match: %s",
            args.path,
            time.monotonic() - started,
            ", ".join(f"{kind} {value:.1%}" for kind, value in exact.items()),
        )
    elif not args.quiet:
        log.info("tiny model of this recipe already built in %s", args.path)
    return 0


def _pick_model(args: argparse.Namespace) -> int:
    """Decides within the probe timeout; a model set in the settings or environment is kept."""
    serving = _settings(args).serving
    if serving.model != str(DEFAULT_DIR):
        log.info("serving the configured model %s", serving.model)
        return 0
    choice = choose_model(resolve_device(serving.device), hub_ok=hub_reachable())
    log.info("%s", choice.reason)
    print(choice.shell(), end="")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from openai import OpenAI

    settings = _settings(args)
    url = root_url(settings.serving)
    if not is_healthy(url):
        raise ServingError(f"no healthy engine at {url}; start one with `make serve-start`")
    if settings.serving.model == str(DEFAULT_DIR):
        log.info("serving the tiny random-weights model: its answer is noise (set RAG_SERVING__MODEL for a real one)")
    client = OpenAI(base_url=f"{url}/v1", api_key=settings.llm.api_key.get_secret_value())
    question = "In one sentence: what does a retrieval-augmented chat system do?"
    print(f"Q: {question}\nA: ", end="", flush=True)
    stream = client.chat.completions.create(
        model=settings.serving.served_model_name,
        messages=[{"role": "user", "content": question}],
        max_completion_tokens=min(settings.llm.max_tokens, 64),
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()
    return 0


def _ensure_tiny_model(settings: Settings) -> None:
    """The default model is built here on first use; any other missing model is an error later."""
    if settings.serving.model == str(DEFAULT_DIR) and not is_built(DEFAULT_DIR):
        log.info("building the offline tiny model into %s", DEFAULT_DIR)
        build_tiny_model(DEFAULT_DIR)


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C, so the same clean-up path stops the engine."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
