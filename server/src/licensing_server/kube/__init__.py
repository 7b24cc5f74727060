"""Access to the Kubernetes API for the backend's Kubernetes parts (runtime, issuer, reviews).

The ``kubernetes`` client is synchronous: every call runs on ``KubeApi``'s own thread
pool, never on the event loop, with transient failures retried and the rest turned
into domain errors with stable reasons (``UNAVAILABLE``, ``RESOURCE_EXHAUSTED`` for a
quota, ``FAILED_PRECONDITION`` for what an operator must fix), never ``INTERNAL``.
"""

from licensing_server.kube._client import (
    KubeApi,
    KubeConfig,
    error_reason,
    is_conflict,
    is_not_found,
    kube_api_for,
    shared_apis,
    status_of,
)
from licensing_server.kube._metrics import KubernetesApiCollector
from licensing_server.kube._reviews import PodIdentity, PodTokenReviewer
from licensing_server.kube._watch import ObjectWatch, WatchEvent

__all__ = [
    "KubeApi",
    "KubeConfig",
    "KubernetesApiCollector",
    "ObjectWatch",
    "PodIdentity",
    "PodTokenReviewer",
    "WatchEvent",
    "error_reason",
    "is_conflict",
    "is_not_found",
    "kube_api_for",
    "shared_apis",
    "status_of",
]
