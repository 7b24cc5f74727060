"""Session fixtures: real servers started once per database backend."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kube.cluster import KubeControlPlane
from tests.support import Stack, grpcurl_path, start_stack


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The licensing server (backend + frontend) on SQLite, then on PostgreSQL."""
    tmp: Path = tmp_path_factory.mktemp(f"stack-{request.param}")
    yield from start_stack(request.param, tmp, os.environ.get("LICENSING_TEST_POSTGRES_URL"))


@pytest.fixture(scope="session")
def grpcurl() -> str:
    return grpcurl_path()


@pytest.fixture(scope="session")
def kube_control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeControlPlane]:
    """The test Kubernetes control plane, started once per session when a test needs it:
    etcd, apiserver, controller manager, scheduler, kwok and cert-manager on loopback.

    A start failure raises ``KubeStartError`` with the logs: a machine that cannot run the
    control plane fails the Kubernetes tests rather than hiding them.
    """
    plane = KubeControlPlane(tmp_path_factory.mktemp("kube"))
    try:
        plane.start()
        yield plane
    finally:
        plane.stop(wipe=True)
