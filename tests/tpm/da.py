"""Dictionary-attack helpers for tests: real DA-protected keys and real failed authorizations."""

from __future__ import annotations

from contextlib import closing

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_CAP, TPM2_PT, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_AUTH,
    TPM2B_DIGEST,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPMS_SENSITIVE_CREATE,
    TPMT_SIG_SCHEME,
)

_LOCKOUT = 0x921
_PASSWORD = b"da-protected"
#: The AK's attributes before it was noDA.
OLD_AK_ATTRIBUTES = (
    TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
    | TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
)


def old_attestation_key(tcti: str, handle: int) -> bytes:
    """Persist an AK at ``handle`` the way the server did before AKs were noDA; its public."""
    with closing(ESAPI(tcti)) as esapi:
        template = TPM2B_PUBLIC.parse(
            "ecc256:ecdsa-sha256:null", objectAttributes=OLD_AK_ATTRIBUTES
        )
        transient, public, _, _, _ = esapi.create_primary(
            TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT
        )
        try:
            esapi.evict_control(ESYS_TR.OWNER, transient, handle)
        finally:
            esapi.flush_context(transient)
        return bytes(public.marshal())


def _da_key(esapi: ESAPI) -> ESYS_TR:
    """A transient signing key with a password and without noDA: DA-protected."""
    attributes = (
        TPMA_OBJECT.SIGN_ENCRYPT
        | TPMA_OBJECT.FIXEDTPM
        | TPMA_OBJECT.FIXEDPARENT
        | TPMA_OBJECT.SENSITIVEDATAORIGIN
        | TPMA_OBJECT.USERWITHAUTH
    )
    sensitive = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(userAuth=TPM2B_AUTH(_PASSWORD)))
    handle, _, _, _, _ = esapi.create_primary(
        sensitive,
        TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=attributes),
        ESYS_TR.OWNER,
    )
    return handle


def _sign(esapi: ESAPI, key: ESYS_TR) -> None:
    esapi.sign(key, TPM2B_DIGEST(bytes(32)), TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))


def use_da_protected_key(tcti: str) -> None:
    """One successful DA-protected authorization: a disorderly stop after it counts."""
    with closing(ESAPI(tcti)) as esapi:
        key = _da_key(esapi)
        try:
            esapi.tr_set_auth(key, _PASSWORD)
            _sign(esapi, key)
        finally:
            esapi.flush_context(key)


def provoke_lockout(tcti: str) -> int:
    """Fail authorizations with a wrong password until the TPM answers TPM_RC_LOCKOUT."""
    with closing(ESAPI(tcti)) as esapi:
        key = _da_key(esapi)
        try:
            esapi.tr_set_auth(key, b"wrong")
            for attempt in range(1, 100):
                try:
                    _sign(esapi, key)
                except TSS2_Exception as exc:
                    if int(exc.rc) & 0xFFFF == _LOCKOUT:
                        return attempt
            raise AssertionError("the TPM never locked out")
        finally:
            esapi.flush_context(key)


def lockout_counter(tcti: str) -> int:
    """TPM2_PT_LOCKOUT_COUNTER, read directly."""
    with closing(ESAPI(tcti)) as esapi:
        _, capability = esapi.get_capability(TPM2_CAP.TPM_PROPERTIES, TPM2_PT.LOCKOUT_COUNTER, 1)
        prop = capability.data.tpmProperties[0]
        assert int(prop.property) == int(TPM2_PT.LOCKOUT_COUNTER)
        return int(prop.value)


def clear_lockout(tcti: str) -> None:
    with closing(ESAPI(tcti)) as esapi:
        esapi.dictionary_attack_lock_reset(ESYS_TR.LOCKOUT)
