"""Concurrent creates on a narrow ``LICENSING_ENCLAVE_PORTS`` range: one port per enclave.

The local runtime reserves an enclave's port before it awaits anything, so concurrent
creates never pick the same one; when the range is used up, the excess creates fail
with ``ENCLAVE_PORTS_EXHAUSTED`` rather than collide. The ports are the runtime's
business, not the database's: these run on SQLite only.
"""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import Iterator
from pathlib import Path

from tests.provisioning.streams import (
    ACCEPTED,
    FAILED,
    STREAM_TIMEOUT,
    Event,
    StreamWatch,
    assert_attested,
    delete_enclave,
    wait_until,
)
from tests.support import LoggedIn, Stack, error_info, start_stack

stack_of = contextlib.contextmanager(start_stack)

CREATES = 50


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_range(count: int) -> tuple[int, int]:
    """``count`` consecutive free ports below the ephemeral range (where free_port() picks)."""
    for _ in range(200):
        low = random.randint(12_000, 32_000 - count)
        if all(_bindable(port) for port in range(low, low + count)):
            return low, low + count - 1
    raise RuntimeError(f"no {count} consecutive free ports")


@contextlib.contextmanager
def _stack(tmp: Path, ports: tuple[int, int], max_enclaves: int) -> Iterator[Stack]:
    with stack_of(
        "sqlite",
        tmp,
        None,
        LICENSING_ENCLAVE_PORTS=f"{ports[0]}-{ports[1]}",
        LICENSING_MAX_ENCLAVES=str(max_enclaves),
    ) as stack:
        yield stack


def _create_all(stack: Stack, user: LoggedIn, count: int) -> list[StreamWatch]:
    creates = [StreamWatch.create(stack, user) for _ in range(count)]
    for create in creates:
        create.wait_done(STREAM_TIMEOUT)
    return creates


def _port(event: Event) -> int:
    return int(event.endpoint.rpartition(":")[2])


def _failure_reason(create: StreamWatch) -> str:
    assert create.error is not None
    info = error_info(create.error)
    return info.metadata["failure_reason"] if info else str(create.error)


def test_concurrent_creates_get_distinct_ports(tmp_path: Path) -> None:
    low, high = _free_port_range(CREATES + 5)
    with _stack(tmp_path, (low, high), max_enclaves=CREATES) as stack:
        user = stack.new_user()
        creates = _create_all(stack, user, CREATES)
        failed = {c.name: (_failure_reason(c), c.last) for c in creates if c.error is not None}
        assert not failed, f"{len(failed)} of {CREATES} creates failed: {failed}"
        attested = [assert_attested(stack, c.events, c.nonce) for c in creates]
        ports = sorted(_port(event) for event in attested)
        assert len(set(ports)) == CREATES, ports
        assert all(low <= port <= high for port in ports), (low, high, ports)


def test_creates_beyond_the_range_fail_cleanly(tmp_path: Path) -> None:
    low, high = _free_port_range(3)
    with _stack(tmp_path, (low, high), max_enclaves=10) as stack:
        user = stack.new_user()
        creates = _create_all(stack, user, 6)
        served = [c for c in creates if c.error is None]
        refused = [c for c in creates if c.error is not None]
        assert sorted(_port(assert_attested(stack, c.events, c.nonce)) for c in served) == [
            low,
            low + 1,
            high,
        ]
        assert len(refused) == 3, [c.events for c in refused]
        for create in refused:
            assert [e.phase for e in create.events] == [ACCEPTED, FAILED], create.events
            assert _failure_reason(create) == "ENCLAVE_PORTS_EXHAUSTED", create.events
            assert f"{low}-{high}" in create.last.message

        # A deleted enclave gives its port back.
        freed = _port(served[0].last)
        delete_enclave(stack, user, served[0].enclave_id)
        wait_until("its port to be free", lambda: _bindable(freed), timeout=15)
        again = StreamWatch.create(stack, user)
        events = again.wait_done(STREAM_TIMEOUT)
        assert again.error is None, (events, again.error)
        assert _port(assert_attested(stack, events, again.nonce)) == freed
