"""The Kubernetes runtime's tests share one licensing stack on the session's control plane."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kube.cluster import KubeControlPlane
from tests.kube.licensing_stack import KubeStack, kube_stack


@pytest.fixture(scope="session")
def kube_licensing(
    kube_control_plane: KubeControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KubeStack]:
    with kube_stack(kube_control_plane, tmp_path_factory.mktemp("kube-stack")) as stack:
        yield stack
