"""The test Kubernetes control plane, started once per session (it fails, never skips)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.kube.cluster import KubeControlPlane


@pytest.fixture(scope="session")
def kube_control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeControlPlane]:
    """etcd, apiserver, controller manager, scheduler, kwok and cert-manager on loopback.

    A start failure raises ``KubeStartError`` with the logs: a machine that cannot run the
    control plane fails the Kubernetes tests rather than hiding them.
    """
    plane = KubeControlPlane(tmp_path_factory.mktemp("kube"))
    try:
        plane.start()
        yield plane
    finally:
        plane.stop(wipe=True)


@pytest.fixture
def kube_namespace(kube_control_plane: KubeControlPlane) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount) per test, deleted afterwards."""
    name = kube_control_plane.create_namespace(f"t-{uuid.uuid4().hex[:10]}")
    yield name
    kube_control_plane.delete_namespace(name)
