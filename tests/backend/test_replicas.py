"""Two backends (two whole stacks) against one PostgreSQL database: one leads.

The leader alone runs the cluster-wide reconciler passes: an abandoned reservation is
released by it, not by both; when its process is killed, the other backend takes over
within seconds (the advisory lock goes with the dead process's connection), and the
restarted one follows. Each row names the backend that started it: a restarting backend
settles only its own, and the leader those of a backend that died for good.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from licensing_common.phases import Phase
from licensing_server.storage import Database, EnclaveStore, Limits, UserStore
from tests.observability.test_metrics_and_logs import scrape, value
from tests.support import (
    Stack,
    create_postgres_database,
    drop_postgres_database,
    free_port,
    pid_of,
    required_postgres,
)

_ENV = {
    "LICENSING_LEADER_RETRY_SECONDS": "1",
    "LICENSING_ABANDONED_AFTER_SECONDS": "1",
    "LICENSING_REAP_INTERVAL_SECONDS": "1",
}


@pytest.fixture
def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Stack, Stack]]:
    """Two stacks on one new database; ``indirect`` parameters add to their environment."""
    env = {**_ENV, **getattr(request, "param", {})}
    admin_url = required_postgres(os.environ.get("LICENSING_TEST_POSTGRES_URL"))
    url, name = create_postgres_database(admin_url)
    stacks: list[Stack] = []
    try:
        for replica in ("a", "b"):  # one after the other: the first runs the migrations
            data_dir = tmp_path / replica / "data-postgresql"
            data_dir.mkdir(parents=True)
            stack = Stack(
                "postgresql",
                data_dir,
                url,
                free_port(),
                free_port(),
                free_port(),
                extra_env={**env, "LICENSING_BACKEND_ID": f"backend-{replica}"},
            )
            stacks.append(stack)
            stack.start()
        yield stacks[0], stacks[1]
    finally:
        for stack in stacks:
            stack.stop()
        drop_postgres_database(admin_url, name)


def _leading(stack: Stack) -> bool | None:
    """The backend's ``licensing_backend_leader``; None while it does not answer."""
    try:
        samples = scrape(stack.backend_metrics_port)
    except OSError:
        return None
    return value(samples, "licensing_backend_leader") == 1.0


def _the_leader(stacks: tuple[Stack, Stack], within: float) -> tuple[Stack, Stack]:
    """(leader, follower), once exactly one leads and the other answers as a follower."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        states = [_leading(s) for s in stacks]
        if sorted(states, key=str) == [False, True]:
            leader = stacks[states.index(True)]
            return leader, stacks[1 - states.index(True)]
        time.sleep(0.2)
    raise AssertionError(f"no single leader within {within}s: {states}")


def _abandoned_reservation(url: str, driven_by: str | None = None) -> str:
    """What a frontend that died after reserving leaves: an ACCEPTED row nobody provisions;
    with ``driven_by``, one that backend has just begun to provision (claimed, ACCEPTED:
    no backend's ``settle_interrupted`` touches it without a task that ended)."""

    async def reserve() -> str:
        database = Database.connect(url)
        try:
            now = dt.datetime.now(dt.UTC)
            user = await UserStore(database).create_user(
                f"user{os.urandom(6).hex()}", "not-a-real-hash", now
            )
            record, _ = await EnclaveStore(database).reserve(
                owner_id=user.id,
                request_id="never-followed-up",
                nonce=b"",
                limits=Limits(1, dt.timedelta(hours=1)),
                now=now,
            )
            if driven_by is not None:
                await EnclaveStore(database).claim(record.id, driven_by)
            return record.id
        finally:
            await database.close()

    return asyncio.run(reserve())


def _released_by(stacks: tuple[Stack, Stack], enclave_id: str, within: float) -> list[Stack]:
    deadline = time.monotonic() + within
    line = f"enclave {enclave_id} failed: PROVISIONING_ABANDONED"
    while time.monotonic() < deadline:
        found = [s for s in stacks if s.log_path and line in s.log_path.read_text()]
        if found:
            time.sleep(2)  # two more reconciler periods: a second backend would have, too
            return [s for s in stacks if s.log_path and line in s.log_path.read_text()]
        time.sleep(0.2)
    raise AssertionError(f"{enclave_id} was never released")


def _started(stack: Stack, times: int, within: float) -> None:
    """Wait until the stack's backend has finished starting ``times`` times (restarts)."""
    deadline = time.monotonic() + within
    while stack.log_path is None or (
        stack.log_path.read_text().count("backend serving internal mTLS API") < times
    ):
        assert time.monotonic() < deadline, "the backend did not start again"
        time.sleep(0.2)


def test_one_of_two_backends_leads_and_runs_the_cluster_wide_passes_alone(
    replicas: tuple[Stack, Stack],
) -> None:
    leader, follower = _the_leader(replicas, within=15)
    time.sleep(2)  # two retries of the follower later: still the same leader
    assert _the_leader(replicas, within=1) == (leader, follower)
    enclave_id = _abandoned_reservation(leader.database_url)
    assert _released_by(replicas, enclave_id, within=15) == [leader]


def test_when_the_leaders_backend_is_killed_the_other_takes_over(
    replicas: tuple[Stack, Stack],
) -> None:
    leader, follower = _the_leader(replicas, within=15)
    os.kill(pid_of(leader, "backend"), signal.SIGKILL)
    killed = time.monotonic()
    deadline = killed + 10
    while _leading(follower) is not True:
        assert time.monotonic() < deadline, "the follower never took over"
        time.sleep(0.1)
    assert time.monotonic() - killed < 5  # its lock died with the process
    # The supervisor restarts the killed backend: it follows now, and the new leader's
    # passes run (an abandoned reservation is released by it alone).
    _started(leader, times=2, within=60)
    assert _the_leader(replicas, within=10) == (follower, leader)
    enclave_id = _abandoned_reservation(follower.database_url)
    assert _released_by(replicas, enclave_id, within=15) == [follower]


@pytest.mark.parametrize("replicas", [{"LICENSING_ABANDONED_AFTER_SECONDS": "600"}], indirect=True)
def test_a_restarting_backend_leaves_the_other_backends_reservations_alone(
    replicas: tuple[Stack, Stack],
) -> None:
    _, follower = _the_leader(replicas, within=15)
    enclave_id = _abandoned_reservation(follower.database_url)  # as if a frontend just did
    os.kill(pid_of(follower, "backend"), signal.SIGKILL)
    _started(follower, times=2, within=60)
    line = f"enclave {enclave_id} failed: PROVISIONING_INTERRUPTED"
    assert follower.log_path is not None
    assert line not in follower.log_path.read_text()


def _backend_id(stack: Stack) -> str:
    return stack.env()["LICENSING_BACKEND_ID"]


@pytest.mark.parametrize(
    "replicas",
    [
        {
            "LICENSING_ABANDONED_AFTER_SECONDS": "600",
            "LICENSING_BACKEND_HEARTBEAT_SECONDS": "1",
            "LICENSING_BACKEND_STALE_AFTER_SECONDS": "4",
            "LICENSING_RECONCILE_INTERVAL_SECONDS": "1",
        }
    ],
    indirect=True,
)
def test_a_restarting_backend_leaves_the_other_backends_provisioning_alone(
    replicas: tuple[Stack, Stack],
) -> None:
    leader, follower = _the_leader(replicas, within=15)
    enclave_id = _abandoned_reservation(leader.database_url, driven_by=_backend_id(leader))
    os.kill(pid_of(follower, "backend"), signal.SIGKILL)
    _started(follower, times=2, within=60)
    time.sleep(6)  # past the stale timeout: the leader's heartbeat keeps its row its own
    line = f"enclave {enclave_id} failed: PROVISIONING_INTERRUPTED"
    assert follower.log_path is not None
    assert leader.log_path is not None
    assert line not in follower.log_path.read_text()
    assert line not in leader.log_path.read_text()


@pytest.mark.parametrize(
    "replicas",
    [
        {
            "LICENSING_ABANDONED_AFTER_SECONDS": "600",
            "LICENSING_BACKEND_HEARTBEAT_SECONDS": "1",
            "LICENSING_BACKEND_STALE_AFTER_SECONDS": "4",
            "LICENSING_RECONCILE_INTERVAL_SECONDS": "1",
        }
    ],
    indirect=True,
)
def test_the_leader_settles_the_provisioning_of_a_backend_that_died(
    replicas: tuple[Stack, Stack],
) -> None:
    leader, follower = _the_leader(replicas, within=15)
    enclave_id = _abandoned_reservation(follower.database_url, driven_by=_backend_id(follower))
    assert follower.proc is not None
    # The whole stack dies for good: its supervisor first, so nothing restarts the backend.
    for pid in (follower.proc.pid, pid_of(follower, "backend"), pid_of(follower, "frontend")):
        os.kill(pid, signal.SIGKILL)
    follower.proc.wait(10)
    killed = time.monotonic()
    line = f"enclave {enclave_id} failed: PROVISIONING_INTERRUPTED"
    assert leader.log_path is not None
    while line not in leader.log_path.read_text():
        assert time.monotonic() - killed < 20, "the leader never settled the dead backend's row"
        time.sleep(0.2)
    assert time.monotonic() - killed >= 2  # not before its heartbeat went stale

    async def phase() -> Phase | None:
        database = Database.connect(leader.database_url)
        try:
            record = await EnclaveStore(database).get(enclave_id)
            return record.phase if record else None
        finally:
            await database.close()

    assert asyncio.run(phase()) is Phase.FAILED
