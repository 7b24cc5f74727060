"""bcrypt off the event loop, on a small bounded pool of lowered-priority threads.

bcrypt releases the GIL, so one thread per core reaches the CPU bound while
the event loop keeps cheap calls fast; a bounded queue sheds login storms
with RESOURCE_EXHAUSTED instead of letting latency grow without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import bcrypt

from licensing_common.errors import InvalidArgument, ResourceExhausted
from licensing_server.observability import BcryptMetrics

MIN_PASSWORD_BYTES = 8
MAX_PASSWORD_BYTES = 72  # bcrypt's own limit: longer input is refused, never truncated.


def check_password_policy(password: str, *, min_bytes: int = MIN_PASSWORD_BYTES) -> bytes:
    """The password as bcrypt will see it, or ``InvalidArgument`` saying what is wrong.

    Login passes ``min_bytes=1``: a short password is merely wrong there, and
    saying "too short" would hint at the sign-up policy rather than the account.
    """
    data = password.encode("utf-8", errors="surrogatepass")
    if not data:
        raise InvalidArgument("PASSWORD_REQUIRED", "password is required")
    if b"\x00" in data:
        raise InvalidArgument("PASSWORD_INVALID_CHARACTERS", "password must not contain NUL")
    if len(data) < min_bytes:
        raise InvalidArgument(
            "PASSWORD_TOO_SHORT",
            f"password must be at least {min_bytes} bytes",
            {"min_bytes": str(min_bytes)},
        )
    if len(data) > MAX_PASSWORD_BYTES:
        raise InvalidArgument(
            "PASSWORD_TOO_LONG",
            f"password must be at most {MAX_PASSWORD_BYTES} bytes in UTF-8 (bcrypt's limit)",
            {"max_bytes": str(MAX_PASSWORD_BYTES)},
        )
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument("PASSWORD_INVALID_CHARACTERS", "password is not UTF-8") from exc
    return data


def _lower_priority() -> None:
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


class PasswordHasher:
    def __init__(
        self, *, cost: int, threads: int, queue_limit: int, metrics: BcryptMetrics | None = None
    ):
        self._cost = cost
        self._metrics = metrics or BcryptMetrics()
        self._pool = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="bcrypt", initializer=_lower_priority
        )
        self._slots = queue_limit
        self._in_flight = 0
        # Compared against when the user does not exist, so that both paths cost one bcrypt.
        self._dummy_hash = bcrypt.hashpw(b"licensing-dummy-password", bcrypt.gensalt(cost))

    async def _run(self, fn: Callable[..., object], *args: bytes) -> object:
        metrics = self._metrics
        if self._in_flight >= self._slots:
            metrics.rejected.inc()
            raise ResourceExhausted(
                "LOGIN_QUEUE_FULL",
                "too many logins in progress; retry shortly",
                {"retry_after_seconds": "1"},
            )
        self._in_flight += 1
        metrics.queue_depth.set(self._in_flight)
        queued = time.perf_counter()

        def timed() -> object:  # on the pool's thread: how long it waited for one
            metrics.wait.observe(time.perf_counter() - queued)
            return fn(*args)

        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, timed)
        finally:
            self._in_flight -= 1
            metrics.queue_depth.set(self._in_flight)

    async def hash(self, password: bytes) -> str:
        hashed = await self._run(bcrypt.hashpw, password, bcrypt.gensalt(self._cost))
        assert isinstance(hashed, bytes)
        return hashed.decode("ascii")

    async def verify(self, password: bytes, stored_hash: str | None) -> bool:
        """Constant work whether or not the user exists (``stored_hash=None``)."""
        target = stored_hash.encode("ascii") if stored_hash else self._dummy_hash
        ok = await self._run(bcrypt.checkpw, password, target)
        return bool(ok) and stored_hash is not None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
