"""Backends on Kubernetes: the holder of a ``coordination.k8s.io/v1`` Lease leads.

Against the real test kube-apiserver, with 2 s leases so that every story takes
seconds: a Lease being created by several candidates at once, renewed, handed back,
taken over after its holder died, and a holder cut off from the apiserver stepping
down before anyone else may take over.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from licensing_server.kube import KubeApi, KubeConfig
from licensing_server.leadership._lease import LeaseElection
from tests.kube.cluster import KubeControlPlane
from tests.kube.licensing_stack import RBAC
from tests.leadership.conftest import Terms, campaigning, other, until, wait_for_leader

LEASE = "licensing-backend-leader"
SECONDS = 2.0


@pytest.fixture
def namespace(kube_control_plane: KubeControlPlane) -> Iterator[str]:
    name = kube_control_plane.create_namespace(f"t-{uuid.uuid4().hex[:10]}")
    yield name
    kube_control_plane.delete_namespace(name)


@pytest.fixture
async def api(kube_control_plane: KubeControlPlane) -> AsyncIterator[KubeApi]:
    kube = KubeApi(KubeConfig(kubeconfig=str(kube_control_plane.kubeconfig)))
    yield kube
    await kube.close()


def _candidate(
    api: KubeApi, namespace: str, name: str, *, release_on_stop: bool = True
) -> LeaseElection:
    return LeaseElection(
        api,
        namespace=namespace,
        name=LEASE,
        lease_seconds=SECONDS,
        release_on_stop=release_on_stop,
        identity=name,
    )


def _lease(plane: KubeControlPlane, namespace: str) -> Any:
    with plane.api_client() as admin:
        return client.CoordinationV1Api(admin).read_namespaced_lease(LEASE, namespace).spec


async def test_of_two_candidates_one_holds_the_lease_and_renews_it(
    kube_control_plane: KubeControlPlane, namespace: str, api: KubeApi
) -> None:
    a, b = _candidate(api, namespace, "a"), _candidate(api, namespace, "b")
    async with campaigning([a, b]):
        leader = await wait_for_leader([a, b], within=5)
        first = _lease(kube_control_plane, namespace)
        assert first.holder_identity == leader.identity
        assert first.lease_duration_seconds == 2
        assert first.lease_transitions == 0
        await asyncio.sleep(SECONDS * 1.5)  # longer than the lease: it was renewed
        assert leader.is_leader
        assert not other([a, b], leader).is_leader
        renewed = _lease(kube_control_plane, namespace)
        assert renewed.holder_identity == leader.identity
        assert renewed.renew_time > first.renew_time
        assert renewed.acquire_time == first.acquire_time
        assert renewed.lease_transitions == 0


async def test_of_candidates_creating_the_lease_at_once_one_wins(
    namespace: str, api: KubeApi
) -> None:
    candidates = [_candidate(api, namespace, f"c{i}") for i in range(5)]
    async with campaigning(candidates):
        await wait_for_leader(candidates, within=5)
        # Never two at once; on a loaded machine a 2 s lease may change hands meanwhile.
        watched_until = time.monotonic() + SECONDS
        while time.monotonic() < watched_until:
            assert sum(c.is_leader for c in candidates) <= 1
            await asyncio.sleep(0.02)
        await wait_for_leader(candidates, within=5)


async def test_a_leader_that_stops_renewing_is_replaced_after_the_lease_duration(
    kube_control_plane: KubeControlPlane, namespace: str, api: KubeApi
) -> None:
    a, b = (_candidate(api, namespace, n, release_on_stop=False) for n in ("a", "b"))
    async with campaigning([a, b]) as tasks:
        dead = await wait_for_leader([a, b], within=5)
        heir = other([a, b], dead)
        tasks[dead.identity].cancel()  # dies without a word: the Lease stays as it was
        await asyncio.gather(tasks[dead.identity], return_exceptions=True)
        died = time.monotonic()
        await until(lambda: heir.is_leader, within=SECONDS * 3)
        took = time.monotonic() - died
        # Its last renewal was at most a third of the duration before it died; the heir
        # waits a whole duration from when it saw that renewal.
        assert SECONDS * 2 / 3 - 0.1 <= took <= SECONDS * 2
        spec = _lease(kube_control_plane, namespace)
        assert spec.holder_identity == heir.identity
        assert spec.lease_transitions == 1


async def test_a_leader_that_stops_hands_the_lease_back(
    kube_control_plane: KubeControlPlane, namespace: str, api: KubeApi
) -> None:
    a, b = _candidate(api, namespace, "a"), _candidate(api, namespace, "b")
    async with campaigning([a, b]) as tasks:
        leaving = await wait_for_leader([a, b], within=5)
        heir = other([a, b], leaving)
        tasks[leaving.identity].cancel()
        await asyncio.gather(tasks[leaving.identity], return_exceptions=True)
        assert not leaving.is_leader
        # No waiting out the lease: the heir asks every third of it and finds it free.
        assert await until(lambda: heir.is_leader, within=SECONDS) < SECONDS * 2 / 3 + 0.3
        assert _lease(kube_control_plane, namespace).holder_identity == heir.identity


async def test_a_leader_cut_off_from_the_apiserver_steps_down_before_its_lease_ends(
    kube_control_plane: KubeControlPlane, namespace: str, api: KubeApi
) -> None:
    terms = Terms()
    a = _candidate(api, namespace, "a")
    async with campaigning([a], terms):
        await wait_for_leader([a], within=5)
        await until(lambda: "a" in terms.running, within=1)
        renewed = _lease(kube_control_plane, namespace).renew_time.timestamp()
        with kube_control_plane.apiserver_paused():
            paused = time.time()
            stepped_down = paused + await until(lambda: not a.is_leader, within=SECONDS * 2)
            # Its leader-only work stops with it (cancelled a few loop turns later).
            await until(lambda: "a" not in terms.running, within=0.5)
        # Another candidate may take over a full duration after the last renewal it saw.
        assert stepped_down <= renewed + SECONDS + 0.1
        await wait_for_leader([a], within=SECONDS * 3)  # reachable again: leads again


async def test_leader_only_work_never_runs_on_two_candidates_at_once(
    namespace: str, api: KubeApi
) -> None:
    terms = Terms()
    candidates = [_candidate(api, namespace, n, release_on_stop=False) for n in "abcd"]
    async with campaigning(candidates, terms) as tasks:
        alive, leaders = list(candidates), []
        for _ in range(3):
            leader = await wait_for_leader(alive, within=SECONDS * 3)
            leaders.append(leader.identity)
            await until(lambda: leader.identity in terms.running, within=1)  # noqa: B023
            tasks[leader.identity].cancel()
            alive.remove(leader)
            terms.assert_never_overlapping()
        await wait_for_leader(alive, within=SECONDS * 3)
    terms.assert_never_overlapping()
    assert [identity for identity, _, _ in terms.intervals][:3] == leaders


def _leader_role_rules() -> list[dict[str, Any]]:
    """The rules k8s/base/backend-rbac.yaml grants the backend in its own namespace."""
    (role,) = [
        d
        for d in yaml.safe_load_all(RBAC.read_text())
        if d["kind"] == "Role" and d["metadata"]["name"] == "licensing-backend-leader"
    ]
    return list(role["rules"])


async def test_the_backends_role_is_all_the_election_needs(
    kube_control_plane: KubeControlPlane, namespace: str, tmp_path: Path
) -> None:
    kube_control_plane.create_service_account(namespace, "licensing-backend")
    kube_control_plane.create_role(namespace, "licensing-backend-leader", _leader_role_rules())
    kube_control_plane.bind_role(namespace, "licensing-backend-leader", "licensing-backend")
    kubeconfig = kube_control_plane.kubeconfig_for_service_account(
        namespace, "licensing-backend", tmp_path / "backend.kubeconfig"
    )
    as_backend = KubeApi(KubeConfig(kubeconfig=str(kubeconfig)))
    try:
        a, b = _candidate(as_backend, namespace, "a"), _candidate(as_backend, namespace, "b")
        async with campaigning([a, b]) as tasks:
            first = await wait_for_leader([a, b], within=15)  # create (RBAC warms up)
            tasks[first.identity].cancel()  # get + update: handed back
            await asyncio.gather(tasks[first.identity], return_exceptions=True)
            heir = other([a, b], first)
            await until(lambda: heir.is_leader, within=SECONDS * 2)  # get + update
            await asyncio.sleep(SECONDS)
            assert heir.is_leader  # renewing: update
    finally:
        await as_backend.close()
