"""When the attestor's next quote starts (``BatchWindow``), and that a returning cohort
shares one quote on a real swtpm with a slow TPM's latency."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from licensing_server.attestation._batching import (
    COHORT_SECONDS,
    MAX_LINGER_SECONDS,
    BatchWindow,
)
from tests.attestation.harness import Harness, attestor_on_swtpm


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_lone_client_is_never_held() -> None:
    window = BatchWindow(_Clock())
    assert window.linger(waiting=1) == (0, 0.0)  # nothing quoted yet
    window.quoted(answered=1, waiting=0, seconds=0.1)
    assert window.linger(waiting=1) == (1, 0.0)


def test_a_cohort_is_waited_for_a_quarter_of_a_quote_at_most() -> None:
    clock = _Clock()
    window = BatchWindow(clock)
    window.quoted(answered=60, waiting=40, seconds=0.1)  # two groups: 100 clients
    cohort, seconds = window.linger(waiting=3)
    assert cohort == 100
    assert seconds == pytest.approx(0.025)
    assert window.linger(waiting=100) == (100, 0.0)  # everyone is back: go
    window.quoted(answered=100, waiting=0, seconds=2.0)  # a slow hardware TPM
    assert window.linger(waiting=1)[1] <= MAX_LINGER_SECONDS


def test_a_cohort_that_left_long_ago_holds_nobody() -> None:
    clock = _Clock()
    window = BatchWindow(clock)
    window.quoted(answered=100, waiting=0, seconds=0.1)
    clock.now += COHORT_SECONDS + 0.1
    assert window.linger(waiting=1)[1] == 0.0


def test_a_cohort_that_shrank_is_followed_at_the_next_quote() -> None:
    window = BatchWindow(_Clock())
    window.quoted(answered=100, waiting=0, seconds=0.1)
    assert window.linger(waiting=10)[1] > 0  # 90 clients left: one bounded wait...
    window.quoted(answered=10, waiting=0, seconds=0.1)
    assert window.linger(waiting=10) == (10, 0.0)  # ...then the new cohort


@pytest.fixture
async def slow_tpm(tmp_path: Path) -> AsyncIterator[Harness]:
    async with attestor_on_swtpm(tmp_path, simulated_tpm_latency=0.2) as harness:
        yield harness


async def test_closed_loop_clients_that_come_back_apart_share_one_quote_per_round(
    slow_tpm: Harness,
) -> None:
    """Twenty clients, each asking again 0-10 ms after its answer (its own verification):
    without waiting for the cohort, the first to come back would start a quote alone and
    the rest would wait it out, splitting every round in two."""
    issued = slow_tpm.certificate("cohort")
    await slow_tpm.create("cohort", issued.sha256)
    rounds = 4
    quotes: set[bytes] = set()

    async def client() -> None:
        for _ in range(rounds):
            evidence = await slow_tpm.attestor.attest(
                issued.pem, issued.sha256, random.randbytes(32)
            )
            quotes.add(evidence.quote)
            await asyncio.sleep(random.uniform(0.0, 0.01))

    await asyncio.gather(*(client() for _ in range(20)))
    assert len(quotes) <= rounds + 1, f"{len(quotes)} quotes for {rounds} rounds of 20"
