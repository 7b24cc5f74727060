"""Provisional: main swaps in the project's own ``kube_control_plane`` fixture."""

from tests.kube.provisional_control_plane import kube_control_plane

__all__ = ["kube_control_plane"]
