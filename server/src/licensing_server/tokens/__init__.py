"""Access tokens (ES256 JWTs bound to a client certificate) and opaque refresh tokens.

Verification lives in ``licensing_common.tokens`` (enclaves verify too); signing is here.
"""

from licensing_common.tokens import AccessClaims, AccessTokenVerifier, jwks_public_keys, x5t_s256
from licensing_server.tokens._keyfiles import (
    KEY_SET_FILE,
    SINGLE_KEY_FILE,
    KeySetFiles,
    KeySetMissing,
)
from licensing_server.tokens._keyring import TokenKeyRing
from licensing_server.tokens._keyset import (
    PROPAGATION_ALLOWANCE,
    KeyInRole,
    RotationRefused,
    TokenKeySet,
)
from licensing_server.tokens._refresh import (
    MAX_REFRESH_TOKEN_LENGTH,
    hash_refresh_token,
    new_refresh_token,
)
from licensing_server.tokens._signing import AccessTokenSigner, SigningKey

__all__ = [
    "KEY_SET_FILE",
    "MAX_REFRESH_TOKEN_LENGTH",
    "PROPAGATION_ALLOWANCE",
    "SINGLE_KEY_FILE",
    "AccessClaims",
    "AccessTokenSigner",
    "AccessTokenVerifier",
    "KeyInRole",
    "KeySetFiles",
    "KeySetMissing",
    "RotationRefused",
    "SigningKey",
    "TokenKeyRing",
    "TokenKeySet",
    "hash_refresh_token",
    "jwks_public_keys",
    "new_refresh_token",
    "x5t_s256",
]
