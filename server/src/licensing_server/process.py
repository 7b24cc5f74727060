"""What every server process does around its composition root: settings, logs, signals."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from licensing_server.config import ConfigError, Settings
from licensing_server.logs import configure_logging

_T = TypeVar("_T")


def load_settings() -> Settings:
    """Settings from the environment, or exit 2 listing every problem."""
    try:
        return Settings.from_env()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from exc


def run_process(name: str, serve: Callable[[Settings], Coroutine[Any, Any, _T]]) -> _T:
    settings = load_settings()
    configure_logging(settings.log_level, name)
    return asyncio.run(serve(settings))


async def stop_requested() -> None:
    """Return on SIGTERM or SIGINT (the supervisor, systemd and Kubernetes send SIGTERM)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
