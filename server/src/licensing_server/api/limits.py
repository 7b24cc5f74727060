"""How often a caller may call what: one table, keyed by full method name.

Public methods are counted per client address (there is no account yet),
the others per user. Every method the frontend serves has an entry; a test
walks the service descriptors to prove it. ``LICENSING_RATE_LIMIT_PERCENT``
scales the whole table (0 turns it off).
"""

from __future__ import annotations

from licensing_common.rpc.limits import CountedBy, RateLimit
from licensing_common.throttle import Rate

__all__ = ["FRONTEND_RATE_LIMITS", "CountedBy", "RateLimit"]


def _per_address(per_second: float, burst: int) -> RateLimit:
    return RateLimit(Rate(per_second, burst), CountedBy.CLIENT_ADDRESS)


def _per_user(per_second: float, burst: int) -> RateLimit:
    return RateLimit(Rate(per_second, burst), CountedBy.USER)


_OPS = _per_address(50, 200)

FRONTEND_RATE_LIMITS: dict[str, RateLimit] = {
    "/grpc.health.v1.Health/Check": _OPS,
    "/grpc.health.v1.Health/Watch": _OPS,
    "/grpc.health.v1.Health/List": _OPS,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": _OPS,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": _OPS,
    # Accounts are cheap to ask for and costly to hold: a few a second per address.
    "/licensing.v1.AuthService/SignUp": _per_address(2, 20),
    # Each costs a bcrypt check; failed logins are also limited per username (auth).
    "/licensing.v1.AuthService/Login": _per_address(5, 30),
    "/licensing.v1.AuthService/RefreshToken": _per_address(5, 30),
    "/licensing.v1.TrustService/GetTrustBundle": _per_address(20, 100),
    "/licensing.v1.AuthService/Logout": _per_user(5, 20),
    "/licensing.v1.AuthService/GetCurrentUser": _per_user(50, 200),
    # Each starts a process and a TPM extend; the licence caps how many are held.
    "/licensing.v1.EnclaveService/CreateEnclave": _per_user(2, 10),
    "/licensing.v1.EnclaveService/WatchEnclave": _per_user(10, 50),
    "/licensing.v1.EnclaveService/GetEnclave": _per_user(50, 200),
    "/licensing.v1.EnclaveService/ListEnclaves": _per_user(20, 100),
    "/licensing.v1.EnclaveService/DeleteEnclave": _per_user(10, 50),
    # The TPM is shared by everyone; batching makes a quote cheap, not free.
    "/licensing.v1.AttestationService/GetAttestation": _per_user(20, 100),
    # Queues a nonce for the next round's one quote (at most 8 wait per enclave).
    "/licensing.v1.EnclaveService/RequestAttestation": _per_user(10, 50),
}
