"""Who may call the enclave: the server's ``AccessGuard`` with an owner-only policy.

Operations (health, reflection) need any client certificate from the CA; every
WorkloadService call needs the owner's certificate plus an access token bound to it.
"""

from __future__ import annotations

from licensing_common.errors import PermissionDenied, Unauthenticated
from licensing_common.rpc.policy import Access
from licensing_common.tokens import AccessClaims, AccessTokenVerifier

WORKLOAD_SERVICE = "enclave.v1.WorkloadService"

_OPS = (
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.health.v1.Health/List",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
)
_WORKLOAD = (
    "GetIdentity",
    "PutSecret",
    "GetSecret",
    "ListSecrets",
    "DeleteSecret",
    "Sign",
)

#: Deny by default: a method missing here is refused with METHOD_NOT_ALLOWED.
ENCLAVE_POLICY: dict[str, Access] = {
    **dict.fromkeys(_OPS, Access.PEER),
    **{f"/{WORKLOAD_SERVICE}/{name}": Access.USER for name in _WORKLOAD},
}


class OwnerAuthenticator:
    """Verifies a bearer token offline against the JWKS, then insists on the owner.

    The enclave has no database, so it cannot see by itself that a session was
    revoked (logout): the backend pushes revocations to it (``revoke``: over stdin from
    the local runtime, over the WatchRevocations stream a pod keeps open), and a revoked
    session's token is refused from then on. While that channel is down the token works
    until its ``exp``, bounded because access tokens are short-lived. Signature, ``iss``,
    ``aud``, ``exp`` and the ``cnf.x5t#S256`` binding to the presented certificate are
    checked by ``AccessTokenVerifier``.
    """

    #: Revoked sessions remembered (the oldest are forgotten first: their tokens expired).
    REVOKED_KEPT = 10_000

    def __init__(self, verifier: AccessTokenVerifier, owner: str):
        self._verifier = verifier
        self._owner = owner
        self._revoked: dict[str, None] = {}

    def revoke(self, session_ids: list[str]) -> None:
        """Refuse these sessions' tokens from now on (told by the backend)."""
        for session_id in session_ids:
            self._revoked[session_id] = None
            self._verifier.forget(session_id)
        while len(self._revoked) > self.REVOKED_KEPT:
            del self._revoked[next(iter(self._revoked))]

    async def __call__(self, token: str, certificate_sha256: bytes) -> AccessClaims:
        claims = self._verifier.verify(token, certificate_sha256)
        if claims.session_id in self._revoked:
            raise Unauthenticated("SESSION_REVOKED", "this session was revoked; log in again")
        if claims.user_id != self._owner:
            raise PermissionDenied("NOT_ENCLAVE_OWNER", "only the owner of this enclave may use it")
        return claims
