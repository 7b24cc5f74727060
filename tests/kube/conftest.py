"""Fixtures of the control plane's own tests (the control plane itself is in tests/conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.kube.cluster import KubeControlPlane


@pytest.fixture
def kube_namespace(kube_control_plane: KubeControlPlane) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount) per test, deleted afterwards."""
    name = kube_control_plane.create_namespace(f"t-{uuid.uuid4().hex[:10]}")
    yield name
    kube_control_plane.delete_namespace(name)
