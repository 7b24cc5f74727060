"""Who may call the enclave: the server's ``AccessGuard`` with an owner-only policy.

Operations (health, reflection) need any client certificate from the CA; every
WorkloadService call needs the owner's certificate plus an access token bound to it.
"""

from __future__ import annotations

from licensing_common.errors import PermissionDenied
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

    The enclave has no database, so it cannot see that a session was revoked
    (logout, refresh-token reuse): a revoked session's access token keeps working
    here until its ``exp``. That is bounded because access tokens are short-lived;
    keep them so. Signature, ``iss``, ``aud``, ``exp`` and the ``cnf.x5t#S256``
    binding to the presented certificate are checked by ``AccessTokenVerifier``.
    """

    def __init__(self, verifier: AccessTokenVerifier, owner: str):
        self._verifier = verifier
        self._owner = owner

    async def __call__(self, token: str, certificate_sha256: bytes) -> AccessClaims:
        claims = self._verifier.verify(token, certificate_sha256)
        if claims.user_id != self._owner:
            raise PermissionDenied("NOT_ENCLAVE_OWNER", "only the owner of this enclave may use it")
        return claims
