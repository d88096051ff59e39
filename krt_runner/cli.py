"""``krt-runner``: parse the command line, configure logging, call one function."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

import structlog

from .config import OPTIONS, load_settings
from .errors import ConfigError, HandlerLoadError
from .handler import load_user_code
from .logging import configure_logging

EXIT_USAGE = 2


def _add_run(commands: Any) -> None:
    run = commands.add_parser("run", help="run one node: settings from KRT_* variables, each overridable by a flag")
    for option in OPTIONS:
        run.add_argument(option.flag, dest=option.field, default=None, metavar=option.env, help=option.help)
    run.set_defaults(command=_run)


def _run(args: argparse.Namespace) -> int:
    overrides = {option.field: getattr(args, option.field) for option in OPTIONS}
    try:
        settings = load_settings(overrides=overrides)
    except ConfigError as exc:
        print(f"krt-runner: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(log_format=settings.log_format, level=settings.log_level)
    log = structlog.get_logger("krt_runner")
    log.info("settings read", **settings.describe())
    try:
        code = load_user_code(settings.handler_path, settings.base_path)
    except HandlerLoadError as exc:
        print(f"krt-runner: {exc}", file=sys.stderr)
        details = getattr(exc, "details", "")
        if details:
            print(details, file=sys.stderr, end="")
        return EXIT_USAGE
    log.info("handler module loaded", handler=code.source, init=code.init is not None)
    return _serve(settings, code)


def _serve(settings: Any, code: Any) -> int:
    from .measurements import make_sink
    from .runner import run_node

    async def main() -> int:
        sink = make_sink(settings, structlog.get_logger("krt_runner"))
        return await run_node(settings, code, sink=sink)

    return _run_async(main())


def _run_async(coroutine: Any) -> int:
    try:
        import uvloop  # optional: the 'speed' extra
    except ImportError:
        return int(asyncio.run(coroutine))
    return int(uvloop.run(coroutine))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="krt-runner", description="Run KRT v1 workflow nodes on NATS.")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_run(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``krt-runner`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.command(args))


if __name__ == "__main__":
    sys.exit(main())
