"""``PodTokenReviewer``: which pod an enrolment token belongs to, as the apiserver says.

An enclave pod enrols with its projected ServiceAccount token (audience
``token_audience``). A TokenReview asks the apiserver, which checks signature,
expiry, audience and that the bound pod still exists; we additionally insist that
the review names our audience, a ServiceAccount, and the pod (name and UID), so a
token of a user, a plain ServiceAccount token or one for another service is refused.

The backend needs ``create`` on ``tokenreviews.authentication.k8s.io`` (a ClusterRole:
TokenReview is cluster-scoped). The token itself is never logged.
"""

from __future__ import annotations

import logging
from typing import Any

from licensing_common.errors import Unauthenticated
from licensing_server.kube._client import KubeApi
from licensing_server.runtimes._enrollment import PodIdentity

__all__ = ["PodIdentity", "PodTokenReviewer"]

_log = logging.getLogger(__name__)

_SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
_POD_NAME = "authentication.kubernetes.io/pod-name"
_POD_UID = "authentication.kubernetes.io/pod-uid"
#: A projected token is a JWT of a few hundred bytes to a few KiB; refuse anything absurd
#: before spending an API call on it.
MAX_TOKEN_BYTES = 16 * 1024


def _refused(why: str) -> Unauthenticated:
    _log.info("enrolment token refused: %s", why)  # why only, never the token
    return Unauthenticated("ENROLLMENT_TOKEN_INVALID", "the enrolment token is not valid")


class PodTokenReviewer:
    """Turns a pod's projected token into a ``PodIdentity``, or ``ENROLLMENT_TOKEN_INVALID``.

    API failures surface as ``KubeApi`` maps them (``Unavailable``, ``FailedPrecondition``
    for missing RBAC), so a broken cluster is never mistaken for a bad token.
    """

    def __init__(self, api: KubeApi, audience: str):
        if not audience:
            raise ValueError("audience: a TokenReview without one accepts apiserver tokens")
        self._api = api
        self._audience = audience

    @property
    def audience(self) -> str:
        return self._audience

    async def review(self, token: str) -> PodIdentity:
        if not token or len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
            raise _refused("not a JWT")
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self._audience]},
        }
        answer: Any = await self._api.call(
            "create tokenreviews",
            self._api.authentication().create_token_review,
            body,
        )
        status = answer.status
        if status is None or not status.authenticated:
            raise _refused(f"not authenticated ({getattr(status, 'error', None) or 'no error'})")
        if self._audience not in (status.audiences or []):
            raise _refused(f"audiences {status.audiences} lack {self._audience!r}")
        user = status.user
        username = str(getattr(user, "username", "") or "")
        if not username.startswith(_SERVICE_ACCOUNT_PREFIX):
            raise _refused(f"{username!r} is not a ServiceAccount")
        namespace, _, service_account = username[len(_SERVICE_ACCOUNT_PREFIX) :].partition(":")
        extra: dict[str, list[str]] = dict(getattr(user, "extra", None) or {})
        pod_names = extra.get(_POD_NAME) or []
        pod_uids = extra.get(_POD_UID) or []
        if not namespace or not service_account or len(pod_names) != 1 or len(pod_uids) != 1:
            raise _refused(f"{username!r}: the token is not bound to one pod")
        return PodIdentity(namespace, service_account, pod_names[0], pod_uids[0])
